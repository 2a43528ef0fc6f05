"""Start-up and shutdown of one worker: load, warm up, then serve; stop what was started.

The worker only reads: it loads the version ``INDEX_ROOT/current`` names (and follows it), it
never builds one. Publishing versions is the reindex job's work (``remi reindex``). With no
version yet the worker starts anyway, answers 503 on the model routes and /readyz, and picks
up the first version the job publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.history import MemoryHistory, RedisHistory
from service.state import State

log = logging.getLogger("remi.service")

# Redis connections a worker opens at start: about the requests one worker has in flight under load
# (wrk -c32 over 2 workers); more are opened on demand, up to REMI_REDIS_MAX_CONNECTIONS.
POOL_WARM_CONNECTIONS = 16


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: State = app.state.remi
    await _seed_history(state)
    await _check_history(state)
    await _load_blocklist(state)
    await state.versions.refresh()
    if state.versions.engine is not None and state.blocklist.loaded:  # map the list before the first request
        state.blocklist.indices(state.versions.engine.vocabulary)
    state.start_batcher()
    pollers = [asyncio.create_task(state.blocklist.poll_forever())]
    if state.settings.poll_seconds > 0:
        pollers.append(asyncio.create_task(state.versions.poll_forever()))
    _log_started(state)
    try:
        yield
    finally:
        for poller in pollers:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        await state.close()


async def _load_blocklist(state: State) -> None:
    """Before the first request: the list from the store, else the last copy kept on disk. With
    neither the worker fails closed (the recommendation routes and /readyz answer 503) until its
    poller reads the store, and says so loudly."""
    await state.blocklist.start()
    if not state.blocklist.loaded:
        log.warning(
            "blocklist not readable at start and no copy on disk: answering 503 until the store answers",
            extra={"error": state.blocklist.last_error},
        )
    await state.blocklist.save()


async def _seed_history(state: State) -> None:
    """REMI_SEED_HISTORY: a demo CSV loaded into the embedded store (Redis is loaded by `remi history load`)."""
    path = state.settings.seed_history
    if not path:
        return
    if isinstance(state.history, MemoryHistory):
        users = await asyncio.to_thread(state.history.seed_from_csv, path)
        log.info("embedded history store seeded", extra={"users": users, "path": path})
    else:
        log.warning(
            "REMI_SEED_HISTORY is ignored with a Redis history store: load it with `remi history load`",
            extra={"path": path},
        )


async def _check_history(state: State) -> None:
    """A store that is down at start does not stop the worker: it serves fallbacks, and says so loudly.
    A usable Redis gets its connection pool opened now, not by the first burst of requests."""
    history_status, history_error = await state.history.health()
    if history_status != "ok":
        log.warning(
            "history store not usable at start: serving fallbacks until it is",
            extra={"history_store": history_status, "error": history_error},
        )
    elif isinstance(state.history, RedisHistory):
        await state.history.warm_up(POOL_WARM_CONNECTIONS)


def _log_started(state: State) -> None:
    settings = state.settings
    log.info(
        "service started",
        extra={
            "version": state.versions.serving,
            "error": state.versions.error,
            "history": type(state.history).__name__,
            "onnx_threads": settings.onnx_threads,
            "faiss_threads": settings.faiss_threads,
            "compute_threads": settings.compute_threads,
            "workers": settings.workers,
            "microbatch": settings.microbatch,
        },
    )
