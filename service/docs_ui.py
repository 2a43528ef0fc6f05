"""/docs and /redoc served from a packaged copy of Swagger UI and ReDoc, never from a CDN.

Why: FastAPI's default pages load their JavaScript from a CDN, so on an offline or air-gapped
host /docs was a blank page. The ``fastapi-offline`` package ships the upstream Swagger UI 5 and
ReDoc bundles (Swagger UI 4, as in ``swagger-ui-bundle``, cannot render FastAPI's OpenAPI 3.1);
only its static files are used here, mounted at :data:`ASSETS`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def mount_offline_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    """Adds /docs, /redoc and the asset mount; the app must be built with docs_url=None, redoc_url=None."""
    app.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")
    title = f"{app.title} - API docs"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
