"""A request's answer never depends on its neighbours (docs/operations.md#serving-cost-of-a-trained-model).

Every merge, in process (Engine.recommend with mixed batches, and the micro-batcher with
concurrent requests) and once end to end through a real server's /recommend/batch.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from index.publish import reindex
from retrieval.engine import Engine
from retrieval.merge import MERGES
from retrieval.query import Query, Result
from retrieval.store import load_current
from service.batcher import MicroBatcher
from tests.service.conftest import start_server


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def engine(request: pytest.FixtureRequest, artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    root = tmp_path_factory.mktemp(f"iso-{request.param}") / "root"
    reindex(artifacts_dir, root, kind=request.param)
    return Engine(load_current(root))


def histories(engine: Engine) -> list[np.ndarray]:
    arts = engine.arts
    return [h[m] for h, m in zip(arts.sample_history, arts.sample_mask, strict=True) if m.any()]


def neighbours(hist: list[np.ndarray], rng: np.random.Generator, count: int) -> list[Query]:
    """Other requests of every shape: k 1/10/500, every merge, both exclude flags, a cold user."""
    out = [Query(np.zeros(0, dtype=np.int64), 10)]
    for _ in range(count):
        h = hist[int(rng.integers(len(hist)))]
        out.append(Query(h, int(rng.choice([1, 10, 500])), bool(rng.integers(2)), str(rng.choice(MERGES))))
    return out


def same(a: Result, b: Result) -> bool:
    return (a.item_ids, a.scores, a.interests, a.cold_start) == (b.item_ids, b.scores, b.interests, b.cold_start)


@pytest.mark.parametrize("merge", MERGES)
def test_every_merge_answers_the_same_alone_and_inside_a_mixed_batch(engine: Engine, merge: str) -> None:
    hist = histories(engine)
    rng = np.random.default_rng(5)
    for user in rng.choice(len(hist), 25, replace=False):
        for k, exclude in ((10, True), (int(rng.integers(1, 60)), bool(rng.integers(2)))):
            query = Query(hist[user], k, exclude, merge)
            alone = engine.recommend([query])[0][0]
            batch = neighbours(hist, rng, int(rng.integers(1, 40)))
            at = int(rng.integers(len(batch) + 1))
            batch.insert(at, query)
            beside = engine.recommend(batch)[0][at]
            assert same(alone, beside), (merge, int(user), k, exclude)
            assert len(alone.item_ids) == k


def test_every_merge_answers_the_same_through_the_micro_batcher(engine: Engine) -> None:
    """Concurrent requests coalesce into micro-batches; each still gets its lone answer."""
    hist = histories(engine)
    rng = np.random.default_rng(11)
    queries = neighbours(hist, rng, 150) + [Query(hist[3], 10, True, m) for m in MERGES for _ in range(5)]
    rng.shuffle(queries)  # type: ignore[arg-type]
    alone = [engine.recommend([q])[0][0] for q in queries]

    async def scenario() -> list[Result]:
        batcher = MicroBatcher(
            ThreadPoolExecutor(2), max_wait=0.02, max_size=64, parallel=2, active=lambda: len(queries)
        )
        batcher.start()
        try:
            answers = await asyncio.gather(*(batcher.submit(q, engine) for q in queries))
        finally:
            await batcher.stop()
        return [result for result, _ in answers]

    sizes_before = _batch_sizes()
    beside = asyncio.run(scenario())
    assert _batch_sizes() - sizes_before < len(queries), "the requests never shared a micro-batch"
    for q, a, b in zip(queries, alone, beside, strict=True):
        assert same(a, b), (q.k, q.merge, q.exclude_seen)


def _batch_sizes() -> float:
    """How many micro-batches the batcher has run so far (its histogram's count)."""
    from service import telemetry

    return next(s.value for m in telemetry.BATCH_SIZE.collect() for s in m.samples if s.name.endswith("_count"))


def test_batch_endpoint_answers_each_request_as_if_alone(artifacts_dir: Path, tmp_path: Path) -> None:
    """End to end: /recommend/batch beside k=500 and other merges == each request posted alone."""
    server = start_server(tmp_path / "root", artifacts_dir)
    try:
        item_ids = (artifacts_dir / "item_ids.txt").read_text().split()
        rng = np.random.default_rng(3)
        mine = []
        for n, merge in enumerate(MERGES * 4):
            history = [item_ids[i] for i in rng.choice(len(item_ids), int(rng.integers(3, 30)), replace=False)]
            mine.append({"user_id": f"u{n}", "k": 10, "history": history, "merge": merge})
        others = [
            {"user_id": f"o{n}", "k": int(k), "history": item_ids[n : n + 20], "merge": m, "exclude_seen": bool(n % 2)}
            for n, (k, m) in enumerate(zip([500, 1, 10, 500, 7, 500], [*MERGES, *MERGES], strict=True))
        ]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            alone = [client.post("/recommend", json=r).json()["items"] for r in mine]
            body = {"requests": [x for pair in zip(mine, others * 2, strict=True) for x in pair]}
            answer = client.post("/recommend/batch", json=body)
            assert answer.status_code == 200, answer.text
            got = {r["user_id"]: r["items"] for r in answer.json()["results"]}
        assert [got[r["user_id"]] for r in mine] == alone
    finally:
        server.stop()
