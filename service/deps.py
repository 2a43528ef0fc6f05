"""The dependencies routes declare: the worker's shared state and its parts, and the admin check.

All are ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool, a cost on every
request. There is deliberately no dependency that raises 503 while no model is loaded: FastAPI
runs dependencies before it validates the path, query and body, so such a dependency would
answer 503 to a request that is invalid (422) as well. Routes call :func:`serving_engine` after
validation instead.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from service.config import ServiceSettings
from service.engine import Engine
from service.history import HistoryStore
from service.state import State
from service.versions import Versions


async def get_state(request: Request) -> State:
    state: State = request.app.state.remi
    return state


StateDep = Annotated[State, Depends(get_state)]


async def get_settings(state: StateDep) -> ServiceSettings:
    return state.settings


async def get_history(state: StateDep) -> HistoryStore:
    return state.history


async def get_versions(state: StateDep) -> Versions:
    return state.versions


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
HistoryDep = Annotated[HistoryStore, Depends(get_history)]
VersionsDep = Annotated[Versions, Depends(get_versions)]


def serving_engine(versions: Versions) -> Engine:
    """The engine serving now, or 503; a request keeps the one it got even if a reload swaps it."""
    engine = versions.engine
    if engine is None:
        raise HTTPException(503, f"no model loaded: {versions.error or 'starting'}")
    return engine


async def require_admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """A dependency, so FastAPI runs it before it validates the body's fields: a caller without
    the token learns nothing about the body (only text that is not JSON at all is refused
    earlier, with a 422 json_invalid, as the body is decoded before any check)."""
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if not token:
        raise HTTPException(404, "admin endpoints are disabled (set REMI_ADMIN_TOKEN)")
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(401, "bad or missing bearer token", headers={"WWW-Authenticate": "Bearer"})
