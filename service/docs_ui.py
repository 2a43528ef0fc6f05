"""/docs and /redoc served from a packaged copy of Swagger UI and ReDoc, never from a CDN.

Why: FastAPI's default pages load their JavaScript from a CDN, so on an offline or air-gapped
host /docs was a blank page. The ``fastapi-offline`` package ships the upstream Swagger UI 5 and
ReDoc bundles (Swagger UI 4, as in ``swagger-ui-bundle``, cannot render FastAPI's OpenAPI 3.1);
only its static files are used here, mounted at :data:`ASSETS`. Swagger UI's online validator
is turned off for the same reason (it fetches a badge from validator.swagger.io).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.params import Depends
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import Authenticator

ASSETS = "/docs-assets"


def mount_offline_docs(app: FastAPI, guard: Depends, openapi_url: str = "/openapi.json") -> None:
    """Adds /openapi.json, /docs, /redoc and the asset mount, each behind ``guard`` (service/auth.py);
    the app must be built with docs_url=None, redoc_url=None, openapi_url=None."""
    assets = StaticFiles(packages=[("fastapi_offline", "static")])
    app.mount(ASSETS, _Guarded(assets, app), name="docs-assets")
    title = f"{app.title} - API docs"

    @app.get(openapi_url, include_in_schema=False, dependencies=[guard])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[guard])
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            # Swagger UI otherwise loads a badge from validator.swagger.io when the page is opened
            # under a host name other than localhost: a request off the host, blocked offline.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False, dependencies=[guard])
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )


class _Guarded:
    """The asset mount behind the same check as the pages (a mount has no dependencies)."""

    def __init__(self, inner: ASGIApp, app: FastAPI) -> None:
        self.inner, self.app = inner, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth: Authenticator = self.app.state.auth
        if scope["type"] == "http":
            auth.check_asgi(None, scope["headers"])  # its HTTPException is rendered by the app's handler
        await self.inner(scope, receive, send)
