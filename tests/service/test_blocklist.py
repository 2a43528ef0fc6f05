"""The live blocklist (service/blocklist.py) in process: the tiny model, TestClient, real Redis.

What must hold: a blocked item is in no answer (the fast path, the full app, batches, cold start,
with or without seen items excluded, the interests explanation) while answers keep k items; an
unblocked one may come back; the routes need the admin token; bad bodies are 422 naming the
field; the list lives in Redis (a restart and a new index version keep it) and an outage keeps
the last list read. The multi-worker server tests are in test_blocklist_workers.py.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from index.publish import reindex
from remi.contract import ItemVocabulary
from retrieval.engine import Engine
from retrieval.query import Query
from retrieval.store import load_current
from service.app import create_app
from service.blocklist import LOG_MAX, LiveBlocklist, MemoryBlocklist, RedisBlocklist, map_ids
from service.config import ServiceSettings
from service.schemas import BLOCK_MAX
from tests.service.conftest import SHARED_REDIS, OwnRedis, wait_for
from tests.service.tiny_model import N_ITEMS, TinyModel

TOKEN = {"authorization": "Bearer s3cret"}


@contextmanager
def serving(root: Path, **overrides: Any) -> Iterator[TestClient]:
    """A started app on ``root`` with the admin token; overrides as ServiceSettings fields."""
    fields = {"poll_seconds": 0, "admin_token": "s3cret", **overrides}
    app = create_app(ServiceSettings(index_root=root, **fields))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(params=["memory", "redis"])
def client(request: pytest.FixtureRequest, tiny_root: Path) -> Iterator[TestClient]:
    """The same behaviour with the in-process list and with the list in Redis (own key namespace)."""
    if request.param == "memory":
        with serving(tiny_root) as c:
            yield c
    else:
        prefix = request.getfixturevalue("redis_prefix")
        with serving(tiny_root, redis_url=SHARED_REDIS, redis_prefix=prefix) as c:
            yield c


def recommend(client: TestClient, **body: Any) -> list[str]:
    response = client.post("/recommend", json=body)
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def block(client: TestClient, *item_ids: str, op: str = "block") -> dict[str, Any]:
    response = client.post(f"/admin/items/{op}", json={"item_ids": list(item_ids)}, headers=TOKEN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def history_and_its_best(client: TestClient, model: TinyModel) -> tuple[list[str], str]:
    """A history and the item its answer puts first."""
    history = model.item_ids[10:16]
    return history, recommend(client, user_id="u", k=10, history=history, use_stored_history=False)[0]


# ---------------------------------------------------------------- answers


def test_a_blocked_item_leaves_every_answer_and_unblocking_brings_it_back(
    client: TestClient, tiny_model: TinyModel
) -> None:
    history, best = history_and_its_best(client, tiny_model)
    body = {"user_id": "u", "k": 10, "history": history, "use_stored_history": False}
    assert block(client, best) == {"changed": 1, "total": 1, "version": 1}
    answer = recommend(client, **body)
    assert best not in answer and len(answer) == 10  # still k items
    for merge in ("score", "quota", "round_robin"):
        assert best not in recommend(client, **body, merge=merge)
    batch = client.post("/recommend/batch", json={"requests": [body, {**body, "user_id": "v", "k": 3}]})
    assert batch.status_code == 200
    assert all(best not in [i["item_id"] for i in r["items"]] for r in batch.json()["results"])
    # Seen items allowed back: a history item is its own best match, unless it is blocked.
    seen_ok = {**body, "history": [best, *history], "exclude_seen": False}
    answer = recommend(client, **seen_ok)
    assert best not in answer and len(answer) == 10

    assert block(client, best, op="unblock") == {"changed": 1, "total": 0, "version": 2}
    assert recommend(client, **body)[0] == best


def test_cold_start_skips_blocked_items_and_still_serves_k(client: TestClient, tiny_model: TinyModel) -> None:
    top = tiny_model.most_popular(8)
    block(client, top[0], top[2])
    assert recommend(client, user_id="cold", k=6) == [top[1], *top[3:8]]
    # a history the model does not know falls back to popularity too
    assert recommend(client, user_id="cold", k=3, history=["not-an-item"]) == [top[1], top[3], top[4]]


def test_the_fast_path_applies_the_blocklist(client: TestClient, tiny_model: TinyModel, fast_calls: list[int]) -> None:
    calls = fast_calls
    history, best = history_and_its_best(client, tiny_model)
    block(client, best)
    calls.clear()
    assert best not in recommend(client, user_id="u", k=10, history=history, use_stored_history=False)
    assert calls == [1]  # that answer came from the fast path


def test_a_whole_catalogue_request_holds_every_item_but_the_blocked_ones(
    client: TestClient, tiny_model: TinyModel
) -> None:
    blocked = tiny_model.item_ids[::5]
    block(client, *blocked)
    answer = recommend(client, user_id="u", k=N_ITEMS, history=tiny_model.item_ids[:3], exclude_seen=False)
    assert sorted(answer) == sorted(set(tiny_model.item_ids) - set(blocked))


def test_interest_candidates_skip_blocked_items(client: TestClient, tiny_model: TinyModel) -> None:
    user = "explained"
    events = {"events": [{"item_id": item} for item in tiny_model.item_ids[10:16]]}
    assert client.post(f"/users/{user}/events", json=events).status_code == 200
    before = client.get(f"/users/{user}/interests?top_n=5").json()["interests"]
    shown = {c["item_id"] for interest in before for c in interest["candidates"]}
    block(client, *shown)
    after = client.get(f"/users/{user}/interests?top_n=5").json()["interests"]
    assert all(len(i["candidates"]) == 5 and not {c["item_id"] for c in i["candidates"]} & shown for i in after)


# ---------------------------------------------------------------- the admin routes


def test_the_listing_pages_sorted_ids_and_says_which_the_model_knows(client: TestClient, tiny_model: TinyModel) -> None:
    known = tiny_model.item_ids[:3]
    change = block(client, "zz-not-yet-in-the-catalogue", *known, known[0])  # a repeat counts once
    assert change["changed"] == change["total"] == 4
    assert block(client, known[0])["changed"] == 0  # blocking again is a no-op (safe to retry)
    page = client.get("/admin/items/blocked?offset=1&limit=2", headers=TOKEN).json()
    assert page["items"] == [{"item_id": known[1], "known": True}, {"item_id": known[2], "known": True}]
    assert (page["total"], page["offset"], page["limit"]) == (4, 1, 2)
    assert page["version"] == page["applied_version"] == 2
    last = client.get("/admin/items/blocked?offset=3", headers=TOKEN).json()["items"]
    assert last == [{"item_id": "zz-not-yet-in-the-catalogue", "known": False}]


ROUTES = [("post", "/admin/items/block"), ("post", "/admin/items/unblock"), ("get", "/admin/items/blocked")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_the_blocklist_routes_need_the_bearer_token(client: TestClient, method: str, path: str) -> None:
    body = {"json": {"item_ids": ["item-001"]}} if method == "post" else {}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cretx"}):
        refused = client.request(method, path, headers=headers, **body)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/admin/items/blocked", headers=TOKEN).json()["total"] == 0  # nothing got through


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_the_blocklist_routes_are_404_without_a_configured_token(tiny_root: Path, method: str, path: str) -> None:
    with serving(tiny_root, admin_token=None) as client:
        body = {"json": {"item_ids": ["item-001"]}} if method == "post" else {}
        assert client.request(method, path, headers=TOKEN, **body).status_code == 404


@pytest.mark.parametrize(
    ("body", "loc", "error"),
    [
        ({}, ["body", "item_ids"], "missing"),
        ({"item_ids": []}, ["body", "item_ids"], "too_short"),
        ({"item_ids": [f"i{n}" for n in range(BLOCK_MAX + 1)]}, ["body", "item_ids"], "too_long"),
        ({"item_ids": "item-001"}, ["body", "item_ids"], "list_type"),
        ({"item_ids": [""]}, ["body", "item_ids", 0], "item_id_invalid"),  # one error per item (README.md#api-usage)
        ({"item_ids": ["x" * 257]}, ["body", "item_ids", 0], "item_id_invalid"),
        ({"item_ids": ["ok", True]}, ["body", "item_ids", 1], "item_id_invalid"),
        ({"item_ids": ["ok"], "ids": ["x"]}, ["body", "ids"], "extra_forbidden"),
        ([], ["body"], "model_attributes_type"),
    ],
)
def test_bad_block_bodies_are_422_naming_the_field(client: TestClient, body: Any, loc: list[Any], error: str) -> None:
    for op in ("block", "unblock"):
        response = client.post(f"/admin/items/{op}", json=body, headers=TOKEN)
        assert response.status_code == 422, response.text
        # an id may be text or a JSON integer: the error names the item (then the type it failed as)
        assert any(e["loc"][: len(loc)] == loc and e["type"] == error for e in response.json()["detail"]), response.text


@pytest.mark.parametrize(("query", "field"), [("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset")])
def test_bad_listing_queries_are_422_naming_the_parameter(client: TestClient, query: str, field: str) -> None:
    response = client.get(f"/admin/items/blocked?{query}", headers=TOKEN)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", field]


def test_integer_ids_are_blocked_as_their_text(client: TestClient) -> None:
    assert block(client, 7)["total"] == 1  # type: ignore[arg-type]  # JSON integers are ids too, as in histories
    assert client.get("/admin/items/blocked", headers=TOKEN).json()["items"][0]["item_id"] == "7"


# ---------------------------------------------------------------- versions, restarts, outages


def test_ids_unknown_to_a_model_apply_once_a_version_knows_them() -> None:
    """The store keeps raw ids; each vocabulary maps what it knows (a new item can be blocked before it ships)."""
    live = LiveBlocklist(MemoryBlocklist(), poll_s=1.0)
    old, new = ItemVocabulary(["a", "b"]), ItemVocabulary(["a", "b", "c"])

    async def run() -> None:
        await live.store.block(["c", "b", "never"])
        assert await live.refresh()

    asyncio.run(run())
    assert live.indices(old).tolist() == [2]
    assert live.indices(new).tolist() == [2, 3]
    assert live.indices(new) is live.indices(new)  # mapped once per (list, model), not per request


def test_a_new_index_version_keeps_the_blocklist(tiny_root: Path, tiny_model: TinyModel, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    with serving(root) as client:
        history, best = history_and_its_best(client, tiny_model)
        block(client, best)
        new = reindex(tiny_model.artifacts, root, kind="flat", force=True).index_version
        assert client.post("/admin/reload", headers=TOKEN).json()["version"] == new
        answer = client.post("/recommend", json={"user_id": "u", "k": 10, "history": history}).json()
        assert answer["index_version"] == new and best not in [i["item_id"] for i in answer["items"]]


def test_blocked_ids_survive_a_restart(tiny_root: Path, tiny_model: TinyModel, redis_prefix: str) -> None:
    shared = {"redis_url": SHARED_REDIS, "redis_prefix": redis_prefix}
    with serving(tiny_root, **shared) as first:
        history, best = history_and_its_best(first, tiny_model)
        block(first, best)
    with serving(tiny_root, **shared) as restarted:
        assert best not in recommend(restarted, user_id="u", k=10, history=history, use_stored_history=False)
        assert restarted.get("/admin/items/blocked", headers=TOKEN).json()["items"][0]["item_id"] == best


def test_a_redis_outage_keeps_the_last_list_and_answers(
    tiny_root: Path, tiny_model: TinyModel, own_redis: OwnRedis
) -> None:
    with serving(tiny_root, redis_url=own_redis.url, redis_timeout_ms=50, blocklist_poll_ms=20) as client:
        history, best = history_and_its_best(client, tiny_model)
        body = {"user_id": "u", "k": 10, "history": history}
        block(client, best)
        own_redis.stop()
        time.sleep(0.2)  # several polls fail
        for _ in range(3):
            response = client.post("/recommend", json=body)
            assert response.status_code == 200 and response.json()["fallback"] == "history_unavailable"
            assert best not in [i["item_id"] for i in response.json()["items"]]
        assert client.get("/admin/items/blocked", headers=TOKEN).status_code == 503
        refused = client.post("/admin/items/unblock", json={"item_ids": [best]}, headers=TOKEN)
        assert refused.status_code == 503 and "retry" in refused.json()["detail"]
        assert best not in [i["item_id"] for i in client.post("/recommend", json=body).json()["items"]]


# -------------------------------------------- incremental updates (docs/operations.md#blocking-items-without-a-reindex)


def command_calls(server: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (INFO commandstats of a private server)."""
    stats = server.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def test_a_change_is_applied_from_the_change_log_not_by_reading_the_whole_list(own_redis: OwnRedis) -> None:
    """With 100k blocked ids every worker re-reading the whole set on each change blocked its event
    loop for 150-300 ms (history reads timed out: 12% fallbacks): a worker must read the change only."""
    admin = redis.Redis.from_url(own_redis.url)
    store = RedisBlocklist(own_redis.url, "t:", timeout_s=1.0)
    live = LiveBlocklist(store, poll_s=1.0)
    vocabulary = ItemVocabulary([f"i{n}" for n in range(5000)])

    async def run() -> None:
        for start in range(0, 3000, 1000):
            await store.block([f"i{n}" for n in range(start, start + 1000)])
        assert await live.refresh()
        assert len(live.indices(vocabulary)) == 3000
        admin.config_resetstat()
        await store.block(["i4000", "i4001"])
        await store.unblock(["i7"])
        assert await live.refresh()
        await store.close()

    asyncio.run(run())
    reads = command_calls(admin)
    assert not {"smembers", "sscan", "sinter", "sunion"} & reads.keys(), reads  # the set itself was not read
    assert live.snapshot.items == {f"i{n}" for n in range(3000)} - {"i7"} | {"i4000", "i4001"}
    assert live.indices(vocabulary).tolist() == sorted(vocabulary.indices_of(sorted(live.snapshot.items))[0].tolist())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(
        st.tuples(st.booleans(), st.lists(st.sampled_from([f"i{n}" for n in range(12)] + ["unknown"]), min_size=1)),
        max_size=12,
    ),
    polls=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_change_by_change_updates_give_what_a_whole_read_gives(
    redis_prefix: str, changes: list[tuple[bool, list[str]]], polls: list[bool]
) -> None:
    """Two workers, one polling after every change, one now and then (several changes at once):
    both end with the store's ids, and their item indices are the ids' own (mapped once)."""
    vocabulary = ItemVocabulary([f"i{n}" for n in range(10)])  # i10, i11 and "unknown" are unknown to it

    async def run() -> None:
        store = RedisBlocklist(SHARED_REDIS, f"{redis_prefix}{uuid.uuid4().hex[:8]}:", timeout_s=1.0)
        eager, lazy = LiveBlocklist(store, poll_s=1.0), LiveBlocklist(store, poll_s=1.0)
        for live in (eager, lazy):
            await live.refresh()
            live.indices(vocabulary)
        for (blocking, ids), poll in zip(changes, polls, strict=False):
            await (store.block(ids) if blocking else store.unblock(ids))
            await eager.refresh()
            if poll:
                await lazy.refresh()
        await lazy.refresh()
        truth = await store.snapshot()
        for live in (eager, lazy):
            assert live.snapshot == truth
            assert live.indices(vocabulary).tolist() == map_ids(vocabulary, truth.items).tolist()
        await store.close()

    asyncio.run(run())


def test_a_worker_behind_the_trimmed_change_log_reads_the_whole_list(own_redis: OwnRedis) -> None:
    store = RedisBlocklist(own_redis.url, "t:", timeout_s=1.0)
    behind = LiveBlocklist(store, poll_s=1.0)
    vocabulary = ItemVocabulary([f"i{n}" for n in range(3000)])

    async def run() -> None:
        await store.block(["i0", "i1"])
        assert await behind.refresh()
        behind.indices(vocabulary)
        for n in range(LOG_MAX + 20):  # more changes than the log keeps
            await (store.block([f"i{n % 3000}"]) if n % 3 else store.unblock([f"i{(n - 1) % 3000}"]))
        assert await behind.refresh()
        truth = await store.snapshot()
        assert behind.snapshot == truth
        assert behind.indices(vocabulary).tolist() == map_ids(vocabulary, truth.items).tolist()
        await store.close()

    asyncio.run(run())


def test_a_store_that_lost_its_data_is_read_again_in_full(own_redis: OwnRedis) -> None:
    """A Redis that lost its data counts versions from 0 again: after as many new changes the
    version a worker holds is back, with other ids; the store's epoch tells them apart."""
    admin = redis.Redis.from_url(own_redis.url)
    store = RedisBlocklist(own_redis.url, "t:", timeout_s=1.0)
    live = LiveBlocklist(store, poll_s=1.0)

    async def run() -> None:
        await store.block(["a"])
        await store.block(["b"])
        assert await live.refresh() and live.snapshot.items == {"a", "b"}
        admin.flushall()  # the data is gone (a restart without persistence)
        await store.block(["c"])
        await store.block(["d"])  # version 2 again
        assert await live.refresh()
        await store.close()

    asyncio.run(run())
    assert live.snapshot.items == {"c", "d"}


def fill_to_maxmemory(admin: redis.Redis) -> None:
    """Redis past maxmemory with noeviction (the limit set under what it holds, so it stays past
    it whatever buffers come and go): every write is refused from now on, reads still work."""
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) // 2))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("fill", "x" * 1000)


def test_the_blocklist_is_read_from_a_redis_at_maxmemory(own_redis: OwnRedis) -> None:
    """Redis refuses MULTI transactions at maxmemory with noeviction, reads or not: a worker that
    started then applied no blocklist at all (docs/operations.md#blocking-items-without-a-reindex).
    The reads need no transaction."""
    store = RedisBlocklist(own_redis.url, "t:", timeout_s=1.0)

    async def first() -> None:
        await store.block(["a", "b"])
        await store.unblock(["b"])
        await store.close()

    asyncio.run(first())
    fill_to_maxmemory(redis.Redis.from_url(own_redis.url))
    fresh = LiveBlocklist(RedisBlocklist(own_redis.url, "t:", timeout_s=1.0), poll_s=1.0)

    async def start() -> None:
        await fresh.refresh()
        await fresh.store.close()

    asyncio.run(start())
    assert fresh.loaded and fresh.snapshot.items == {"a"} and fresh.snapshot.version == 2


# ---------------------------------------------------- fail closed (docs/operations.md#blocking-items-without-a-reindex)


def test_a_worker_that_cannot_read_the_blocklist_at_start_answers_503_and_is_not_ready(
    tiny_root: Path, tiny_model: TinyModel, own_redis: OwnRedis, tmp_path: Path
) -> None:
    """No list from the store and none on disk: any answer could hold a blocked item, so none is given."""
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    own_redis.stop()
    with serving(root, redis_url=own_redis.url, redis_timeout_ms=50, blocklist_poll_ms=20) as client:
        body = {"user_id": "u", "k": 10, "history": tiny_model.item_ids[10:16], "use_stored_history": False}
        refused = client.post("/recommend", json=body)
        assert refused.status_code == 503 and "blocklist" in refused.json()["detail"], refused.text
        batch = client.post("/recommend/batch", json={"requests": [body]})
        assert batch.status_code == 503 and "blocklist" in batch.json()["detail"]
        assert client.get("/users/u/interests").status_code == 503
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "not_ready" and ready.json()["blocklist"] == "unavailable"
        assert ready.json()["blocklist_error"]
        own_redis.start()  # the store is back: the poller reads the list and the worker serves
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=30)
        assert client.post("/recommend", json=body).status_code == 200


def test_a_restarted_worker_that_cannot_read_the_store_applies_the_last_list_kept_on_disk(
    tiny_root: Path, tiny_model: TinyModel, own_redis: OwnRedis, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    fields = {"redis_url": own_redis.url, "redis_timeout_ms": 50, "blocklist_poll_ms": 20}
    with serving(root, **fields) as first:
        history, best = history_and_its_best(first, tiny_model)
        block(first, best)
        body = {"user_id": "u", "k": 10, "history": history, "use_stored_history": False}
        assert best not in recommend(first, **body)
    own_redis.stop()
    with serving(root, **fields) as restarted:
        for _ in range(5):
            assert best not in recommend(restarted, **body)
        ready = restarted.get("/readyz").json()
        assert ready["blocklist"] == "stale" and "disk" in ready["blocklist_error"], ready


# ---------------------------------------------------------------- the engine: a property over random lists


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def engine(request: pytest.FixtureRequest, tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """The tiny model behind both index kinds with another exclusion path (flat: selector or
    over-fetch; hnsw: one shared beam, then the selector for a row that lost too many)."""
    root = tmp_path_factory.mktemp(f"block-{request.param}") / "root"
    reindex(tiny_model.artifacts, root, kind=request.param)
    return Engine(load_current(root), dedup_cosine=0.94)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    blocked=st.sets(st.integers(1, N_ITEMS), max_size=N_ITEMS),
    history=st.lists(st.integers(1, N_ITEMS), max_size=12),
    k=st.sampled_from([1, 5, 10, N_ITEMS]),
    exclude_seen=st.booleans(),
    merge=st.sampled_from(["score", "quota", "round_robin"]),
)
def test_no_answer_holds_a_blocked_item_and_each_has_k_when_k_are_allowed(
    engine: Engine, blocked: set[int], history: list[int], k: int, exclude_seen: bool, merge: str
) -> None:
    blocked_indices = np.array(sorted(blocked), dtype=np.int64)
    seen = np.array(history, dtype=np.int64)
    query = Query(seen, k, exclude_seen, merge, blocked_indices)
    plain = Query(seen, k, exclude_seen, merge)
    (result, other), _ = engine.recommend([query, plain])  # a neighbour without a blocklist shares the batch
    got = set(engine.encode(result.item_ids)[0].tolist())
    allowed = set(range(1, N_ITEMS + 1)) - blocked - (set(history) if exclude_seen else set())
    assert not got & blocked
    assert len(result.item_ids) == len(got) == min(k, len(allowed))
    assert result.cold_start == (not history)
    assert other == engine.recommend([plain])[0][0]  # and its answer is its own
