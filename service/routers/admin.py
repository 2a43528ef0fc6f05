"""Operator endpoints behind a bearer token (REMI_ADMIN_TOKEN; unset = 404)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import StrictBool

from service.deps import VersionsDep, require_admin
from service.http_guards import SafeJsonRoute
from service.schemas import BAD_INPUT_422, TOO_LARGE_413, ReloadResponse

router = APIRouter(route_class=SafeJsonRoute, dependencies=[Depends(require_admin)])


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    response_model_exclude_unset=True,
    responses={
        401: {"description": "Bad or missing bearer token"},
        404: {"description": "Admin disabled"},
        413: TOO_LARGE_413,
        422: BAD_INPUT_422,
    },
    summary="Load the version `current` points to now (bearer token)",
)
async def admin_reload(
    versions: VersionsDep,
    force: Annotated[StrictBool, Body(embed=True, description="Reload even the version being served.")] = False,
) -> dict[str, Any]:
    return await versions.refresh(force=force)
