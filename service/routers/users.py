"""A user's events and history in the history store, and the explanation of their interests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container, Sequence
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from retrieval.query import Query
from service import telemetry
from service.auth import require
from service.deps import HistoryDep, SettingsDep, StateDep, VersionsDep, serving_engine
from service.filters import compile_filter, parse_filter_query, raise_if_invalid
from service.history import Event, HistoryUnavailable, IdempotencyConflict
from service.http_guards import SafeJsonRoute
from service.recommender import blocked_items
from service.schemas import (
    BAD_INPUT_422,
    TOO_LARGE_413,
    EventIn,
    EventsRequest,
    EventsResponse,
    FilterQuery,
    HistoryItem,
    HistoryResponse,
    IdempotencyKey,
    InterestsResponse,
    TopN,
    UserPath,
)

# {user_id:path}: the id is the rest of the path before the route's suffix, so an id holding "/"
# (sent as %2F, which the server decodes before routing) reaches its user (README, ids).
router = APIRouter(route_class=SafeJsonRoute)


@router.post(
    "/users/{user_id:path}/events",
    response_model=EventsResponse,
    responses={
        413: TOO_LARGE_413,
        409: {**BAD_INPUT_422, "description": "The Idempotency-Key was already used for other events."},
        422: BAD_INPUT_422,
        503: {
            "description": "History store unavailable: 'events not stored' (retry), or 'outcome unknown' "
            "(retry with the same Idempotency-Key)"
        },
    },
    summary="Append interactions to a user's history (at most once per Idempotency-Key)",
    dependencies=[require("events:write")],
)
async def add_events(
    user_id: UserPath, body: EventsRequest, history: HistoryDep, idempotency_key: IdempotencyKey = None
) -> Response:
    events = stamp_arrival(body.events, time.time())
    try:
        done = await history.append(user_id, events, idempotency_key)
    except IdempotencyConflict as exc:
        # 409, not 422: the request is valid, it conflicts with what the key already stored.
        error = {"type": "idempotency_conflict", "loc": ["header", "idempotency-key"], "msg": str(exc)}
        return Response(orjson.dumps({"detail": [error]}), 409, media_type="application/json")
    except HistoryUnavailable as exc:
        telemetry.HISTORY_ERRORS.labels("append").inc()
        if exc.applied is None:  # e.g. a timeout after the command was sent: it may have run
            outcome = "outcome unknown (the events may have been stored): retry with the same Idempotency-Key"
        else:
            outcome = "events not stored: retry"
        raise HTTPException(503, f"history store unavailable ({exc.reason}), {outcome}; {exc}") from exc
    out = EventsResponse(user_id=user_id, stored=done.stored, history_len=done.history_len)
    headers = {"Idempotent-Replayed": "true"} if done.replayed else None
    return Response(orjson.dumps(out.model_dump()), media_type="application/json", headers=headers)


def stamp_arrival(posted: Sequence[EventIn], now: float) -> list[Event]:
    """The events to store: one posted without a timestamp takes its arrival time (integer Unix
    seconds, like every other timestamp), never earlier than a timestamp before it in its batch,
    so a history never shows ``timestamp: null`` and a batch keeps its order. Marked ``stamped``:
    the Idempotency-Key fingerprint is of the events as sent (service/history.py)."""
    events: list[Event] = []
    latest = int(now)
    for e in posted:
        if e.timestamp is None:
            events.append(Event(str(e.item_id), latest, stamped=True))
        else:
            events.append(Event(str(e.item_id), e.timestamp))
            latest = max(latest, e.timestamp)
    return events


@router.get(
    "/users/{user_id:path}/history",
    response_model=HistoryResponse,
    responses={503: {"description": "History store unavailable"}, 422: BAD_INPUT_422},
    summary="A user's stored history, oldest first",
    dependencies=[require("history:read")],
)
async def get_history(
    user_id: UserPath, history: HistoryDep, versions: VersionsDep, settings: SettingsDep
) -> HistoryResponse:
    try:
        events = await history.get(user_id, settings.history_max_len)
    except HistoryUnavailable as exc:
        telemetry.HISTORY_ERRORS.labels("get").inc()
        raise HTTPException(503, f"history store unavailable: {exc}") from exc
    known: Container[str] = versions.engine.vocabulary if versions.engine else frozenset()
    return HistoryResponse(
        user_id=user_id,
        items=[HistoryItem(item_id=e.item_id, timestamp=e.timestamp, known=e.item_id in known) for e in events],
    )


@router.get(
    "/users/{user_id:path}/interests",
    response_model=InterestsResponse,
    responses={503: {"description": "No model loaded, or history store unavailable"}, 422: BAD_INPUT_422},
    summary="Explain: what each interest draws on and retrieves",
    dependencies=[require("history:read")],
)
async def interests(user_id: UserPath, state: StateDep, top_n: TopN = 10, filter: FilterQuery = None) -> dict[str, Any]:
    spec = parse_filter_query(filter)
    engine = serving_engine(state.versions)
    conditions, errors = compile_filter(engine.attributes, spec, ("query",))
    raise_if_invalid(errors)
    try:
        events = await state.history.get(user_id, state.settings.history_max_len)
    except HistoryUnavailable as exc:
        raise HTTPException(503, f"history store unavailable: {exc}") from exc
    known, unknown = engine.encode([e.item_id for e in events])
    loop = asyncio.get_running_loop()
    blocked = blocked_items(state, engine)  # 503 while this worker has no blocklist
    query = Query(known, top_n, filtered=spec is not None, conditions=conditions, blocked=blocked)

    def explain() -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        allowed, gathered = engine.filtered_items(query) if query.filtered else (None, None)
        explained = engine.explain(known, top_n, allowed=allowed, blocked=blocked, gathered=gathered)
        if allowed is None:
            return explained, None
        counts = engine.filter_info(allowed, None)
        return explained, {key: counts[key] for key in ("allowed_items", "filtered_out")}  # no one search path

    explained, filter_info = await loop.run_in_executor(state.executor, explain)
    collapsed = sum(1 for i in explained if i["effective_items"] < 1.5 and len(known) > 1)
    return {
        **({"filter": filter_info} if filter_info is not None else {}),
        "user_id": user_id,
        "model_version": engine.model_version,
        "index_version": engine.index_version,
        "history_len": len(known),
        "unknown_items": unknown,
        "collapsed_interests": collapsed,
        "interests": explained,
    }
