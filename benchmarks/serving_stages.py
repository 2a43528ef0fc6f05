"""(a) The compute floor: what one /recommend costs in one process, stage by stage, without HTTP.

Each request does what the app does for a stored-history user, one after another: the history
fetch from Redis (``RedisHistory.get_many`` of one user), encode, ONNX model, FAISS search and
merge (``floor`` is their sum: what /recommend must do), then ``respond``: the answer built
the way service/app.py builds it (a plain dict in the ``RecommendResponse`` shape, encoded once
with orjson into a ``Response``), outside the floor.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fastapi.responses import Response

    from service.engine import Result

STAGES = ("history", "encode", "model", "search", "merge", "floor", "respond")
RESPOND_STAGE = "orjson"  # how `respond` encodes (the report says what it timed)
WARMUP_REQUESTS = 100
K = 50


def respond(
    user_id: str,
    result: Result,
    model_version: str,
    index_version: str,
    history_len: int,
    unknown_items: int,
    fallback: str | None,
    took_ms: float,
) -> Response:
    """The /recommend answer as service/app.py sends it: a dict in the ``RecommendResponse`` shape
    (no pydantic objects per item), encoded once by orjson into a Starlette ``Response``."""
    import orjson
    from fastapi.responses import Response

    body = {
        "user_id": user_id,
        "items": [
            {"item_id": i, "score": s, "interest": interest}
            for i, s, interest in zip(result.item_ids, result.scores, result.interests, strict=True)
        ],
        "model_version": model_version,
        "index_version": index_version,
        "history_len": history_len,
        "unknown_items": unknown_items,
        "fallback": fallback,
        "took_ms": took_ms,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def compute_floor(root: Path, url: str, prefix: str, users: list[str], requests: int) -> dict[str, Any]:
    """Per-request stage times in one process: Redis history -> encode -> model -> search -> merge -> respond.

    One thread each for onnxruntime and FAISS; the first 100 requests are a warm-up, not recorded.
    Returns the median, p99 and mean of each stage in ms, and the index that was searched.
    """
    from index.store import load_current
    from service.engine import Engine, Query
    from service.history import RedisHistory

    engine = Engine(load_current(root, threads=1), faiss_threads=1)
    engine.warm_up()

    async def run() -> dict[str, list[float]]:
        store = RedisHistory(url, prefix=prefix, max_len=200)
        times: dict[str, list[float]] = {s: [] for s in STAGES}
        clock = time.perf_counter
        try:
            for i in range(requests + WARMUP_REQUESTS):
                user = users[i % len(users)]
                t0 = clock()
                events = (await store.get_many([user], 200))[0]
                t1 = clock()
                known, n_unknown = engine.encode([e.item_id for e in events])
                t2 = clock()
                (res,), timings = engine.recommend([Query(known, K)])
                t3 = clock()
                took_ms = round((t3 - t0) * 1000, 3)
                response = respond(
                    user, res, engine.model_version, engine.index_version, len(known), n_unknown, None, took_ms
                )
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
        "index_kind": engine.version.manifest.kind,
        "index_params": engine.version.manifest.params,
        "recall_at_50": engine.version.manifest.recall_at_50,
        "respond_stage": RESPOND_STAGE,
        "stages": out,
    }
