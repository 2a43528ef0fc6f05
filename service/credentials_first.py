"""Credentials before bodies: a request without a valid credential gets its 401 before its body is read.

Why: FastAPI reads and decodes a route's JSON body before it runs the route's dependencies, so
with REMI_AUTH_REQUIRED a client without any credential could still make every worker read and
decode ~1 MiB bodies (5-80 ms each, benchmarks/results/worst_bodies.md) just to be told 401 --
and, as the bulk-body budget runs after this check (service/bulk_budget.py), spend the budget of
the clients that have one.

Here, before the app (and the /recommend fast path) sees it, a request that carries a body and
no valid credential at all (none, or one no source accepts) is matched against the app's routes;
when the route it would reach checks credentials, the 401 is answered at once by
:meth:`Authenticator.check` and the app's own HTTPException handler: the same status, body and
``WWW-Authenticate`` header as the route gives, and counted in remi_requests_total under the
route's template as the metrics middleware would. The body is never read (uvicorn discards it).

Each route's scope is read from its own declaration: the bearer security requirement that
``service.auth.require`` puts among its dependencies (what the OpenAPI document is built from).
A request with a valid credential, or without a body, goes on untouched; its scope (403) is
checked by the route as before. Only when auth is required: otherwise only /admin checks
credentials, and its bodies are small (the bulk budget covers them).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from service import telemetry
from service.auth import Authenticator, bearer_credential

_PUBLIC = object()  # a route that checks no credential


@dataclass(frozen=True)
class _Route:
    path_regex: re.Pattern[str]
    path_format: str
    methods: frozenset[str] | None  # None: every method (a mount)
    scope: object  # the scope it checks (str or None: any valid credential), or _PUBLIC


def _routes_of(app: FastAPI) -> Iterator[Any]:
    """The app's routes in the router's order, included routers expanded (FastAPI 0.16x keeps an
    included router as one entry that lists its effective routes on demand)."""
    for route in app.router.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is not None:
            yield from contexts()
        else:
            yield route


def _declared_scope(dependant: Dependant | None) -> object:
    """The scope of the bearer requirement among a route's dependencies (service.auth.require), or _PUBLIC."""
    pending = list(dependant.dependencies) if dependant is not None else []
    while pending:
        sub = pending.pop()
        if isinstance(sub.call, HTTPBearer):
            scopes = sub.own_oauth_scopes or []
            return scopes[0] if scopes else None
        pending.extend(sub.dependencies)
    return _PUBLIC


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            return True
    return False


class CredentialsFirst:
    """The check of one app (module docstring); its route table is read at the first request."""

    def __init__(self, app: FastAPI, auth: Authenticator) -> None:
        self.app, self.auth = app, auth
        self._routes: list[_Route] | None = None

    def routes(self) -> list[_Route]:
        if self._routes is None:
            table = []
            for route in _routes_of(self.app):
                regex = getattr(route, "path_regex", None)
                if regex is None:
                    continue
                methods = getattr(route, "methods", None)
                fmt = str(getattr(route, "path_format", None) or getattr(route, "path", ""))
                scope = _declared_scope(getattr(route, "dependant", None))
                table.append(_Route(regex, fmt, frozenset(methods) if methods else None, scope))
            self._routes = table
        return self._routes

    def route_of(self, scope: Scope) -> _Route | None:
        """The route the router would pick: the first one matching both path and method."""
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        method = scope["method"]
        for route in self.routes():
            if route.path_regex.match(path) and (route.methods is None or method in route.methods):
                return route
        return None

    async def answered(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answers a bodied request without a valid credential to a route that checks credentials
        (True); else does nothing (False)."""
        if not _has_body(scope):
            return False
        credential = bearer_credential(scope["headers"])
        if credential is not None and self.auth.authenticate(credential) is not None:
            return False
        route = self.route_of(scope)
        if route is None or route.scope is _PUBLIC:
            return False
        needed = route.scope if isinstance(route.scope, str) else None
        start = time.perf_counter()
        try:
            self.auth.check(needed, credential)
        except HTTPException as exc:
            rendered = self.app.exception_handlers[HTTPException](Request(scope, receive), exc)
            response = await rendered if inspect.isawaitable(rendered) else rendered
            await response(scope, receive, send)
            telemetry.REQUESTS.labels(route.path_format, scope["method"], str(exc.status_code)).inc()
            telemetry.LATENCY.labels(route.path_format).observe(time.perf_counter() - start)
            return True
        return False  # this configuration does not check this route's scope (/metrics when public)
