"""Prometheus metrics of the service and the ASGI middleware that records them per route.

A plain ASGI middleware instead of Starlette's BaseHTTPMiddleware: it adds no task or stream
wrapping per request, which matters at thousands of requests per second. Routes are labelled
by their template (``/users/{user_id}/events``), never the raw path, so ids cannot explode the
label cardinality. With several workers (``remi serve --workers N``) the samples go through
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor), so a
scrape of any worker reports them all.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("remi_requests_total", "HTTP requests by route and status code.", ["route", "method", "status"])
LATENCY = Histogram("remi_request_seconds", "HTTP request latency by route.", ["route"], buckets=LATENCY_BUCKETS)
STAGE = Histogram(
    "remi_stage_seconds",
    "Time per candidate-generation stage (history, model, search, merge) per request or batch.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
FALLBACKS = Counter("remi_fallbacks_total", "Responses served from a fallback.", ["reason"])
UNKNOWN_ITEMS = Counter("remi_unknown_items_total", "History item ids the model does not know (skipped).")
HISTORY_ERRORS = Counter("remi_history_errors_total", "History store calls that failed or timed out.", ["op"])
RELOADS = Counter("remi_reloads_total", "Model + index reload attempts by result.", ["result"])
CONNECTIONS_CLOSED = Counter(
    "remi_connections_closed_total",
    "Client connections the server refused or closed itself, by reason (service/transport.py).",
    ["reason"],
)
BULK_BODIES_REFUSED = Counter(
    "remi_bulk_bodies_refused_total",
    "Large request bodies answered 503 because the worker's bulk-body budget (REMI_BULK_BODY_BYTES_PER_S) was "
    "spent: declared (by Content-Length, before reading) or streamed (chunked, mid-body); service/bulk_budget.py.",
    ["when"],
)
BULK_BODY_BYTES = Counter(
    "remi_bulk_body_bytes_total", "Bytes of large request bodies admitted against the bulk-body budget."
)
BATCH_SIZE = Histogram("remi_batch_users", "Users per model + index call.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
VERSION = Gauge(
    "remi_version_info",
    "The model + index pair being served (value 1).",
    ["model", "index"],
    multiprocess_mode="liveall",  # one series per live worker: a half-finished rollout stays visible
)
BLOCKLIST_ERRORS = Counter("remi_blocklist_errors_total", "Blocklist refreshes that could not read the store.")
BLOCKLIST_VERSION = Gauge(
    "remi_blocklist_version",
    "The blocklist version each worker applies (the store's counter; compare workers to see a change spread).",
    multiprocess_mode="liveall",
)


WORKER_HEADER = "x-remi-worker"


def worker_id() -> str:
    """Which worker process answered (its pid), sent as the X-Remi-Worker header of recommendation
    answers: lets an operator or a test tell the SO_REUSEPORT workers apart (e.g. to see a
    blocklist change reach every one)."""
    return str(os.getpid())


def render() -> tuple[bytes, str]:
    """The exposition text; merges every worker's samples in multiprocess mode."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        merge_workers: Any = MultiProcessCollector  # prometheus-client declares no types for it
        merge_workers(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


_serving: list[tuple[str, str]] = []


def set_version(model: str, index: str) -> None:
    """1 for the pair served now, 0 for the one before (multiprocess files cannot forget a series)."""
    for old in _serving:
        VERSION.labels(model=old[0], index=old[1]).set(0)
    _serving[:] = [(model, index)]
    VERSION.labels(model=model, index=index).set(1)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template and status."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # path_format: the template without convertors ("/users/{user_id}/events", not "{user_id:path}")
            label = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(label, scope["method"], str(status["code"])).inc()
            LATENCY.labels(label).observe(time.perf_counter() - start)
