"""Which model + index pair serves, and hot reload when the index root's ``current`` moves.

A new version is loaded completely (hash-checked files, ONNX session, FAISS index, pairing
check), warmed up, and only then swapped in by replacing one reference; requests that already
hold the old Engine finish on it. A broken version is refused, remembered (so polling does not
retry it every few seconds), logged, counted and shown in /readyz, and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from index.reindex import load_version, reindex
from remi.contract import read_current, version_dir
from remi.errors import RemiError
from service import metrics
from service.config import ServiceSettings
from service.engine import Engine

log = logging.getLogger("remi.service")


class Versions:
    """Holds the serving Engine and swaps it on reload."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.root = Path(settings.index_root)
        self.engine: Engine | None = None
        self.error: str | None = None  # why the last load failed (None after a success)
        self.failed: str | None = None  # version name that failed, not retried by polling
        self.loaded_at: float | None = None
        self._lock = asyncio.Lock()

    def bootstrap(self) -> None:
        """First index version from the artifacts when the root has none (the quick start path)."""
        if read_current(self.root) is None and self.settings.artifacts is not None:
            log.info("no index version yet: building one", extra={"artifacts": str(self.settings.artifacts)})
            reindex(self.settings.artifacts, self.root)

    def _load(self, name: str) -> Engine:
        version = load_version(version_dir(self.root, name), threads=self.settings.onnx_threads)
        engine = Engine(version, faiss_threads=self.settings.faiss_threads)
        engine.warm_up()
        return engine

    async def refresh(self, force: bool = False) -> dict[str, Any]:
        """Loads ``current`` if it changed (or ``force``); returns what happened."""
        async with self._lock:
            try:
                name = await asyncio.to_thread(read_current, self.root)
            except OSError as exc:
                name, self.error = None, f"cannot read {self.root}/current: {exc}"
            if name is None:
                if self.engine is None:
                    self.error = self.error or f"{self.root}: no current index version (run `remi reindex`)"
                return {"changed": False, "version": self.serving, "error": self.error}
            if not force and (name == self.serving or name == self.failed):
                return {"changed": False, "version": self.serving, "error": self.error}
            t0 = time.perf_counter()
            try:
                engine = await asyncio.to_thread(self._load, name)
            except (RemiError, OSError, RuntimeError, ValueError) as exc:
                self.failed, self.error = name, f"version {name} refused: {exc}"
                metrics.RELOADS.labels("refused").inc()
                log.error("reload refused", extra={"version": name, "error": str(exc), "serving": self.serving})
                return {"changed": False, "version": self.serving, "error": self.error}
            previous, self.engine = self.serving, engine
            self.failed, self.error, self.loaded_at = None, None, time.time()
            metrics.RELOADS.labels("loaded").inc()
            metrics.set_version(engine.model_version, engine.index_version)
            log.info(
                "serving version",
                extra={
                    "version": name,
                    "previous": previous,
                    "model_version": engine.model_version,
                    "seconds": round(time.perf_counter() - t0, 3),
                },
            )
            return {"changed": True, "version": name, "previous": previous, "error": None}

    @property
    def serving(self) -> str | None:
        return self.engine.index_version if self.engine else None

    async def poll_forever(self) -> None:
        """Follows ``current``; each worker process polls on its own (cheap: one small file read)."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.refresh()
            except Exception:  # never let the poller die
                log.exception("reload poll failed")
