"""The history store against a real Redis Sentinel and a real 3-node Redis Cluster (own ports)."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.history import Event, RedisHistory

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="needs redis-server")


def low_free_port() -> int:
    """A free port whose cluster bus port (+10000) is valid too."""
    while True:
        port = random.randint(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


def redis_server(port: int, folder: Path, *extra: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen([*args, "--dir", str(folder), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait(predicate, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise AssertionError("redis topology did not come up")


async def round_trip(url: str) -> None:
    store = RedisHistory(url, prefix="topology-test:")
    try:
        for user in ("u1", "u2", "u3", "some user:*"):
            assert (await store.append(user, [Event("a", 1), Event("b:c", 2)])).history_len == 2
        many = await store.get_many(["u1", "u2", "u3", "some user:*", "nobody"], 10)
        assert many[:4] == [[Event("a", 1), Event("b:c", 2)]] * 4 and many[4] == []
        assert await store.get("u2", 1) == [Event("b:c", 2)]
        assert await store.ping()
    finally:
        await store.close()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[str]:
    master, port = low_free_port(), low_free_port()
    procs = [redis_server(master, tmp_path / "m")]
    wait(lambda: redis.Redis(port=master, socket_timeout=0.2).ping())
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor mym 127.0.0.1 {master} 1\n")
    procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL))
    wait(lambda: redis.Redis(port=port, socket_timeout=0.2).sentinel_get_master_addr_by_name("mym"))
    yield f"redis+sentinel://127.0.0.1:{port}/mym/0"
    for proc in procs:
        proc.kill()


def test_sentinel_url_finds_the_master(sentinel: str) -> None:
    asyncio.run(round_trip(sentinel))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    ports = [low_free_port() for _ in range(3)]
    procs = [
        redis_server(p, tmp_path / str(p), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        for p in ports
    ]
    for p in ports:
        wait(lambda p=p: redis.Redis(port=p, socket_timeout=0.2).ping())
    created = subprocess.run(
        ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
         "--cluster-yes"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout[-500:]
    info = ["redis-cli", "-p", str(ports[0]), "cluster", "info"]
    wait(lambda: "cluster_state:ok" in subprocess.run(info, capture_output=True, text=True).stdout)
    yield f"redis+cluster://127.0.0.1:{ports[0]}"
    for proc in procs:
        proc.kill()


def test_cluster_url_spreads_users_over_the_nodes(cluster: str) -> None:
    asyncio.run(round_trip(cluster))


def test_sentinel_url_without_a_service_name_is_refused() -> None:
    with pytest.raises(ValueError, match="service name"):
        RedisHistory("redis+sentinel://127.0.0.1:26379")
