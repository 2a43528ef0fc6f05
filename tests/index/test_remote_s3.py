"""Publish and sync against a real S3 API: moto's server, a subprocess on a free port.

Kills at every step of a sync and at random moments leave no partial version and `current` as
it was; two `remi serve` replicas, each with its own root and `remi index sync` loop, move to a
new version and back (a rollback) under load without one non-2xx answer; a stale conditional
move of the remote `current` is refused.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from index.publish import reindex
from index.remote import PointerMoved, Remote
from index.sync import publish, rollback_remote, seed_from_remote, sync_once
from loadtest.server import ServerProcess, free_port, is_up, remi_serve_argv
from remi.contract import CURRENT, VERSIONS, ArtifactError, list_versions, read_current, version_dir
from retrieval.store import load_version
from tests.service.tiny_model import write_tiny_artifacts

pytestmark = pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import moto.server, obstore"], capture_output=True).returncode != 0,
    reason="moto[server] and obstore are dev dependencies (pip install -e '.[dev]')",
)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free port, for this module (every test makes its own bucket)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.1)
    yield endpoint
    proc.kill()
    proc.wait(10)
    log.close()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS_* variables pointing at moto (this process and the subprocesses it starts)."""
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def url(s3_endpoint: str, s3_env: dict[str, str]) -> str:
    bucket = f"remi-{uuid.uuid4().hex[:12]}"
    assert httpx.put(f"{s3_endpoint}/{bucket}", timeout=10).status_code == 200  # CreateBucket
    return f"s3://{bucket}/index"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {name: write_tiny_artifacts(base / name, seed=seed).artifacts for name, seed in (("v1", 0), ("v2", 1))}


def published(artifacts: Path, url: str, root: Path) -> str:
    seed_from_remote(url, root)
    version = reindex(artifacts, root, kind="flat").index_version
    publish(url, root, version)
    return version


def complete_versions_load(root: Path) -> list[str]:
    """Every version a worker could pick (list_versions) loads completely: none is partial."""
    names = list_versions(root)
    for name in names:
        load_version(version_dir(root, name))
    return names


# One sync in a subprocess, killed with SIGKILL (no cleanup runs) at a chosen step: before the
# N-th file download, inside a file (part of it written), before the seal, before the flip.
KILLED_SYNC = textwrap.dedent(
    """
    import os, signal, sys
    from index import remote, sync
    point, after, url, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    calls = [0]

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def before(real):
        def wrapped(*args, **kwargs):
            if calls[0] >= after:
                kill()
            calls[0] += 1
            return real(*args, **kwargs)
        return wrapped

    if point == "download":
        remote.Remote.download = before(remote.Remote.download)
    elif point == "inside-file":
        real = remote.Remote.download
        def partial(self, key, dest, entry):
            if calls[0] >= after:
                dest.write_bytes(b"partial")
                kill()
            calls[0] += 1
            return real(self, key, dest, entry)
        remote.Remote.download = partial
    elif point == "seal":
        sync.seal = before(sync.seal)
    elif point == "flip":
        sync.write_current = before(sync.write_current)
    elif point == "slow":  # the parent kills it at a random moment
        import time
        real = remote.Remote.download
        def slow(self, key, dest, entry):
            time.sleep(0.05)
            return real(self, key, dest, entry)
        remote.Remote.download = slow
        print("syncing", flush=True)
    sync.sync_once(url, root)
    """
)


def test_a_sync_killed_at_any_point_leaves_no_partial_version_and_current_unchanged(
    models: dict[str, Path], url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    job, replica = tmp_path / "job", tmp_path / "replica"
    first = published(models["v1"], url, job)
    sync_once(url, replica)
    second = published(models["v2"], url, job)
    env = {**os.environ, **s3_env}
    points = [("download", 0), ("download", 3), ("download", 5), ("inside-file", 2)]
    points += [("slow", 0)] * 4 + [("seal", 0), ("flip", 0)]  # the last one leaves the new version complete
    rng = random.Random(25)
    outcomes: list[int] = []
    for point, after in points:
        argv = [sys.executable, "-c", KILLED_SYNC, point, str(after), url, str(replica)]
        if point == "slow":
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE)
            assert proc.stdout is not None and proc.stdout.readline() == b"syncing\n"
            time.sleep(rng.uniform(0.0, 0.35))  # within ~0.35 s of throttled downloads, the flip or just after
            proc.kill()
            returncode = proc.wait(30)
        else:
            returncode = subprocess.run(argv, env=env, timeout=120).returncode
        outcomes.append(returncode)
        assert returncode in (-9, 0), (point, after, returncode)  # 0: a random kill that came too late
        if returncode == -9:
            assert read_current(replica) == first, (point, after)
        assert set(complete_versions_load(replica)) <= {first, second}, (point, after)
        if returncode == 0:  # the kill came after the sync: start the next point from the first version
            rollback_remote(url, to=first)
            sync_once(url, replica)
            shutil.rmtree(version_dir(replica, second))
            rollback_remote(url, to=second)
    assert outcomes.count(-9) >= len(points) - 2, outcomes  # most random kills land inside the sync
    result = sync_once(url, replica)  # the next run removes what the killed ones left, and completes
    assert result.current == second == read_current(replica)
    assert [p.name for p in (replica / VERSIONS).iterdir() if p.name.startswith(".")] == []
    assert complete_versions_load(replica) == [first, second]


def test_a_stale_move_of_the_remote_current_is_refused(models: dict[str, Path], url: str, tmp_path: Path) -> None:
    first = published(models["v1"], url, tmp_path / "job")
    second = published(models["v2"], url, tmp_path / "job")
    remote = Remote(url)
    seen = remote.pointer(CURRENT)
    assert seen.version == second and seen.e_tag
    rollback_remote(url, to=first)  # another writer moves it after our read
    with pytest.raises(PointerMoved, match="moved by another writer"):
        remote.write_pointer(CURRENT, second, seen)
    assert remote.pointer(CURRENT).version == first


def test_a_tampered_s3_object_is_refused_and_nothing_flips(models: dict[str, Path], url: str, tmp_path: Path) -> None:
    job, replica = tmp_path / "job", tmp_path / "replica"
    first = published(models["v1"], url, job)
    sync_once(url, replica)
    second = published(models["v2"], url, job)
    remote = Remote(url)  # an object rewritten through the S3 API, same size
    key = f"{VERSIONS}/{second}/index.faiss"
    original = bytes(remote.ob.get(remote.store, key).bytes())
    remote.ob.put(remote.store, key, original[:-1] + bytes([original[-1] ^ 0xFF]))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        sync_once(url, replica)
    assert read_current(replica) == first and complete_versions_load(replica) == [first]


# ---------------------------------------------------------------------------- two replicas under load


class Load:
    """Threads posting /recommend to every replica until stopped; counts the answers by status."""

    def __init__(self, urls: list[str], threads: int = 4) -> None:
        self.urls, self.codes, self.stopping = urls, Counter[int | str](), threading.Event()
        self.versions: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, i: int) -> None:
        body = {"user_id": f"u{i}", "history": ["item-001", "item-007", "item-013"], "k": 10}
        with httpx.Client(timeout=10) as client:
            n = 0
            while not self.stopping.is_set():
                url = self.urls[n % len(self.urls)]
                n += 1
                try:
                    answer = client.post(f"{url}/recommend", json=body)
                    code: int | str = answer.status_code
                    version = answer.json().get("index_version") if code == 200 else None
                except httpx.HTTPError as exc:
                    code, version = type(exc).__name__, None
                with self.lock:
                    self.codes[code] += 1
                    if version:
                        self.versions[version] += 1

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def serving(url: str) -> str | None:
    try:
        return httpx.get(f"{url}/version", timeout=2).json().get("index_version")
    except httpx.HTTPError:
        return None


def converge(urls: list[str], version: str, timeout: float = 60.0) -> float:
    """Seconds until every replica's /version names ``version``."""
    t0 = time.monotonic()
    while any(serving(url) != version for url in urls):
        assert time.monotonic() - t0 < timeout, f"replicas serve {[serving(u) for u in urls]}, not {version}"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_two_replicas_follow_a_publish_and_a_rollback_under_load_with_no_error(
    models: dict[str, Path], url: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**os.environ, **s3_env, "REMI_WAIT_FOR_INDEX": "true", "REMI_POLL_SECONDS": "0.2"}
    servers: list[ServerProcess] = []
    syncs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            root = tmp_path / f"replica-{i}" / "index"  # missing: the service makes it, the sync fills it
            port = free_port()
            server = ServerProcess(
                remi_serve_argv(port, ["--index-root", str(root)]), port, tmp_path / f"serve-{i}.log", env
            )
            servers.append(server.start().wait_ready(timeout=90, ready=is_up))
            assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 503  # nothing synced yet
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            sync_log = (tmp_path / f"sync-{i}.log").open("wb")
            cmd = [sys.executable, "-m", "cli", "index", "sync", "--from", url, "--root", str(root), "--every", "0.2"]
            syncs.append(subprocess.Popen(cmd, env=env, stdout=sync_log, stderr=subprocess.STDOUT))
        urls = [server.url for server in servers]
        first = published(models["v1"], url, tmp_path / "job")
        first_s = converge(urls, first, timeout=90)
        with Load(urls) as load:
            time.sleep(1.0)
            second = published(models["v2"], url, tmp_path / "job")
            publish_s = converge(urls, second)
            time.sleep(1.0)
            rollback_remote(url)
            rollback_s = converge(urls, first)
            time.sleep(1.0)
        print(f"first version {first_s:.2f} s, publish {publish_s:.2f} s, rollback {rollback_s:.2f} s, {load.codes}")
        assert set(load.codes) == {200}, load.codes
        assert sum(load.codes.values()) > 100 and set(load.versions) == {first, second}
        assert publish_s < 15 and rollback_s < 15
        for server in servers:
            assert server.proc.poll() is None
    finally:
        for proc in syncs:
            proc.kill()
            proc.wait(10)
        for server in servers:
            server.stop()
