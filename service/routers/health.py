"""Liveness, readiness, what is served, and the Prometheus metrics.

/healthz and /readyz answer without credentials (probes); /version needs a valid credential and
/metrics the `metrics` scope when REMI_AUTH_REQUIRED is set (service/auth.py)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

import remi
from service import telemetry
from service.auth import require
from service.deps import HistoryDep, StateDep, VersionsDep
from service.http_guards import SafeJsonRoute
from service.schemas import HealthResponse, ReadyResponse, VersionResponse
from service.versions import public_error

router = APIRouter(route_class=SafeJsonRoute)


@router.get("/healthz", response_model=HealthResponse, summary="Process alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "No usable model + index pair"}},
    summary="Model, index and history store usable",
)
async def readyz(versions: VersionsDep, history: HistoryDep, state: StateDep) -> Response:
    engine = versions.engine
    history_status, history_error = await history.health()
    blocklist_status, blocklist_error = state.blocklist.status()
    # Without a blocklist no answer may be given (fail closed), so that is not ready either.
    serving = engine is not None and blocklist_status != "unavailable"
    healthy = history_status == "ok" and blocklist_status == "ok"
    body = {
        "status": "ready" if serving and healthy else ("degraded" if serving else "not_ready"),
        "model": engine.model_version if engine else None,
        "index": engine.index_version if engine else None,
        "history_store": history_status,  # ok | unavailable | writes_failing
        "history_error": public_error(history_error, versions.root) if history_error else None,  # names, not paths
        "last_reload_error": versions.error,
        "blocklist": blocklist_status,  # ok | stale | unavailable
        "blocklist_error": blocklist_error,
    }
    # A history outage degrades answers (fallbacks) but must not pull every replica out of
    # the load balancer at once, so only a missing model or a missing blocklist makes the replica not ready.
    return Response(orjson.dumps(body), status_code=200 if serving else 503, media_type="application/json")


@router.get(
    "/version",
    response_model=VersionResponse,
    response_model_exclude_unset=True,
    summary="What is being served",
    dependencies=[require(None)],
)
async def version(versions: VersionsDep) -> VersionResponse:
    engine = versions.engine
    if engine is None:
        return VersionResponse(remi=remi.__version__, model_version=None, index_version=None)
    model, index = engine.arts.manifest, engine.loaded.manifest
    return VersionResponse(
        remi=remi.__version__,
        model_version=model.model_version,
        index_version=engine.index_version,
        backbone=model.backbone,
        dim=model.dim,
        interests=model.interests,
        seq_len=model.seq_len,
        items=model.n_items,
        index_kind=index.kind,
        index_params=index.params,
        index_recall_at_50=index.recall_at_50,
        model_created_at=model.created_at,
    )


@router.get("/metrics", include_in_schema=False, response_class=Response, dependencies=[require("metrics")])
async def prometheus() -> Response:
    payload, content_type = telemetry.render()
    return Response(payload, media_type=content_type)
