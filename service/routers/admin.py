"""Operator endpoints behind a bearer token (REMI_ADMIN_TOKEN; unset = 404): reload, and the live blocklist."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query

from service.blocklist import BlocklistUnavailable, Change
from service.deps import StateDep, VersionsDep, require_admin
from service.http_guards import SafeJsonRoute
from service.schemas import (
    BAD_INPUT_422,
    BLOCKED_PAGE_MAX,
    JSON_INT_MAX,
    TOO_LARGE_413,
    BlockedItem,
    BlockedResponse,
    BlockRequest,
    BlockResponse,
    ReloadRequest,
    ReloadResponse,
)

router = APIRouter(route_class=SafeJsonRoute, dependencies=[Depends(require_admin)])
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Bad or missing bearer token"},
    404: {"description": "Admin disabled (REMI_ADMIN_TOKEN unset)"},
}
STORE_503: dict[int | str, dict[str, Any]] = {
    503: {"description": "Blocklist store (Redis) unavailable: the change may not be stored; retry (it is idempotent)"}
}


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    response_model_exclude_unset=True,
    responses={**ADMIN_ERRORS, 413: TOO_LARGE_413, 422: BAD_INPUT_422},
    summary="Load the version `current` points to now (bearer token)",
)
async def admin_reload(versions: VersionsDep, body: Annotated[ReloadRequest | None, Body()] = None) -> dict[str, Any]:
    # A model, not an embedded field: unknown keys are refused (a few reported), not decoded and ignored.
    return await versions.refresh(force=body is not None and body.force)


@router.post(
    "/admin/items/block",
    response_model=BlockResponse,
    responses={**ADMIN_ERRORS, **STORE_503, 413: TOO_LARGE_413, 422: BAD_INPUT_422},
    summary="Block items: no answer contains them from about a second on, in every worker (bearer token)",
)
async def block_items(body: BlockRequest, state: StateDep) -> BlockResponse:
    return await _change(state, "block", body)


@router.post(
    "/admin/items/unblock",
    response_model=BlockResponse,
    responses={**ADMIN_ERRORS, **STORE_503, 413: TOO_LARGE_413, 422: BAD_INPUT_422},
    summary="Unblock items: they may be answered again from about a second on (bearer token)",
)
async def unblock_items(body: BlockRequest, state: StateDep) -> BlockResponse:
    return await _change(state, "unblock", body)


async def _change(state: StateDep, op: str, body: BlockRequest) -> BlockResponse:
    """Writes the change (idempotent, so a retry after a 503 is always safe), then applies it in
    this worker at once; the other workers pick it up at their next poll."""
    ids = sorted({str(item) for item in body.item_ids})
    store = state.blocklist.store
    try:
        change: Change = await (store.block(ids) if op == "block" else store.unblock(ids))
    except BlocklistUnavailable as exc:
        raise HTTPException(503, f"blocklist store unavailable ({exc}): the change may not be stored, retry") from exc
    await state.blocklist.refresh()
    return BlockResponse(changed=change.changed, total=change.total, version=change.version)


@router.get(
    "/admin/items/blocked",
    response_model=BlockedResponse,
    responses={**ADMIN_ERRORS, 503: {"description": "Blocklist store (Redis) unavailable"}, 422: BAD_INPUT_422},
    summary="The blocked ids, sorted, one page at a time (bearer token)",
)
async def blocked_items(
    state: StateDep,
    offset: Annotated[int, Query(ge=0, le=JSON_INT_MAX, description="Ids to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=BLOCKED_PAGE_MAX, description="Ids per page.")] = 100,
) -> BlockedResponse:
    try:
        snapshot = await state.blocklist.store.snapshot()
    except BlocklistUnavailable as exc:
        raise HTTPException(503, f"blocklist store unavailable: {exc}") from exc
    page = sorted(snapshot.items)[offset : offset + limit]
    engine = state.versions.engine
    known = [engine is not None and item in engine.vocabulary for item in page]
    return BlockedResponse(
        items=[BlockedItem(item_id=item, known=k) for item, k in zip(page, known, strict=True)],
        total=len(snapshot.items),
        offset=offset,
        limit=limit,
        version=snapshot.version,
        applied_version=state.blocklist.version,
    )
