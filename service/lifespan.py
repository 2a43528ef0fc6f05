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

from service.history import MemoryHistory
from service.state import State

log = logging.getLogger("remi.service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: State = app.state.remi
    await _seed_history(state)
    await _check_history(state)
    await _load_blocklist(state)
    await state.versions.refresh()
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
    """Before the first request: a worker that starts while Redis is down blocks nothing until it
    can read the list (its poller keeps trying), and says so loudly."""
    await state.blocklist.refresh()
    if not state.blocklist.loaded:
        log.warning(
            "blocklist not readable at start: blocking nothing until the store answers",
            extra={"error": state.blocklist.last_error},
        )


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
    """A store that is down at start does not stop the worker: it serves fallbacks, and says so loudly."""
    history_status, history_error = await state.history.health()
    if history_status != "ok":
        log.warning(
            "history store not usable at start: serving fallbacks until it is",
            extra={"history_store": history_status, "error": history_error},
        )


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
