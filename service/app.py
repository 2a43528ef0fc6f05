"""The FastAPI application: routes, startup (load, warm up, poll) and graceful degradation.

Failure policy: a missing or broken model/index answers 503 on the recommendation routes
(and /readyz) but the process stays up and keeps polling for a good version; a history-store
outage never fails /recommend (it falls back to the request's history or popularity and says
so in ``fallback``); writes that cannot be stored answer 503 so the client knows to retry.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import AfterValidator, StrictBool

import remi
from service import metrics
from service.batcher import MicroBatcher
from service.config import ServiceSettings
from service.docs_ui import mount_offline_docs
from service.engine import Engine, Result
from service.engine import Query as EngineQuery
from service.history import (
    Event,
    HistoryStore,
    HistoryUnavailable,
    IdempotencyConflict,
    MemoryHistory,
    make_history_store,
)
from service.http_guards import BodyLimitMiddleware, SafeJsonRoute, validation_error_handler
from service.schemas import (
    BAD_INPUT_422,
    TOO_LARGE_413,
    USER_ID_PATTERN,
    BatchResponse,
    EventsResponse,
    HistoryItem,
    HistoryResponse,
    RecommendResponse,
    check_user_id,
    request_models,
)
from service.versions import Versions

log = logging.getLogger("remi.service")

UserPath = Annotated[
    str,
    AfterValidator(check_user_id),
    Path(
        min_length=1,
        max_length=256,
        description="Opaque user id (printable UTF-8; see the body's user_id).",
        json_schema_extra={"pattern": USER_ID_PATTERN},
    ),
]


class State:
    """Everything the routes share; one per worker process."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.versions = Versions(settings)
        self.history: HistoryStore = make_history_store(
            settings.redis_url,
            prefix=settings.redis_prefix,
            max_len=settings.history_max_len,
            ttl_seconds=settings.history_ttl_seconds,
            timeout_s=settings.redis_timeout_ms / 1000,
            max_connections=settings.redis_max_connections,
            retry_after_s=settings.redis_breaker_open_s,
            breaker_window_s=settings.redis_breaker_window_s,
            breaker_min_failures=settings.redis_breaker_min_failures,
            breaker_failure_rate=settings.redis_breaker_failure_rate,
            idempotency_ttl_s=settings.idempotency_ttl_s,
        )
        # OpenMP's thread count is per calling thread: set it in each compute thread, where FAISS runs.
        self.executor = ThreadPoolExecutor(
            settings.compute_threads,
            thread_name_prefix="remi-compute",
            initializer=_set_faiss_threads,
            initargs=(settings.faiss_threads,),
        )
        self.batcher: MicroBatcher | None = None
        self.active = 0  # recommendation requests in progress (tells the batcher whether to wait)

    def engine(self) -> Engine:
        engine = self.versions.engine
        if engine is None:
            raise HTTPException(503, f"no model loaded: {self.versions.error or 'starting'}")
        return engine


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """App factory (uvicorn --factory); settings default to the REMI_* environment."""
    settings = settings or ServiceSettings()
    state = State(settings)
    RecommendRequest, BatchRequest, EventsRequest = request_models(
        settings.k_max, settings.batch_max, settings.events_max
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if isinstance(state.history, MemoryHistory) and settings.seed_history:
            users = await loop.run_in_executor(None, state.history.seed_from_csv, settings.seed_history)
            log.info("embedded history store seeded", extra={"users": users, "path": settings.seed_history})
        elif settings.seed_history:
            log.warning(
                "REMI_SEED_HISTORY is ignored with a Redis history store: load it with `remi history load`",
                extra={"path": settings.seed_history},
            )
        history_status, history_error = await state.history.health()
        if history_status != "ok":  # start degraded (fallbacks), but say so loudly
            log.warning(
                "history store not usable at start: serving fallbacks until it is",
                extra={"history_store": history_status, "error": history_error},
            )
        await state.versions.refresh()
        if settings.microbatch:
            state.batcher = MicroBatcher(
                state.executor,
                settings.microbatch_wait_ms / 1000,
                settings.microbatch_max,
                parallel=settings.compute_threads,
                active=lambda: state.active,
            )
            state.batcher.start()
        poller = loop.create_task(state.versions.poll_forever()) if settings.poll_seconds > 0 else None
        log.info(
            "service started",
            extra={
                "version": state.versions.serving,
                "error": state.versions.error,
                "history": type(state.history).__name__,
                "onnx_threads": settings.onnx_threads,
                "faiss_threads": settings.faiss_threads,
                "compute_threads": settings.compute_threads,
                "workers": settings.workers,
                "microbatch": settings.microbatch,
            },
        )
        yield
        if poller:
            poller.cancel()
        if state.batcher:
            await state.batcher.stop()
        await state.history.close()
        state.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="remi-match",
        version=remi.__version__,
        description="Multi-interest candidate matching: K interest vectors per user, one FAISS search each.",
        lifespan=lifespan,
        docs_url=None,  # served from packaged assets below, not a CDN
        redoc_url=None,
    )
    # Every route decodes JSON strictly and every 422 renders safely (service/http_guards.py).
    app.router.route_class = SafeJsonRoute
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(metrics.MetricsMiddleware)  # outermost: 413s are counted too
    app.state.remi = state
    mount_offline_docs(app)

    def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        """A dependency, so FastAPI runs it before it validates the body's fields: a caller
        without the token learns nothing about the body (only text that is not JSON at all is
        refused earlier, with a 422 json_invalid, as the body is decoded before any check)."""
        token = settings.admin_token.get_secret_value() if settings.admin_token else None
        if not token:
            raise HTTPException(404, "admin endpoints are disabled (set REMI_ADMIN_TOKEN)")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "bad or missing bearer token", headers={"WWW-Authenticate": "Bearer"})

    warned = [0.0]

    async def stored_histories(user_ids: list[str]) -> list[list[Event]] | None:
        """None when the store is down or slow: the caller falls back, it never fails."""
        if not user_ids:
            return []
        t0 = time.perf_counter()
        try:
            return await state.history.get_many(user_ids, settings.history_max_len)
        except HistoryUnavailable as exc:
            metrics.HISTORY_ERRORS.labels("get").inc()
            now = time.monotonic()
            if now - warned[0] > 5:  # one line per 5 s during an outage, not one per request
                warned[0] = now
                log.warning("history store unavailable: serving fallbacks", extra={"error": str(exc)})
            return None
        finally:
            metrics.STAGE.labels("history").observe(time.perf_counter() - t0)

    async def recommend_many(requests: Sequence[Any]) -> list[dict[str, Any]]:
        state.active += 1
        try:
            return await _recommend_many(requests)
        finally:
            state.active -= 1

    async def _recommend_many(requests: Sequence[Any]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        engine = state.engine()  # this request finishes on this pair even if a reload swaps it
        wanted = [r.user_id for r in requests if r.use_stored_history]
        stored = await stored_histories(wanted)
        by_user = dict(zip(wanted, stored, strict=True)) if stored is not None else {}
        queries, unknown = [], []
        for r in requests:
            raw = [e.item_id for e in by_user.get(r.user_id, [])] if r.use_stored_history else []
            if r.history:
                raw += [str(item) for item in r.history[-settings.history_max_len :]]
            known, n_unknown = engine.encode(raw[-settings.history_max_len :])
            queries.append(EngineQuery(known, r.k, r.exclude_seen, r.merge))
            unknown.append(n_unknown)
        if sum(unknown):
            metrics.UNKNOWN_ITEMS.inc(sum(unknown))
        if state.batcher is not None and len(queries) == 1:
            result, timings = await state.batcher.submit(queries[0], engine)
            results = [result]
        else:
            metrics.BATCH_SIZE.observe(len(queries))
            results, timings = await asyncio.get_running_loop().run_in_executor(
                state.executor, engine.recommend, queries
            )
        metrics.STAGE.labels("model").observe(timings.model)
        metrics.STAGE.labels("search").observe(timings.search)
        metrics.STAGE.labels("merge").observe(timings.merge)
        took = round((time.perf_counter() - t0) * 1000, 3)
        out = []
        for r, q, res, n_unknown in zip(requests, queries, results, unknown, strict=True):
            fallback = _fallback(r.use_stored_history and stored is None, res)
            if fallback:
                metrics.FALLBACKS.labels(fallback).inc()
            # A plain dict in the RecommendResponse shape, encoded once by orjson: building 50
            # pydantic Item objects and re-validating them cost ~0.1 ms a request.
            out.append(
                {
                    "user_id": r.user_id,
                    "items": [
                        {"item_id": i, "score": s, "interest": k}
                        for i, s, k in zip(res.item_ids, res.scores, res.interests, strict=True)
                    ],
                    "model_version": engine.model_version,
                    "index_version": engine.index_version,
                    "history_len": len(q.history),
                    "unknown_items": n_unknown,
                    "fallback": fallback,
                    "took_ms": took,
                }
            )
        return out

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses={503: {"description": "No model loaded yet"}, 413: TOO_LARGE_413, 422: BAD_INPUT_422},
        summary="Top-k candidates for one user",
    )
    async def recommend(body: RecommendRequest) -> Response:  # type: ignore[valid-type]
        return Response(orjson.dumps((await recommend_many([body]))[0]), media_type="application/json")

    @app.post(
        "/recommend/batch",
        response_model=BatchResponse,
        responses={503: {"description": "No model loaded yet"}, 413: TOO_LARGE_413, 422: BAD_INPUT_422},
        summary="Top-k candidates for many users at once",
    )
    async def recommend_batch(body: BatchRequest) -> Response:  # type: ignore[valid-type]
        t0 = time.perf_counter()
        results = await recommend_many(body.requests)
        took = round((time.perf_counter() - t0) * 1000, 3)
        return Response(orjson.dumps({"results": results, "took_ms": took}), media_type="application/json")

    @app.post(
        "/users/{user_id}/events",
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
    )
    async def add_events(
        user_id: UserPath,
        body: EventsRequest,  # type: ignore[valid-type]
        idempotency_key: Annotated[
            str | None,
            Header(
                min_length=1,
                max_length=256,
                description="Makes retries safe: a request repeating a key of the last "
                f"{settings.idempotency_ttl_s} s is answered as the first was and stores nothing again.",
            ),
        ] = None,
    ) -> Response:
        events = [Event(str(e.item_id), e.timestamp) for e in body.events]
        try:
            done = await state.history.append(user_id, events, idempotency_key)
        except IdempotencyConflict as exc:
            # 409, not 422: the request is valid, it conflicts with what the key already stored.
            error = {"type": "idempotency_conflict", "loc": ["header", "idempotency-key"], "msg": str(exc)}
            return Response(orjson.dumps({"detail": [error]}), 409, media_type="application/json")
        except HistoryUnavailable as exc:
            metrics.HISTORY_ERRORS.labels("append").inc()
            if exc.applied is None:  # e.g. a timeout after the command was sent: it may have run
                outcome = "outcome unknown (the events may have been stored): retry with the same Idempotency-Key"
            else:
                outcome = "events not stored: retry"
            raise HTTPException(503, f"history store unavailable ({exc.reason}), {outcome}; {exc}") from exc
        out = EventsResponse(user_id=user_id, stored=done.stored, history_len=done.history_len)
        headers = {"Idempotent-Replayed": "true"} if done.replayed else None
        return Response(orjson.dumps(out.model_dump()), media_type="application/json", headers=headers)

    @app.get(
        "/users/{user_id}/history",
        response_model=HistoryResponse,
        responses={503: {"description": "History store unavailable"}, 422: BAD_INPUT_422},
        summary="A user's stored history, oldest first",
    )
    async def get_history(user_id: UserPath) -> HistoryResponse:
        try:
            events = await state.history.get(user_id, settings.history_max_len)
        except HistoryUnavailable as exc:
            metrics.HISTORY_ERRORS.labels("get").inc()
            raise HTTPException(503, f"history store unavailable: {exc}") from exc
        known = state.versions.engine.vocabulary if state.versions.engine else frozenset[str]()
        return HistoryResponse(
            user_id=user_id,
            items=[HistoryItem(item_id=e.item_id, timestamp=e.timestamp, known=e.item_id in known) for e in events],
        )

    @app.get(
        "/users/{user_id}/interests",
        responses={503: {"description": "No model loaded, or history store unavailable"}, 422: BAD_INPUT_422},
        summary="Explain: what each interest draws on and retrieves",
    )
    async def interests(
        user_id: UserPath,
        top_n: Annotated[int, Query(ge=1, le=100, description="Candidates shown per interest.")] = 10,
    ) -> dict[str, Any]:
        engine = state.engine()
        try:
            events = await state.history.get(user_id, settings.history_max_len)
        except HistoryUnavailable as exc:
            raise HTTPException(503, f"history store unavailable: {exc}") from exc
        known, unknown = engine.encode([e.item_id for e in events])
        explained = await asyncio.get_running_loop().run_in_executor(state.executor, engine.explain, known, top_n)
        collapsed = sum(1 for i in explained if i["effective_items"] < 1.5 and len(known) > 1)
        return {
            "user_id": user_id,
            "model_version": engine.model_version,
            "index_version": engine.index_version,
            "history_len": len(known),
            "unknown_items": unknown,
            "collapsed_interests": collapsed,
            "interests": explained,
        }

    @app.get("/healthz", summary="Process alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={503: {"description": "No usable model + index pair"}},
        summary="Model, index and history store usable",
    )
    async def readyz() -> Response:
        engine = state.versions.engine
        history_status, history_error = await state.history.health()
        history_ok = history_status == "ok"
        body = {
            "status": "ready" if engine and history_ok else ("degraded" if engine else "not_ready"),
            "model": engine.model_version if engine else None,
            "index": engine.index_version if engine else None,
            "history_store": history_status,  # ok | unavailable | writes_failing
            "history_error": history_error,
            "last_reload_error": state.versions.error,
        }
        # A history outage degrades answers (fallbacks) but must not pull every replica out of
        # the load balancer at once, so only a missing model makes the replica not ready.
        return Response(orjson.dumps(body), status_code=200 if engine else 503, media_type="application/json")

    @app.get("/version", summary="What is being served")
    async def version() -> dict[str, Any]:
        engine = state.versions.engine
        if engine is None:
            return {"remi": remi.__version__, "model_version": None, "index_version": None}
        m, idx = engine.arts.manifest, engine.version.manifest
        return {
            "remi": remi.__version__,
            "model_version": m.model_version,
            "index_version": engine.index_version,
            "backbone": m.backbone,
            "dim": m.dim,
            "interests": m.interests,
            "seq_len": m.seq_len,
            "items": m.n_items,
            "index_kind": idx.kind,
            "index_params": idx.params,
            "index_recall_at_50": idx.recall_at_50,
            "model_created_at": m.created_at,
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    @app.post(
        "/admin/reload",
        responses={
            401: {"description": "Bad or missing bearer token"},
            404: {"description": "Admin disabled"},
            413: TOO_LARGE_413,
            422: BAD_INPUT_422,
        },
        summary="Load the version `current` points to now (bearer token)",
        dependencies=[Depends(require_admin)],
    )
    async def admin_reload(
        force: Annotated[StrictBool, Body(embed=True, description="Reload even the version being served.")] = False,
    ) -> dict[str, Any]:
        return await state.versions.refresh(force=force)

    return app


def _set_faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


def _fallback(history_failed: bool, result: Result) -> str | None:
    if history_failed:
        return "history_unavailable"
    return "cold_start" if result.cold_start else None
