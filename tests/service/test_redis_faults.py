"""Every way a real Redis refuses or stalls: reads fall back, writes answer 503 with the reason,
readiness says why, and a retried write is stored once.

Each test starts its own redis-server on a free port and puts it in the state (protected mode,
requirepass, ACL users, LOADING, a replica, maxmemory, SIGSTOP, DEBUG SLEEP); the shared
Redis on 6379 is never touched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.history import Event, HistoryUnavailable, RedisHistory
from tests.service.conftest import free_port, start_server

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")


class Own:
    """A private redis-server with extra arguments; killed (and resumed if paused) at the end."""

    def __init__(self, folder: Path, *args: str, bind: str = "127.0.0.1") -> None:
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        cmd = ["redis-server", "--port", str(self.port), "--bind", bind, "--save", "", "--appendonly", "no",
               "--dir", str(folder), "--enable-debug-command", "yes", *args]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except redis.AuthenticationError:
                return  # up, with a password
            except redis.BusyLoadingError:
                return  # up, loading its dataset
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def admin(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(port=self.port, password=password, socket_timeout=5)

    def url(self, host: str = "127.0.0.1", auth: str = "") -> str:
        return f"redis://{auth}{host}:{self.port}/0"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Own]]:
    started: list[Own] = []
    yield started
    for server in started:
        server.kill()


def outward_ip() -> str | None:
    """This machine's non-loopback address (protected mode only refuses those), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def store_for(url: str, **kw: object) -> RedisHistory:
    options: dict[str, object] = {"prefix": "t:", "timeout_s": 0.5, **kw}
    return RedisHistory(url, **options)  # type: ignore[arg-type]


async def failure(call: object) -> HistoryUnavailable:
    try:
        await call  # type: ignore[misc]
    except HistoryUnavailable as exc:
        return exc
    raise AssertionError("expected HistoryUnavailable")


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


# --- handshake refusals -----------------------------------------------------------------------------


def test_protected_mode_denied_handshake_falls_back_on_reads_and_refuses_writes(
    servers: list[Own], tmp_path: Path
) -> None:
    ip = outward_ip()
    if ip is None:
        pytest.skip("no non-loopback address")
    servers.append(own := Own(tmp_path / "r", "--protected-mode", "yes", bind="0.0.0.0"))

    async def go() -> None:
        store = store_for(own.url(ip))
        try:
            read = await failure(store.get("u1", 5))
            assert read.reason == "denied" and "DENIED" in str(read)
            assert (await failure(store.get_many(["u1", "u2"], 5))).reason == "denied"
            write = await failure(store.append("u1", [Event("a", 1)], "k1"))
            assert write.reason == "denied" and write.applied is False
            status, why = await store.health()
            assert status == "unavailable" and why and "DENIED" in why
        finally:
            await store.close()

    run(go())


def test_wrong_password_and_no_password_are_auth_failures(servers: list[Own], tmp_path: Path) -> None:
    servers.append(own := Own(tmp_path / "r", "--requirepass", "right"))

    async def go() -> None:
        for url in (own.url(), own.url(auth=":wrong@")):
            store = store_for(url)
            try:
                assert (await failure(store.get("u1", 5))).reason == "auth"
                write = await failure(store.append("u1", [Event("a", 1)]))
                assert write.reason == "auth" and write.applied is False
                assert (await store.health())[0] == "unavailable"
            finally:
                await store.close()

    run(go())


def test_acl_noperm_on_writes_keeps_reads_and_on_reads_falls_back(servers: list[Own], tmp_path: Path) -> None:
    servers.append(own := Own(tmp_path / "r"))
    admin = own.admin()
    admin.rpush("t:h:r:u1", "1:a")
    admin.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~*", "+@read", "+@connection")
    admin.execute_command("ACL", "SETUSER", "blind", "on", ">pw", "~other:*", "+@all")

    async def go() -> None:
        store = store_for(own.url(auth="reader:pw@"))
        try:
            assert await store.get("u1", 5) == [Event("a", 1)]
            write = await failure(store.append("u1", [Event("b", 2)], "k1"))
            assert write.reason == "no_permission" and write.applied is False
            assert store.breaker.is_open is False and await store.get("u1", 5) == [Event("a", 1)]
            status, why = await store.health()
            assert status == "writes_failing" and why and "NOPERM" in why.upper()
        finally:
            await store.close()
        blind = store_for(own.url(auth="blind:pw@"))
        try:
            assert (await failure(blind.get("u1", 5))).reason == "no_permission"
        finally:
            await blind.close()

    run(go())
    assert admin.lrange("t:h:r:u1", 0, -1) == [b"1:a"]


# --- server states ----------------------------------------------------------------------------------


def test_loading_dataset_is_unavailable_not_an_error(servers: list[Own], tmp_path: Path) -> None:
    folder = tmp_path / "r"
    servers.append(seed := Own(folder))
    seed.admin().execute_command("DEBUG", "POPULATE", 20000)
    seed.admin().save()
    seed.kill()
    # 20,000 keys x 200 us: the restarted server answers LOADING for ~4 s.
    servers.append(own := Own(folder, "--key-load-delay", "200", "--loading-process-events-interval-bytes", "1024"))

    async def go() -> None:
        store = store_for(own.url())
        try:
            assert (await failure(store.get("u1", 5))).reason == "loading"
            write = await failure(store.append("u1", [Event("a", 1)]))
            assert write.reason == "loading" and write.applied is False
            status, why = await store.health()
            assert status == "unavailable" and why and "loading" in why.lower()
        finally:
            await store.close()

    run(go())


def test_read_only_replica_refuses_writes_with_the_reason_and_keeps_reads(servers: list[Own], tmp_path: Path) -> None:
    servers.append(master := Own(tmp_path / "m"))
    servers.append(replica := Own(tmp_path / "r"))
    master.admin().rpush("t:h:r:u1", "1:a")
    replica.admin().replicaof("127.0.0.1", master.port)
    deadline = time.monotonic() + 10
    while replica.admin().lrange("t:h:r:u1", 0, -1) != [b"1:a"] and time.monotonic() < deadline:
        time.sleep(0.05)

    async def go() -> None:
        store = store_for(replica.url())
        try:
            for _ in range(10):  # never opens the breaker: the server is up, reads work
                write = await failure(store.append("u1", [Event("b", 2)], "k1"))
                assert write.reason == "read_only" and write.applied is False
            assert await store.get("u1", 5) == [Event("a", 1)]
            status, why = await store.health()
            assert status == "writes_failing" and why and "READONLY" in why.upper()
            replica.admin().replicaof("NO", "ONE")
            assert (await store.append("u1", [Event("b", 2)], "k1")).history_len == 2
            assert await store.health() == ("ok", None)
        finally:
            await store.close()

    run(go())


def test_out_of_memory_refuses_writes_and_stores_nothing(servers: list[Own], tmp_path: Path) -> None:
    servers.append(own := Own(tmp_path / "r"))
    admin = own.admin()
    admin.rpush("t:h:r:u1", "1:a")
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)

    async def go() -> None:
        store = store_for(own.url())
        try:
            write = await failure(store.append("u1", [Event("b", 2)], "k1"))
            assert write.reason == "out_of_memory" and write.applied is False
            assert await store.get("u1", 5) == [Event("a", 1)]
            assert (await store.health())[0] == "writes_failing"
        finally:
            await store.close()

    run(go())
    admin.config_set("maxmemory", 0)
    assert admin.lrange("t:h:r:u1", 0, -1) == [b"1:a"] and admin.keys("t:i:*") == []


# --- slow replies and the breaker ---------------------------------------------------------------------


def test_one_slow_reply_does_not_open_the_breaker_but_a_down_server_does_quickly(
    servers: list[Own], tmp_path: Path
) -> None:
    servers.append(own := Own(tmp_path / "r"))

    async def go() -> None:
        store = store_for(own.url(), timeout_s=0.1, retry_after_s=5)
        try:
            for i in range(20):
                await store.get(f"u{i}", 5)
            sleeper = subprocess.Popen(["redis-cli", "-p", str(own.port), "DEBUG", "SLEEP", "0.4"])
            await asyncio.sleep(0.1)
            slow = await failure(store.get("u1", 5))
            assert slow.reason == "timeout" and slow.applied is None
            sleeper.wait(5)
            assert not store.breaker.is_open
            assert await store.get("u1", 5) == []  # the next call goes straight through

            own.kill()
            start = time.perf_counter()
            errors = await asyncio.gather(*(store.get("u1", 5) for _ in range(40)), return_exceptions=True)
            assert all(isinstance(e, HistoryUnavailable) for e in errors)
            assert store.breaker.is_open and time.perf_counter() - start < 1.0
            err = await failure(store.get("u1", 5))
            assert err.reason == "circuit_open"
        finally:
            await store.close()

    run(go())


def test_write_timed_out_on_a_paused_server_is_stored_once_when_retried_with_its_key(
    servers: list[Own], tmp_path: Path
) -> None:
    servers.append(own := Own(tmp_path / "r"))

    async def go() -> None:
        store = store_for(own.url(), timeout_s=0.2)
        try:
            await store.append("warm", [Event("w", 0)])  # loads the script
            os.kill(own.proc.pid, signal.SIGSTOP)
            try:
                err = await failure(store.append("u1", [Event("a", 1), Event("b", 2)], "req-1"))
                assert err.reason == "timeout" and err.applied is None  # sent: it may have run
            finally:
                os.kill(own.proc.pid, signal.SIGCONT)
            await asyncio.sleep(0.2)
            retried = await store.append("u1", [Event("a", 1), Event("b", 2)], "req-1")
            assert retried.replayed and retried.stored == 2 and retried.history_len == 2
            assert await store.get("u1", 10) == [Event("a", 1), Event("b", 2)]  # once, not twice
            again = await store.append("u1", [Event("a", 1), Event("b", 2)], "req-2")  # a new key: new events
            assert not again.replayed and again.history_len == 4
        finally:
            await store.close()

    run(go())


def test_connection_refused_write_says_not_stored() -> None:
    async def go() -> None:
        store = store_for(f"redis://127.0.0.1:{free_port()}/0")
        try:
            err = await failure(store.append("u1", [Event("a", 1)], "k"))
            assert err.reason == "unreachable" and err.applied is False
        finally:
            await store.close()

    run(go())


# --- through a real `remi serve` -----------------------------------------------------------------------


def test_serve_with_a_denied_redis_fails_closed_answers_503_and_warns_at_start(
    artifacts_dir: Path, servers: list[Own], tmp_path: Path
) -> None:
    """Redis refuses every command from the start: the worker cannot read the blocklist and has no
    copy on disk, so it gives no answer that could hold a blocked item
    (docs/operations.md#blocking-items-without-a-reindex) and says why."""
    ip = outward_ip()
    if ip is None:
        pytest.skip("no non-loopback address")
    servers.append(own := Own(tmp_path / "r", "--protected-mode", "yes", bind="0.0.0.0"))
    server = start_server(tmp_path / "root", artifacts_dir, REMI_REDIS_URL=own.url(ip))
    try:
        body = httpx.post(f"{server.url}/recommend", json={"user_id": "alice"}, timeout=10)
        assert body.status_code == 503 and "no blocklist yet" in body.json()["detail"], body.text
        write = httpx.post(f"{server.url}/users/alice/events", json={"events": [{"item_id": "x"}]}, timeout=10)
        assert write.status_code == 503
        assert "denied" in write.json()["detail"] and "not stored" in write.json()["detail"]
        ready = httpx.get(f"{server.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["blocklist"] == "unavailable"
        assert ready.json()["history_store"] == "unavailable" and "DENIED" in ready.json()["history_error"]
        assert "DENIED" in ready.json()["blocklist_error"]
        log = server.log.read_text()
        assert any('"level": "warning"' in line and "not usable at start" in line for line in log.splitlines())
        assert any('"level": "warning"' in line and "blocklist not readable" in line for line in log.splitlines())
    finally:
        server.stop()


def test_serve_retries_safely_after_a_pause_and_reports_a_read_only_replica(
    artifacts_dir: Path, servers: list[Own], tmp_path: Path
) -> None:
    servers.append(own := Own(tmp_path / "r"))
    servers.append(master := Own(tmp_path / "m"))
    server = start_server(tmp_path / "root", artifacts_dir, REMI_REDIS_URL=own.url(), REMI_REDIS_TIMEOUT_MS="200")
    items = (artifacts_dir / "item_ids.txt").read_text().split("\n")[:3]
    events = {"events": [{"item_id": i} for i in items]}
    key = {"Idempotency-Key": "order-42"}
    try:
        assert httpx.post(f"{server.url}/users/warm/events", json=events, timeout=10).status_code == 200
        os.kill(own.proc.pid, signal.SIGSTOP)
        try:
            paused = httpx.post(f"{server.url}/users/alice/events", json=events, headers=key, timeout=10)
        finally:
            os.kill(own.proc.pid, signal.SIGCONT)
        assert paused.status_code == 503, paused.text
        assert "outcome unknown" in paused.json()["detail"] and "same Idempotency-Key" in paused.json()["detail"]
        time.sleep(0.3)
        retry = httpx.post(f"{server.url}/users/alice/events", json=events, headers=key, timeout=10)
        assert retry.status_code == 200 and retry.headers.get("Idempotent-Replayed") == "true"
        assert retry.json() == {"user_id": "alice", "stored": 3, "history_len": 3}
        history = httpx.get(f"{server.url}/users/alice/history", timeout=10).json()["items"]
        assert [h["item_id"] for h in history] == items  # stored once
        other = {"events": [{"item_id": items[0]}]}
        conflict = httpx.post(f"{server.url}/users/alice/events", json=other, headers=key, timeout=10)
        assert conflict.status_code == 409
        assert conflict.json()["detail"][0]["loc"] == ["header", "idempotency-key"], conflict.json()

        own.admin().replicaof("127.0.0.1", master.port)
        refused = httpx.post(f"{server.url}/users/bob/events", json=events, timeout=10)
        assert refused.status_code == 503
        assert "read_only" in refused.json()["detail"] and "not stored" in refused.json()["detail"]
        read = httpx.post(f"{server.url}/recommend", json={"user_id": "alice"}, timeout=10).json()
        assert read["fallback"] != "history_unavailable"
        ready = httpx.get(f"{server.url}/readyz", timeout=10).json()
        assert ready["history_store"] == "writes_failing" and "READONLY" in ready["history_error"].upper()
    finally:
        server.stop()
