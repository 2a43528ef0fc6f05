"""The recommendation flow behind /recommend and /recommend/batch:
stored history -> item indices -> engine (micro-batched or in the compute pool) -> answers.

A history-store outage or a slow store never fails a request: it is answered from the
request's own history, or popularity, and says so in ``fallback``. Answers are plain dicts in
the RecommendResponse shape, encoded once by orjson in the route: building 50 pydantic Item
objects and re-validating them cost ~0.1 ms a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import HTTPException

from remi.attributes import Condition
from retrieval.engine import Engine
from retrieval.query import Query, Result, Timings
from service import telemetry
from service.blocklist import BlocklistNotLoaded
from service.filters import compile_filter, raise_if_invalid
from service.history import Event, HistoryUnavailable
from service.schemas import RecommendRequest
from service.state import State

log = logging.getLogger("remi.service")


async def recommend_many(
    state: State, engine: Engine, requests: Sequence[RecommendRequest], batch: bool = False
) -> list[dict[str, Any]]:
    """One answer per request, in order, all from ``engine`` (even if a reload swaps it meanwhile).

    A filter that does not fit the served model's attributes is a RequestValidationError (422)
    naming the field, raised before any work: ``batch`` puts ``requests, i`` in its location.
    """
    filters = check_filters(engine, requests, batch)
    state.active += 1
    try:
        t0 = time.perf_counter()
        blocked = blocked_items(state, engine)  # this worker's live blocklist, for this model
        wanted = [r.user_id for r in requests if r.use_stored_history]
        stored = await stored_histories(state, wanted)
        queries, unknown = encode_requests(engine, requests, stored, state.settings.history_max_len, filters, blocked)
        results, timings = await compute(state, engine, queries)
        took = round((time.perf_counter() - t0) * 1000, 3)
        return [
            answer(r, q, result, n_unknown, engine, took, history_failed=r.use_stored_history and stored is None)
            for r, q, result, n_unknown in zip(requests, queries, results, unknown, strict=True)
        ]
    finally:
        state.active -= 1


def blocked_items(state: State, engine: Engine) -> np.ndarray:
    """The item indices no answer of ``engine`` may hold; 503 while this worker has no blocklist
    (fail closed: any answer could hold a blocked item; /readyz says the same)."""
    try:
        return state.blocklist.indices(engine.vocabulary)
    except BlocklistNotLoaded as exc:
        raise HTTPException(503, f"{exc}; answers resume once it is read") from exc


async def stored_histories(state: State, user_ids: list[str]) -> dict[str, list[Event]] | None:
    """Each user's stored events; None when the store is down or slow: the caller falls back, it never fails."""
    if not user_ids:
        return {}
    t0 = time.perf_counter()
    try:
        histories = await state.history.get_many(user_ids, state.settings.history_max_len)
    except HistoryUnavailable as exc:
        telemetry.HISTORY_ERRORS.labels("get").inc()
        if state.should_log_outage():
            log.warning("history store unavailable: serving fallbacks", extra={"error": str(exc)})
        return None
    finally:
        telemetry.STAGE.labels("history").observe(time.perf_counter() - t0)
    return dict(zip(user_ids, histories, strict=True))


def check_filters(engine: Engine, requests: Sequence[RecommendRequest], batch: bool) -> list[tuple[Condition, ...]]:
    """Each request's filter as engine conditions; a 422 naming every field that does not fit the model."""
    compiled, errors = [], []
    for i, r in enumerate(requests):
        conditions, bad = compile_filter(engine.attributes, r.filter, ("body", "requests", i) if batch else ("body",))
        compiled.append(conditions)
        errors += bad
    raise_if_invalid(errors)
    return compiled


def encode_requests(
    engine: Engine,
    requests: Sequence[RecommendRequest],
    stored: dict[str, list[Event]] | None,
    max_len: int,
    filters: Sequence[tuple[Condition, ...]] | None = None,
    blocked: np.ndarray | None = None,
) -> tuple[list[Query], list[int]]:
    """Engine queries (stored history, then the request's, the last ``max_len`` known items; the
    ``blocked`` item indices excluded from every answer) and the number of unknown item ids
    skipped per request."""
    if blocked is None:
        blocked = np.zeros(0, dtype=np.int64)
    queries, unknown = [], []
    for i, r in enumerate(requests):
        raw = [e.item_id for e in (stored or {}).get(r.user_id, [])] if r.use_stored_history else []
        if r.history:
            raw += [str(item) for item in r.history[-max_len:]]
        known, n_unknown = engine.encode(raw[-max_len:])
        excluded = engine.encode([str(item) for item in r.exclude_items])[0] if r.exclude_items else None
        conditions = filters[i] if filters is not None else ()
        queries.append(
            Query(
                known,
                r.k,
                r.exclude_seen,
                r.merge,
                blocked=blocked,
                filtered=r.filtered,
                conditions=conditions,
                exclude_items=excluded,
            )
        )
        unknown.append(n_unknown)
    if sum(unknown):
        telemetry.UNKNOWN_ITEMS.inc(sum(unknown))
    return queries, unknown


async def compute(state: State, engine: Engine, queries: list[Query]) -> tuple[list[Result], Timings]:
    """Model, search and merge off the event loop: a single query joins the micro-batcher, a
    batch request is already a batch and goes to the compute pool as it is."""
    if state.batcher is not None and len(queries) == 1:
        result, timings = await state.batcher.submit(queries[0], engine)
        results = [result]
    else:
        telemetry.BATCH_SIZE.observe(len(queries))
        loop = asyncio.get_running_loop()
        results, timings = await loop.run_in_executor(state.executor, engine.recommend, queries)
    telemetry.STAGE.labels("model").observe(timings.model)
    telemetry.STAGE.labels("search").observe(timings.search)
    telemetry.STAGE.labels("merge").observe(timings.merge)
    return results, timings


def answer(
    request: RecommendRequest,
    query: Query,
    result: Result,
    n_unknown: int,
    engine: Engine,
    took_ms: float,
    history_failed: bool,
) -> dict[str, Any]:
    """One answer in the RecommendResponse shape; counts its fallback."""
    fallback = "history_unavailable" if history_failed else ("cold_start" if result.cold_start else None)
    if fallback:
        telemetry.FALLBACKS.labels(fallback).inc()
    items: Any = (
        orjson.Fragment(result.items_json)  # encoded by the engine in the compute thread
        if result.items_json is not None
        else [
            {"item_id": item, "score": score, "interest": interest}
            for item, score, interest in zip(result.item_ids, result.scores, result.interests, strict=True)
        ]
    )
    return {
        "user_id": request.user_id,
        "items": items,
        "model_version": engine.model_version,
        "index_version": engine.index_version,
        "history_len": len(query.history),
        "unknown_items": n_unknown,
        "fallback": fallback,
        **({"filter": result.filter} if request.filtered else {}),
        "took_ms": took_ms,
    }
