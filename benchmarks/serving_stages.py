"""(a) The compute floor: what one /recommend costs in one process, stage by stage, without HTTP.

Each request does what the app does for a stored-history user, one after another: the history
fetch from Redis (``RedisHistory.get_many`` of one user), encode, ONNX model, FAISS search and
merge (``floor`` is their sum: what /recommend must do), then ``respond``: the answer built
by the app's own code (``service.recommender.answer``: a plain dict in the ``RecommendResponse``
shape) and encoded once with orjson into a ``Response`` as the /recommend route does, outside
the floor.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fastapi.responses import Response

    from retrieval.engine import Engine
    from retrieval.query import Query, Result
    from service.schemas import RecommendRequest

STAGES = ("history", "encode", "model", "search", "merge", "floor", "respond")
RESPOND_STAGE = "orjson"  # how `respond` encodes (the report says what it timed)
WARMUP_REQUESTS = 100
K = 50


def respond(
    request: RecommendRequest, query: Query, result: Result, n_unknown: int, engine: Engine, took_ms: float
) -> Response:
    """The /recommend answer as the app sends it: service.recommender's dict, encoded once by orjson
    into a Response (service/routers/recommend.py)."""
    import orjson
    from fastapi.responses import Response

    from service.recommender import answer

    body = answer(request, query, result, n_unknown, engine, took_ms, history_failed=False)
    return Response(orjson.dumps(body), media_type="application/json")


def compute_floor(root: Path, url: str, prefix: str, users: list[str], requests: int) -> dict[str, Any]:
    """Per-request stage times in one process: Redis history -> encode -> model -> search -> merge -> respond.

    One thread each for onnxruntime and FAISS; the first 100 requests are a warm-up, not recorded.
    Returns the median, p99 and mean of each stage in ms, and the index that was searched.
    """
    from retrieval.engine import Engine
    from retrieval.query import Query
    from retrieval.store import load_current
    from service.history import RedisHistory
    from service.schemas import RecommendRequest

    engine = Engine(load_current(root, threads=1), faiss_threads=1)
    engine.warm_up()

    async def run() -> dict[str, list[float]]:
        store = RedisHistory(url, prefix=prefix, max_len=200)
        times: dict[str, list[float]] = {s: [] for s in STAGES}
        clock = time.perf_counter
        try:
            for i in range(requests + WARMUP_REQUESTS):
                user = users[i % len(users)]
                request = RecommendRequest(user_id=user, k=K)  # FastAPI parses it before the route runs
                t0 = clock()
                events = (await store.get_many([user], 200))[0]
                t1 = clock()
                known, n_unknown = engine.encode([e.item_id for e in events])
                t2 = clock()
                query = Query(known, K)
                (res,), timings = engine.recommend([query])
                t3 = clock()
                response = respond(request, query, res, n_unknown, engine, round((t3 - t0) * 1000, 3))
                t4 = clock()
                if i < WARMUP_REQUESTS or not response.body:
                    continue
                for stage, value in zip(
                    STAGES,
                    (t1 - t0, t2 - t1, timings.model, timings.search, timings.merge, t3 - t0, t4 - t3),
                    strict=True,
                ):
                    times[stage].append(value * 1000)
        finally:
            await store.close()
        return times

    times = asyncio.run(run())
    out = {
        stage: {
            "median_ms": round(float(np.median(v)), 4),
            "p99_ms": round(float(np.percentile(v, 99)), 4),
            "mean_ms": round(float(np.mean(v)), 4),
        }
        for stage, v in times.items()
    }
    return {
        "requests": requests,
        "index_kind": engine.loaded.manifest.kind,
        "index_params": engine.loaded.manifest.params,
        "recall_at_50": engine.loaded.manifest.recall_at_50,
        "respond_stage": RESPOND_STAGE,
        "stages": out,
    }
