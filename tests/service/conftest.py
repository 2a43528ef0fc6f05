"""Real servers for the end-to-end tests: `remi serve` subprocesses on free ports (loadtest.server), real Redis."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from index.publish import reindex
from loadtest.server import ServerProcess, free_port, is_up, remi_serve_argv
from service import fast_recommend
from tests.service.attr_model import ATTR_ITEMS, AttrModel, write_attr_artifacts
from tests.service.tiny_model import TinyModel, publish_tiny_version, write_tiny_artifacts

Server = ServerProcess  # the name the end-to-end tests annotate with

SHARED_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A tiny artifact folder written without torch (tests/service/tiny_model.py)."""
    return write_tiny_artifacts(tmp_path_factory.mktemp("tiny") / "artifacts")


@pytest.fixture(scope="session")
def tiny_root(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index root whose `current` is one published version of the tiny model (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("tiny-root") / "root"
    publish_tiny_version(tiny_model.artifacts, root)
    return root


@pytest.fixture(scope="session")
def attr_model(tmp_path_factory: pytest.TempPathFactory) -> AttrModel:
    """The model with item attributes of the filter tests (tests/service/attr_model.py)."""
    return write_attr_artifacts(tmp_path_factory.mktemp("attr") / "artifacts", n_items=ATTR_ITEMS)


@pytest.fixture(scope="session")
def attr_root(attr_model: AttrModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published HNSW version (small graph: M = 8, ef = 16) of the model with attributes."""
    root = tmp_path_factory.mktemp("attr-root") / "root"
    reindex(attr_model.artifacts, root, kind="hnsw", params={"m": 8, "ef_construction": 40, "ef_search": 16},
            min_recall=0.0)  # fmt: skip
    return root


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Polls ``predicate`` until it returns something truthy (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def start_server(root: Path, artifacts: Path | None, **env: str) -> ServerProcess:
    """Starts `remi serve` and waits until /readyz answers (200 or 503: the process is up)."""
    port = free_port()
    args = ["--index-root", str(root)] + (["--artifacts", str(artifacts)] if artifacts else [])
    full_env = {**os.environ, "REMI_POLL_SECONDS": "0.2", **env}
    server = ServerProcess(remi_serve_argv(port, args), port, root.parent / f"server-{port}.log", full_env)
    return server.start().wait_ready(timeout=90, ready=is_up)


def delete_prefix(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key namespace of one test on the shared Redis, removed afterwards (never a FLUSH)."""
    prefix = f"remi-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    delete_prefix(SHARED_REDIS, prefix)


@pytest.fixture(scope="module")
def api(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One Redis-backed server shared by the read-mostly tests of a module (own key namespace)."""
    prefix = f"remi-test:{uuid.uuid4().hex[:12]}:"
    root = tmp_path_factory.mktemp("api") / "root"
    server = start_server(
        root, artifacts_dir, REMI_REDIS_URL=SHARED_REDIS, REMI_REDIS_PREFIX=prefix, REMI_ADMIN_TOKEN="s3cret"
    )
    yield server
    server.stop()
    delete_prefix(SHARED_REDIS, prefix)


class OwnRedis:
    """A private redis-server on a free port, for outage tests (the shared one is never stopped)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the outage tests"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.2).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the recommendations computed on the fast path."""
    calls: list[int] = []
    original = fast_recommend.recommend_many

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fast_recommend, "recommend_many", counting)
    return calls
