"""The FastAPI application: ``create_app`` wires settings, state, guards, routers and docs.

Failure policy: a missing or broken model/index answers 503 on the recommendation routes
(and /readyz) but the process stays up and keeps polling for a good version; a history-store
outage never fails /recommend (it falls back to the request's history or popularity and says
so in ``fallback``); writes that cannot be stored answer 503 so the client knows to retry.

Where things are: routes in service/routers/ (one module per resource), their bodies in
service/schemas.py, the dependencies they declare in service/deps.py, start-up and shutdown in
service/lifespan.py, the recommendation flow in service/recommender.py.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

import remi
from retrieval.retriever import RetrieverUnavailable
from service import fast_recommend, limits, telemetry
from service.auth import Authenticator, require
from service.bulk_budget import BulkBodyBudget
from service.config import ServiceSettings
from service.credentials_first import CredentialsFirst
from service.docs_ui import mount_offline_docs
from service.filter_schema import with_attributes
from service.http_guards import BodyLimitMiddleware, SafeJsonRoute, validation_error_handler
from service.lifespan import lifespan
from service.routers import admin, health, recommend, users
from service.state import State


async def retriever_unavailable_handler(request: Request, exc: Exception) -> Response:
    """503 + Retry-After for a search the index backend did not answer (retrieval/retriever.py)."""
    detail = f"index backend unavailable: {exc}; retry"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


class RemiAPI(FastAPI):
    """A FastAPI app whose requests and OpenAPI document see its own request limits (service/limits.py)."""

    def __init__(self, request_limits: limits.RequestLimits, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request_limits = request_limits
        self.fast_path_max_body: int | None = None  # set by create_app when REMI_FAST_PATH is on
        self.auth: Authenticator | None = None  # set by create_app
        self.credentials_first: CredentialsFirst | None = None  # set by create_app when auth is required
        self.bulk_budget: BulkBodyBudget | None = None  # set by create_app unless REMI_BULK_BODY_BYTES_PER_S=0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # First what must happen before any body is read, for the fast path and the full app alike:
        # a 401 without a valid credential (service/credentials_first.py), then the bulk-body budget
        # (service/bulk_budget.py), which thus only clients with a valid credential can spend.
        if scope["type"] == "http":
            if self.credentials_first is not None and await self.credentials_first.answered(scope, receive, send):
                return
            if self.bulk_budget is not None:
                await self.bulk_budget(self._dispatch, scope, receive, send)
                return
        await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        with limits.applied(self.request_limits):
            length = None
            if self.fast_path_max_body is not None:
                length = fast_recommend.eligible(scope, self.fast_path_max_body)
                if (
                    length is not None
                    and self.auth is not None
                    and not self.auth.allows_asgi("recommend", scope["headers"])
                ):
                    length = None  # the full app answers it: 401 / 403 (service/auth.py)
            if length is None:
                await super().__call__(scope, receive, send)
            else:  # plain POST /recommend: service/fast_recommend.py
                full_app = partial(FastAPI.__call__, self)
                await fast_recommend.handle(full_app, self.state.remi, scope, receive, send, length)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document (built once) with the ``filter`` schemas of the version served now."""
        with limits.applied(self.request_limits):
            document = super().openapi()
            engine = self.state.remi.versions.engine if hasattr(self.state, "remi") else None
            document = with_attributes(document, engine.attributes if engine is not None else None)
            return self.auth.document(document) if self.auth is not None else document


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """App factory (uvicorn --factory); settings default to the REMI_* environment."""
    settings = settings or ServiceSettings()
    app = RemiAPI(
        limits.RequestLimits.of(settings),
        title="remi-match",
        version=remi.__version__,
        description="Multi-interest candidate matching: K interest vectors per user, one FAISS search each.",
        lifespan=lifespan,
        docs_url=None,  # served from packaged assets below, not a CDN
        redoc_url=None,
        openapi_url=None,  # served by mount_offline_docs, behind the same credentials as the docs
    )
    app.state.remi = State(settings)
    app.state.auth = app.auth = Authenticator(settings)
    if settings.auth_required:
        app.credentials_first = CredentialsFirst(app, app.auth)
    app.bulk_budget = BulkBodyBudget.of(settings)
    if settings.fast_path:
        app.fast_path_max_body = settings.max_body_bytes
    # Every route decodes JSON strictly and every 422 renders safely (service/http_guards.py).
    app.router.route_class = SafeJsonRoute
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    # A search backend that does not answer (Milvus down) is a 503 to retry, never a 500.
    app.add_exception_handler(RetrieverUnavailable, retriever_unavailable_handler)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(telemetry.MetricsMiddleware)  # outermost: 413s are counted too
    if settings.docs_enabled:
        mount_offline_docs(app, require(None))
    # Each route's scope is declared on the route (users, health, admin) or here for a whole router.
    app.include_router(recommend.router, dependencies=[require("recommend")])
    for router in (users.router, health.router, admin.router):
        app.include_router(router)
    return app
