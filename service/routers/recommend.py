"""POST /recommend and /recommend/batch: top-k candidates (the flow is in service/recommender.py)."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from service import telemetry
from service.deps import StateDep, serving_engine
from service.http_guards import SafeJsonRoute
from service.recommender import recommend_many
from service.schemas import (
    BAD_INPUT_422,
    TOO_LARGE_413,
    BatchRequest,
    BatchResponse,
    RecommendRequest,
    RecommendResponse,
)

router = APIRouter(route_class=SafeJsonRoute)
NO_MODEL_503 = {"description": "No model loaded yet"}


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    responses={503: NO_MODEL_503, 413: TOO_LARGE_413, 422: BAD_INPUT_422},
    summary="Top-k candidates for one user",
)
async def recommend(body: RecommendRequest, state: StateDep) -> Response:
    answers = await recommend_many(state, serving_engine(state.versions), [body])
    return Response(orjson.dumps(answers[0]), media_type="application/json", headers=_worker())


@router.post(
    "/recommend/batch",
    response_model=BatchResponse,
    responses={503: NO_MODEL_503, 413: TOO_LARGE_413, 422: BAD_INPUT_422},
    summary="Top-k candidates for many users at once",
)
async def recommend_batch(body: BatchRequest, state: StateDep) -> Response:
    t0 = time.perf_counter()
    results = await recommend_many(state, serving_engine(state.versions), body.requests, batch=True)
    took = round((time.perf_counter() - t0) * 1000, 3)
    return Response(
        orjson.dumps({"results": results, "took_ms": took}), media_type="application/json", headers=_worker()
    )


def _worker() -> dict[str, str]:
    return {telemetry.WORKER_HEADER: telemetry.worker_id()}
