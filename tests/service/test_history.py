"""History stores: the Redis one against the local server (own key prefix per test), outages
against a private redis-server, and the embedded one."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.server import free_port
from service.history import (
    Event,
    HistoryUnavailable,
    MemoryHistory,
    RedisHistory,
    history_key,
    make_history_store,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


needs_redis = pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")
needs_server = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


@pytest.fixture
def sync_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def prefix(sync_redis: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys (and only those) are deleted afterwards."""
    p = f"remi-test:{uuid4().hex}:"
    yield p
    keys = list(sync_redis.scan_iter(match=f"{p}*", count=1000))
    if keys:
        sync_redis.delete(*keys)


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_connect_timeout=0.1).ping():
                return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


@pytest.fixture
def private_redis() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A redis-server of this test's own (the test may kill and restart it); all killed at the end."""
    port = free_port()
    procs = [_start_redis(port)]
    yield port, procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=5)


# --- keys -----------------------------------------------------------------------------------------

UNSAFE_IDS = ["a:b", "a*", "*", "user 1", " ", "", "ünïcødé", "用户", "x" * 129, "é" * 5000, "a\nb", "h:r:u1", "u1\n"]


def test_plain_ids_stay_readable_and_everything_else_is_hashed() -> None:
    assert history_key("p:", "u1") == "p:h:r:u1"
    assert history_key("p:", "A.b_c-d@e") == "p:h:r:A.b_c-d@e"
    assert history_key("p:", "x" * 128) == "p:h:r:" + "x" * 128
    for uid in UNSAFE_IDS:
        key = history_key("p:", uid)
        assert key.startswith("p:h:s:") and len(key) == len("p:h:s:") + 64, uid


def test_distinct_ids_never_share_a_key_and_raw_never_equals_hashed() -> None:
    ids = UNSAFE_IDS + ["u1", "a" * 64, "0" * 64]
    keys = [history_key("p:", u) for u in ids]
    assert len(set(keys)) == len(ids)
    # A raw id shaped like a digest stays in the raw namespace; a raw id cannot spell "s:<digest>".
    digest_key = history_key("p:", "a:b")
    spoof = digest_key.removeprefix("p:h:")
    assert history_key("p:", spoof) != digest_key
    assert history_key("p:", digest_key.removeprefix("p:h:s:")).startswith("p:h:r:")


def test_lone_surrogates_in_an_id_still_give_a_key() -> None:
    assert history_key("p:", "\ud800") != history_key("p:", "\ud801")


# --- Redis ----------------------------------------------------------------------------------------


@needs_redis
def test_append_then_get_is_oldest_first_with_timestamps(prefix: str) -> None:
    async def go() -> list[Event]:
        store = RedisHistory(REDIS_URL, prefix=prefix)
        try:
            assert (await store.append("u1", [Event("a", 1), Event("b", 2)])).history_len == 2
            assert (await store.append("u1", [Event("c", 3), Event("d")])).history_len == 4
            return await store.get("u1", 10)
        finally:
            await store.close()

    assert asyncio.run(go()) == [Event("a", 1), Event("b", 2), Event("c", 3), Event("d", None)]


@needs_redis
def test_cap_keeps_the_newest_and_limit_returns_the_most_recent(prefix: str) -> None:
    async def go() -> tuple[int, list[Event], list[Event], list[Event]]:
        store = RedisHistory(REDIS_URL, prefix=prefix, max_len=5)
        try:
            n = (await store.append("u1", [Event(f"i{t}", t) for t in range(8)])).history_len
            return n, await store.get("u1", 100), await store.get("u1", 2), await store.get("u1", 0)
        finally:
            await store.close()

    n, full, last2, none = asyncio.run(go())
    assert n == 5
    assert full == [Event(f"i{t}", t) for t in range(3, 8)]
    assert last2 == [Event("i6", 6), Event("i7", 7)]
    assert none == []


@needs_redis
def test_append_sets_the_ttl(prefix: str, sync_redis: redis.Redis) -> None:
    async def go() -> None:
        store = RedisHistory(REDIS_URL, prefix=prefix, ttl_seconds=3600)
        forever = RedisHistory(REDIS_URL, prefix=prefix, ttl_seconds=None)
        try:
            await store.append("u1", [Event("a", 1)])
            await forever.append("u2", [Event("a", 1)])
        finally:
            await store.close()
            await forever.close()

    asyncio.run(go())
    assert 0 < sync_redis.ttl(history_key(prefix, "u1")) <= 3600
    assert sync_redis.ttl(history_key(prefix, "u2")) == -1


@needs_redis
def test_item_ids_with_colons_round_trip(prefix: str) -> None:
    events = [Event("urn:item:42", 7), Event(":", None), Event("a::b:", 8), Event("", 9)]

    async def go() -> list[Event]:
        store = RedisHistory(REDIS_URL, prefix=prefix)
        try:
            await store.append("u1", events)
            return await store.get("u1", 10)
        finally:
            await store.close()

    assert asyncio.run(go()) == events


@needs_redis
def test_unsafe_user_ids_get_distinct_keys_inside_the_prefix(prefix: str, sync_redis: redis.Redis) -> None:
    ids = UNSAFE_IDS + ["u1"]

    async def go() -> list[list[Event]]:
        store = RedisHistory(REDIS_URL, prefix=prefix)
        try:
            for n, uid in enumerate(ids):
                await store.append(uid, [Event(f"item{n}", n)])
            return [await store.get(uid, 5) for uid in ids]
        finally:
            await store.close()

    got = asyncio.run(go())
    assert got == [[Event(f"item{n}", n)] for n in range(len(ids))]
    keys = set(sync_redis.scan_iter(match=f"{prefix}*", count=1000))
    assert keys == {history_key(prefix, uid) for uid in ids}
    assert len(keys) == len(ids)


@needs_redis
def test_get_many_answers_per_user_in_order_and_empty_for_unknown(prefix: str) -> None:
    async def go() -> tuple[list[list[Event]], list[list[Event]]]:
        store = RedisHistory(REDIS_URL, prefix=prefix)
        try:
            await store.append("u1", [Event("a", 1), Event("b", 2), Event("c", 3)])
            await store.append("u:2", [Event("x", 5)])
            return await store.get_many(["u:2", "nobody", "u1"], 2), await store.get_many([], 2)
        finally:
            await store.close()

    many, empty = asyncio.run(go())
    assert many == [[Event("x", 5)], [], [Event("b", 2), Event("c", 3)]]
    assert empty == []


@needs_redis
def test_append_of_nothing_reports_the_stored_length(prefix: str) -> None:
    async def go() -> tuple[int, int]:
        store = RedisHistory(REDIS_URL, prefix=prefix)
        try:
            before = (await store.append("u1", [])).history_len
            await store.append("u1", [Event("a", 1)])
            return before, (await store.append("u1", [])).history_len
        finally:
            await store.close()

    assert asyncio.run(go()) == (0, 1)


@needs_redis
def test_ping_is_true_on_a_live_server(prefix: str) -> None:
    async def go() -> tuple[bool, bool]:
        store = RedisHistory(REDIS_URL, prefix=prefix)
        try:
            return await store.ping(), store.available
        finally:
            await store.close()

    assert asyncio.run(go()) == (True, True)


# --- outages --------------------------------------------------------------------------------------


async def _timed(coro: object) -> tuple[BaseException | None, float]:
    start = time.perf_counter()
    try:
        await coro  # type: ignore[misc]
    except Exception as err:  # noqa: BLE001 - the test inspects the type
        return err, time.perf_counter() - start
    return None, time.perf_counter() - start


@needs_server
def test_outage_fails_fast_then_recovers_after_restart(private_redis: tuple[int, list]) -> None:
    port, procs = private_redis
    retry_after = 0.3

    async def go() -> None:
        store = RedisHistory(
            f"redis://:s3cret@127.0.0.1:{port}/0", prefix="t:", retry_after_s=retry_after, breaker_min_failures=1
        )
        try:
            assert (await store.append("u1", [Event("a", 1)])).history_len == 1
            _stop(procs[0])

            err, took = await _timed(store.get("u1", 10))
            assert isinstance(err, HistoryUnavailable) and took < 0.5
            assert "s3cret" not in str(err) and f"127.0.0.1:{port}" in str(err)
            assert store.failures == 1 and not store.available

            for call in (store.get("u1", 10), store.append("u1", [Event("b", 2)]), store.get_many(["u1"], 5)):
                err, took = await _timed(call)
                assert isinstance(err, HistoryUnavailable) and took < 0.01
            assert store.failures == 1  # fast failures never reached the network

            assert await store.ping() is False
            assert not store.available

            procs.append(_start_redis(port))
            await asyncio.sleep(retry_after + 0.05)
            assert store.available
            assert (await store.append("u1", [Event("b", 2)])).history_len == 1  # the restarted server is empty
            assert await store.get("u1", 10) == [Event("b", 2)]
            assert await store.ping() is True and store.available
        finally:
            await store.close()

    asyncio.run(go())


@needs_server
def test_successful_ping_closes_the_breaker_before_the_window_ends(private_redis: tuple[int, list]) -> None:
    port, procs = private_redis

    async def go() -> None:
        store = RedisHistory(f"redis://127.0.0.1:{port}/0", prefix="t:", retry_after_s=60, breaker_min_failures=1)
        try:
            _stop(procs[0])
            with pytest.raises(HistoryUnavailable):
                await store.get("u1", 5)
            procs.append(_start_redis(port))
            with pytest.raises(HistoryUnavailable):
                await store.get("u1", 5)  # the window is still open
            assert await store.ping() is True
            assert store.available
            assert await store.get("u1", 5) == []
        finally:
            await store.close()

    asyncio.run(go())


@needs_server
def test_pooled_connections_from_before_a_restart_do_not_fail_requests(private_redis: tuple[int, list]) -> None:
    port, procs = private_redis

    async def go() -> None:
        store = RedisHistory(
            f"redis://127.0.0.1:{port}/0", prefix="t:", retry_after_s=0.1, breaker_min_failures=1, timeout_s=0.5
        )
        try:
            await asyncio.gather(*(store.get(f"u{i}", 5) for i in range(20)))  # fills the pool
            _stop(procs[0])
            with pytest.raises(HistoryUnavailable):
                await store.get("u1", 5)
            procs.append(_start_redis(port))
            await asyncio.sleep(0.15)
            assert await store.get("u1", 5) == []  # the probe closes the breaker
            results = await asyncio.gather(*(store.get(f"u{i}", 5) for i in range(20)), return_exceptions=True)
            assert results == [[]] * 20
            assert store.failures == 1
        finally:
            await store.close()

    asyncio.run(go())


def test_after_the_window_only_one_call_probes() -> None:
    port = free_port()  # nothing listens there

    async def go() -> None:
        store = RedisHistory(f"redis://127.0.0.1:{port}/0", retry_after_s=0.05, breaker_min_failures=1)
        try:
            with pytest.raises(HistoryUnavailable):
                await store.get("u1", 5)
            await asyncio.sleep(0.06)
            assert store.available
            results = await asyncio.gather(*(store.get("u1", 5) for _ in range(5)), return_exceptions=True)
            assert all(isinstance(r, HistoryUnavailable) for r in results)
            assert store.failures == 2  # the first failure and the one probe
            assert sum("probe is in flight" in str(r) for r in results) == 4
        finally:
            await store.close()

    asyncio.run(go())


def test_unreachable_url_raises_history_unavailable() -> None:
    port = free_port()  # bound then closed: nothing listens there

    async def go() -> None:
        store = RedisHistory(f"redis://127.0.0.1:{port}/0", retry_after_s=0)
        try:
            for call in (store.get("u1", 5), store.append("u1", [Event("a")]), store.get_many(["u1", "u2"], 5)):
                err, took = await _timed(call)
                assert isinstance(err, HistoryUnavailable), repr(err)
                assert took < 0.5
            assert await store.ping() is False
            assert store.failures == 4
        finally:
            await store.close()

    asyncio.run(go())


def test_a_server_that_never_answers_times_out_into_history_unavailable() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]

        async def go() -> None:
            store = RedisHistory(f"redis://127.0.0.1:{port}/0", timeout_s=0.05)
            try:
                err, took = await _timed(store.get("u1", 5))
                assert isinstance(err, HistoryUnavailable), repr(err)
                assert took < 0.5
            finally:
                await store.close()

        asyncio.run(go())


# --- one order: timestamps (docs/operations.md#scaling-the-api-horizontally) ------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "redis" and not _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    return str(request.param)


def _make_store(kind: str, prefix: str, max_len: int = 200) -> MemoryHistory | RedisHistory:
    return (
        MemoryHistory(max_len=max_len) if kind == "memory" else RedisHistory(REDIS_URL, prefix=prefix, max_len=max_len)
    )


def _appended(kind: str, prefix: str, batches: list[list[Event]], max_len: int = 200, user: str = "u1") -> list[Event]:
    """What ``get`` answers after appending ``batches`` one call each."""

    async def go() -> list[Event]:
        store = _make_store(kind, prefix, max_len)
        try:
            for batch in batches:
                await store.append(user, batch)
            return await store.get(user, max_len)
        finally:
            await store.close()

    return asyncio.run(go())


def test_events_posted_with_older_timestamps_end_up_in_timestamp_order(store_kind: str, prefix: str) -> None:
    """Histories were kept in arrival order although they answer "oldest first" and `remi history
    load` sorts by timestamp: a late event (an offline client's batch) went after newer ones."""
    got = _appended(
        store_kind, prefix, [[Event("a", 10), Event("b", 20)], [Event("c", 15)], [Event("e", 30), Event("d", 5)]]
    )
    assert got == [Event("d", 5), Event("a", 10), Event("c", 15), Event("b", 20), Event("e", 30)]


def test_equal_timestamps_keep_their_arrival_order(store_kind: str, prefix: str) -> None:
    got = _appended(
        store_kind, prefix, [[Event("a", 10), Event("b", 20)], [Event("x", 10), Event("y", 10)], [Event("z", 10)]]
    )
    assert got == [Event("a", 10), Event("x", 10), Event("y", 10), Event("z", 10), Event("b", 20)]


def test_an_event_without_a_timestamp_counts_as_newest_when_it_arrives(store_kind: str, prefix: str) -> None:
    """It takes the time of the event before it: later events with older timestamps go before both."""
    batches = [[Event("a", 10), Event("n1")], [Event("b", 5)], [Event("c", 10)], [Event("n2"), Event("d", 7)]]
    got = _appended(store_kind, prefix, batches)
    assert got == [Event("b", 5), Event("d", 7), Event("a", 10), Event("n1"), Event("c", 10), Event("n2")]


def test_the_cap_keeps_the_newest_by_timestamp_not_the_last_to_arrive(store_kind: str, prefix: str) -> None:
    got = _appended(
        store_kind, prefix, [[Event(f"i{t}", t) for t in (10, 20, 30)], [Event("old", 1), Event("mid", 25)]], max_len=3
    )
    assert got == [Event("i20", 20), Event("mid", 25), Event("i30", 30)]  # "old" arrived last but is the oldest


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from("abcdefgh"), st.one_of(st.none(), st.integers(0, 6))), max_size=5),
        min_size=1,
        max_size=6,
    ),
    max_len=st.integers(1, 6),
)
def test_both_stores_keep_the_same_order_and_it_is_the_timestamp_order(
    prefix: str, batches: list[list[tuple[str, int | None]]], max_len: int
) -> None:
    """Embedded and Redis answer the same for any appends; with timestamps on every event that is
    the newest ``max_len`` of all events ever appended, by timestamp, ties in arrival order."""
    if not _redis_up():
        pytest.skip("no Redis on 127.0.0.1:6379")
    events = [[Event(item, stamp) for item, stamp in batch] for batch in batches]
    user = f"u-{uuid4().hex[:8]}"
    memory = _appended("memory", prefix, events, max_len, user)
    assert _appended("redis", prefix, events, max_len, user) == memory
    if all(e.timestamp is not None for batch in events for e in batch):
        arrived = [e for batch in events for e in batch]
        order = sorted(range(len(arrived)), key=lambda n: (arrived[n].timestamp, n))
        assert memory == [arrived[n] for n in order[max(0, len(order) - max_len) :]]


# --- a busy event loop is not a slow Redis (docs/operations.md#scaling-the-api-horizontally) --------------------------


async def _stalled_while_in_flight(call: object, turns: int, stall_s: float = 0.3) -> object:
    """Starts ``call``, lets the event loop turn ``turns`` times (connecting, handshaking, sending:
    where it is then depends on ``turns``), then holds the loop for ``stall_s``, as a worker
    descheduled on a busy 2-core box or a long callback does; Redis answers meanwhile."""
    task = asyncio.ensure_future(call)  # type: ignore[arg-type]
    for _ in range(turns):
        await asyncio.sleep(0)
    time.sleep(stall_s)
    return await task


@needs_redis
@pytest.mark.parametrize("pooled", [False, True], ids=["new-connection", "pooled-connection"])
def test_a_stalled_event_loop_is_not_a_slow_redis(prefix: str, pooled: bool) -> None:
    """With 2 workers on 2 cores a few answers in 10k fell back with a healthy Redis
    (docs/operations.md#scaling-the-api-horizontally):
    the loop came back after the deadline with the reply (or the connection) waiting in the socket,
    and the timer fired first: a timeout, or "unreachable" (which counts for the breaker). Stalled
    at every step of a call (connect, handshake, send, read), it must still get its answer."""

    async def go() -> None:
        for turns in range(1, 13):
            store = RedisHistory(REDIS_URL, prefix=prefix, timeout_s=0.05)
            try:
                user = f"u{turns}"
                if pooled:
                    await store.append(user, [Event("a", 1)])
                    assert await _stalled_while_in_flight(store.get(user, 10), turns) == [Event("a", 1)]
                    both = await _stalled_while_in_flight(store.get_many([user, "nobody"], 10), turns)
                    assert both == [[Event("a", 1)], []]
                else:
                    assert await _stalled_while_in_flight(store.get(user, 10), turns) == []
                assert store.failures == 0, (turns, store.last_error)
            finally:
                await store.close()

    asyncio.run(go())


@needs_server
def test_the_pool_is_opened_before_the_first_request(private_redis: tuple[int, list]) -> None:
    """Connections made at start, not by the first requests of a burst (whose deadline they would eat)."""
    port, _ = private_redis
    admin = redis.Redis(port=port)
    before = {c["id"] for c in admin.client_list()}

    def opened() -> int:
        return len({c["id"] for c in admin.client_list()} - before)

    async def go() -> None:
        store = RedisHistory(f"redis://127.0.0.1:{port}/0", timeout_s=0.05, max_connections=64)
        try:
            await store.warm_up(8)
            assert opened() == 8
            await asyncio.gather(*(store.get(f"u{n}", 5) for n in range(8)))
            assert opened() == 8  # the burst used them, and opened none
        finally:
            await store.close()

    asyncio.run(go())


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RedisHistory(REDIS_URL, max_len=0)
    with pytest.raises(ValueError):
        RedisHistory(REDIS_URL, ttl_seconds=0)
    with pytest.raises(ValueError):
        MemoryHistory(max_len=0)


# --- embedded store -------------------------------------------------------------------------------


def test_memory_store_orders_caps_and_limits_like_redis() -> None:
    async def go() -> None:
        store = MemoryHistory(max_len=5)
        assert (await store.append("u1", [Event(f"i{t}", t) for t in range(3)])).history_len == 3
        assert (await store.append("u1", [Event(f"i{t}", t) for t in range(3, 8)] + [Event("x:y")])).history_len == 5
        assert await store.get("u1", 100) == [Event(f"i{t}", t) for t in range(4, 8)] + [Event("x:y")]
        assert await store.get("u1", 2) == [Event("i7", 7), Event("x:y")]
        assert await store.get("u1", 0) == []
        assert await store.get("nobody", 5) == []
        assert await store.get_many(["nobody", "u1"], 1) == [[], [Event("x:y")]]
        assert (await store.append("u2", [])).history_len == 0
        assert await store.ping() is True
        await store.close()

    asyncio.run(go())


CSV = """user_id,item_id,timestamp
u2,a,30
u1,c,20
u1,a,10
u1,b,20
u2,zzz,40
u1,d,30
u3,zzz,1
u1,e,5
"""


@pytest.mark.parametrize("gz", [False, True])
def test_seed_from_csv_keeps_the_last_events_in_time_order(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("i.csv.gz" if gz else "i.csv")
    path.write_bytes(gzip.compress(CSV.encode()) if gz else CSV.encode())
    store = MemoryHistory(max_len=4)
    assert store.seed_from_csv(path) == 3

    async def go() -> list[list[Event]]:
        return await store.get_many(["u1", "u2", "u3"], 10)

    u1, u2, u3 = asyncio.run(go())
    # Equal timestamps (c, b at 20) keep their file order; e (t=5) is the oldest and capped away.
    assert u1 == [Event("a", 10), Event("c", 20), Event("b", 20), Event("d", 30)]
    assert u2 == [Event("a", 30), Event("zzz", 40)]
    assert u3 == [Event("zzz", 1)]


def test_seed_from_csv_skips_unknown_items(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_text(CSV)
    store = MemoryHistory()
    assert store.seed_from_csv(path, known_items={"a", "b", "c", "d", "e"}) == 2  # u3 only had zzz

    async def go() -> list[list[Event]]:
        return await store.get_many(["u1", "u2", "u3"], 10)

    u1, u2, u3 = asyncio.run(go())
    assert [e.item_id for e in u1] == ["e", "a", "c", "b", "d"]
    assert u2 == [Event("a", 30)]
    assert u3 == []


def test_seed_from_an_empty_csv_seeds_nobody(tmp_path: Path) -> None:
    path = tmp_path / "i.csv"
    path.write_text("user_id,item_id,timestamp\n")
    assert MemoryHistory().seed_from_csv(path) == 0


# --- factory --------------------------------------------------------------------------------------


def test_make_history_store_picks_redis_only_when_a_url_is_given() -> None:
    assert isinstance(make_history_store(None), MemoryHistory)
    assert isinstance(make_history_store("", prefix="ignored:"), MemoryHistory)
    memory = make_history_store(None, max_len=7)
    assert isinstance(memory, MemoryHistory) and memory.max_len == 7

    store = make_history_store(REDIS_URL, prefix="x:", max_len=9, retry_after_s=2.0)
    assert isinstance(store, RedisHistory)
    assert (store.prefix, store.max_len, store.retry_after_s) == ("x:", 9, 2.0)
    asyncio.run(store.close())


def test_the_service_history_module_does_not_import_torch() -> None:
    code = "import sys, service.history; sys.exit(int(any(m == 'torch' or m.startswith(('torch.', 'training')) for m in sys.modules)))"  # noqa: E501
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0
