"""The dependencies routes declare: the worker's shared state and its parts, and the admin check.

All are ``async def``: FastAPI runs a plain ``def`` dependency in a thread pool, a cost on every
request. There is deliberately no dependency that raises 503 while no model is loaded: FastAPI
runs dependencies before it validates the path, query and body, so such a dependency would
answer 503 to a request that is invalid (422) as well. Routes call :func:`serving_engine` after
validation instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from retrieval.engine import Engine
from service.auth import ADMIN, scope_check
from service.config import ServiceSettings
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


require_admin = scope_check(ADMIN)
"""The /admin routes' check (service/auth.py): the ``admin`` scope, from REMI_ADMIN_TOKEN, an API
key or a JWT, whether or not REMI_AUTH_REQUIRED is set; 404 when no credential source is configured."""
