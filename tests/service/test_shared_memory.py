"""Two worker processes serving memory-mapped versions (REMI_MMAP=true): real processes, real HTTP, real Redis.

The workers map the version's files (index, item arrays, ONNX weights) instead of each copying
them; answers must be those of a server holding private copies, a reindex must still move both
workers, and a damaged new version must be refused by both without a crash.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from index.publish import reindex
from loadtest.server import ServerProcess
from remi.contract import INDEX_FILE, MANIFEST, MODEL_DATA, VERSION_ARTIFACTS, file_entries, version_dir, write_current
from tests.service.conftest import SHARED_REDIS, start_server, wait_for


def worker_pids(server: ServerProcess) -> list[int]:
    """The uvicorn workers of ``remi serve --workers N`` (children of the supervisor, not its helpers)."""
    out = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]


def maps_of(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def versions_served(server: ServerProcess) -> list[str]:
    """The index version each live worker reports in /metrics (one series per worker)."""
    return re.findall(r'remi_version_info\{[^}]*index="([^"]+)"[^}]*\} 1\.0', httpx.get(server.url + "/metrics").text)


def answers(server: ServerProcess, bodies: list[dict]) -> list[list[str]]:
    """Item ids answered to each body, each on a new connection (spread over the workers)."""
    out = []
    for body in bodies:
        with httpx.Client(timeout=10) as client:
            response = client.post(server.url + "/recommend", json=body)
            assert response.status_code == 200, response.text
            out.append([item["item_id"] for item in response.json()["items"]])
    return out


@pytest.fixture(scope="module")
def external_artifacts(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's run exported with its weights in user_tower.onnx.data (what large catalogues get)."""
    from training.export import export_run

    out = tmp_path_factory.mktemp("external") / "art"
    export_run(trained_run, out, external_data=True)
    return out


def test_two_mapped_workers_answer_like_private_copies_and_follow_reindexes(
    external_artifacts: Path, tmp_path: Path, redis_prefix: str
) -> None:
    root = tmp_path / "root"
    first = reindex(external_artifacts, root, kind="hnsw").index_version
    items = (external_artifacts / "item_ids.txt").read_text().split("\n")
    bodies = [
        {"user_id": f"u{i}", "history": items[i * 7 % 200 : i * 7 % 200 + 12], "k": 30, "use_stored_history": False}
        for i in range(24)
    ]
    env = {"REMI_REDIS_URL": SHARED_REDIS, "REMI_REDIS_PREFIX": redis_prefix}
    copied = start_server(root, None, REMI_MMAP="false", **env)
    try:
        expected = answers(copied, bodies)
    finally:
        copied.stop()
    # mapping is opt-in: docs/operations.md#memory-per-worker-one-copy-of-the-version-for-all-workers
    server = start_server(root, None, REMI_WORKERS="2", REMI_MMAP="true", **env)
    try:
        wait_for(lambda: versions_served(server) == [first, first])
        pids = worker_pids(server)
        assert len(pids) == 2
        for pid in pids:  # each worker maps the version's files: one copy in the page cache for both
            maps = maps_of(pid)
            assert str(version_dir(root, first) / INDEX_FILE) in maps
            assert str(version_dir(root, first) / VERSION_ARTIFACTS / MODEL_DATA) in maps
            assert str(version_dir(root, first) / VERSION_ARTIFACTS / "item_embeddings.npy") in maps
        assert answers(server, bodies) == expected  # same answers as private copies, from both workers

        second = reindex(external_artifacts, root, kind="hnsw", force=True).index_version
        assert second != first
        wait_for(lambda: versions_served(server) == [second, second])
        for pid in pids:
            assert str(version_dir(root, second) / INDEX_FILE) in maps_of(pid)
        assert answers(server, bodies) == expected  # same model, rebuilt index: same answers
        # Each worker has answered on the new version since: the old one is unmapped (nothing leaks a
        # reference to it; the micro-batcher lets go of its last batch at the next request).
        old_index = str(version_dir(root, first) / INDEX_FILE)
        wait_for(lambda: all(old_index not in maps_of(pid) for pid in pids))
        assert worker_pids(server) == pids  # swapped in place, no worker restarted
    finally:
        server.stop()


def test_a_new_version_whose_index_fails_to_map_is_refused_by_both_workers(
    external_artifacts: Path, tmp_path: Path, redis_prefix: str
) -> None:
    """Size and hash pass (the manifest was rewritten to match), so the mapping reader itself meets the damage."""
    root = tmp_path / "root"
    good = reindex(external_artifacts, root, kind="hnsw").index_version
    server = start_server(
        root, None, REMI_WORKERS="2", REMI_MMAP="true", REMI_REDIS_URL=SHARED_REDIS, REMI_REDIS_PREFIX=redis_prefix
    )
    try:
        wait_for(lambda: versions_served(server) == [good, good])
        pids = worker_pids(server)
        broken = "99990101T000000000000Z-broken"
        shutil.copytree(version_dir(root, good), version_dir(root, broken))
        index_file = version_dir(root, broken) / INDEX_FILE
        index_file.chmod(0o644)
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
        manifest_file = version_dir(root, broken) / MANIFEST
        manifest_file.chmod(0o644)
        manifest = json.loads(manifest_file.read_text())
        manifest["files"] = {k: v.model_dump() for k, v in file_entries(index_file.parent, [INDEX_FILE]).items()}
        manifest_file.write_text(json.dumps(manifest))
        write_current(root, broken)

        def refused_everywhere() -> bool:
            text = httpx.get(server.url + "/metrics").text
            refused = re.search(r'remi_reloads_total\{result="refused"\} (\S+)', text)
            return bool(refused) and float(refused.group(1)) >= 2

        wait_for(refused_everywhere)
        for _ in range(6):  # whichever worker answers: the old version, ready, the refusal named
            with httpx.Client(timeout=10) as client:
                ready = client.get(server.url + "/readyz").json()
            assert ready["status"] == "ready" and ready["index"] == good
            assert broken in ready["last_reload_error"] and "unreadable FAISS index" in ready["last_reload_error"]
        assert versions_served(server) == [good, good]
        assert worker_pids(server) == pids and server.proc.poll() is None  # nobody crashed or restarted
    finally:
        server.stop()
