"""A worker that (re)starts while `current` is broken, rollback clearing the error, and serve's start-up check.

Real `remi serve` processes on a real index root, as in production: a restarted worker must
serve what its siblings serve, not answer 503 beside them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from index.publish import reindex
from remi.contract import INDEX_FILE, VERSIONS, read_current, version_dir, write_current
from tests.service.conftest import start_server, wait_for


def break_copy_of(root: Path, good: str, name: str) -> str:
    """A complete-looking version whose index file is truncated (refused on load)."""
    shutil.copytree(version_dir(root, good), version_dir(root, name))
    index_file = version_dir(root, name) / INDEX_FILE
    index_file.chmod(0o644)
    index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    return name


def test_a_worker_restarted_on_a_broken_current_serves_the_last_good_version(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    good = reindex(artifacts_dir, root, kind="flat").index_version
    sibling = start_server(root, None)
    restarted = None
    try:
        broken = break_copy_of(root, good, "99990101T000000000000Z-broken-flat")
        write_current(root, broken)
        wait_for(lambda: httpx.get(sibling.url + "/readyz").json()["last_reload_error"])

        restarted = start_server(root, None)  # e.g. the OOM killer took a worker and it came back
        ready = httpx.get(restarted.url + "/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "ready" and body["index"] == good
        assert broken in body["last_reload_error"] and "truncated" in body["last_reload_error"]
        for server in (sibling, restarted):
            answer = httpx.post(server.url + "/recommend", json={"user_id": "ann"})
            assert answer.status_code == 200 and answer.json()["index_version"] == good

        # B.11: rolling `current` back to the version being served resolves the error everywhere.
        back = subprocess.run([sys.executable, "-m", "cli", "index", "rollback", "--root", str(root)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert back.returncode == 0, back.stderr
        assert read_current(root) == good
        for server in (sibling, restarted):
            wait_for(lambda s=server: httpx.get(s.url + "/readyz").json()["last_reload_error"] is None)
            assert httpx.get(server.url + "/readyz").json()["index"] == good
    finally:
        sibling.stop()
        if restarted:
            restarted.stop()


def test_the_fallback_prefers_the_version_current_held_before_its_last_flip(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    """Siblings serve the version `current` named before it moved to the broken one, even an older one."""
    import asyncio

    from service.config import ServiceSettings
    from service.versions import Versions

    root = tmp_path / "root"
    older = reindex(artifacts_dir, root, kind="flat").index_version
    newer = reindex(artifacts_dir, root, kind="flat", force=True).index_version
    write_current(root, older)  # an operator's rollback: siblings serve `older`
    broken = break_copy_of(root, older, "99990101T000000000000Z-broken-flat")
    write_current(root, broken)

    versions = Versions(ServiceSettings(index_root=root, poll_seconds=0))
    result = asyncio.run(versions.refresh())
    assert versions.serving == older != newer
    assert result["version"] == older and broken in result["error"]


def test_a_broken_current_with_no_good_version_left_is_503_not_a_crash(artifacts_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    only = reindex(artifacts_dir, root, kind="flat").index_version
    index_file = version_dir(root, only) / INDEX_FILE
    index_file.chmod(0o644)
    index_file.write_bytes(b"garbage")
    server = start_server(root, None)
    try:
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503 and only in ready.json()["last_reload_error"]
        assert httpx.post(server.url + "/recommend", json={"user_id": "erin"}).status_code == 503
        assert server.proc.poll() is None
    finally:
        server.stop()


def serve_exit(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli", "serve", "--port", "0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_serve_with_a_wrong_index_root_and_no_artifacts_exits_2_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / VERSIONS).mkdir(parents=True)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for root, says in ((tmp_path / "missing", "no such folder"), (empty, "no index version"), (a_file, "not a folder")):
        proc = serve_exit("--index-root", str(root))
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
        assert str(root) in lines[0]
    proc = serve_exit("--index-root", str(tmp_path / "missing"), "--artifacts", str(tmp_path / "no-artifacts"))
    assert proc.returncode == 2 and "no-artifacts" in proc.stderr, proc.stderr
