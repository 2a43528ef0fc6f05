"""Which model + index pair serves, and hot reload when the index root's ``current`` moves.

A new version is loaded completely (hash-checked files, ONNX session, FAISS index, pairing
check), warmed up, and only then swapped in by replacing one reference; requests that already
hold the old Engine finish on it. A broken version is refused, remembered (so polling does not
retry it every few seconds), logged, counted and shown in /readyz, and the old one keeps serving.

A worker with nothing loaded yet (start-up, or a restart after a crash or an OOM kill) whose
``current`` is refused falls back to the last good version on disk instead of answering 503
beside siblings that answer 200: first the version ``current`` named before its last flip
(``INDEX_ROOT/previous``, what the siblings still serve), then every other complete version,
newest first; the first that loads completely serves. The refusal stays in /readyz
(``last_reload_error``) until ``current`` names a version this worker serves or loads.

With ``REMI_BACKEND=milvus`` the pointer is the Milvus alias instead of ``current``
(retrieval/milvus.py, :class:`~retrieval.milvus.MilvusServing`): polled the same way, a version
loads as its folder's model plus a retriever over its collection, and a worker with nothing
loaded falls back to the root's other Milvus versions, newest first.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remi.contract import CURRENT, VERSIONS, read_artifact_manifest
from remi.errors import RemiError
from retrieval.engine import Engine
from retrieval.retriever import Retriever, ServedVersion
from retrieval.store import list_versions, load_version, read_current, read_previous, version_dir
from service import telemetry
from service.config import ServiceSettings

if TYPE_CHECKING:
    from retrieval.milvus import MilvusServing

log = logging.getLogger("remi.service")

NO_CURRENT = ""  # the "refused version" while INDEX_ROOT/current is missing or empty


ERROR_MAX_CHARS = 1000  # a reload error in /readyz: the version, the file and the reason, not a dump
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\",;:()\[\]]+/)*([^\s/'\",;:()\[\]]+)")


def public_error(message: str, root: Path) -> str:
    """A reload error as HTTP answers show it (/readyz, /admin/reload): names, never paths.

    The loaders' errors name files by path for the operator's log; an answer names the version
    and the file inside it (``<version>/index.faiss: 0 bytes, ...``), any other path (the root,
    an artifact folder, a link's target) by its last component only, and is capped in length.
    """
    for base in sorted({str(root), str(root.absolute()), str(root.resolve())}, key=len, reverse=True):
        inside = re.compile(rf"(?<![\w.~/-]){re.escape(base.rstrip('/'))}(/{VERSIONS}/|/|(?=[\s:'\",;)\]]|$))")
        message = inside.sub(lambda match: "" if match.group(1) else "INDEX_ROOT", message)
    message = _ABSOLUTE_PATH.sub(lambda match: match.group(1), message)
    return message if len(message) <= ERROR_MAX_CHARS else message[: ERROR_MAX_CHARS - 3] + "..."


def fallback_order(root: Path, refused: str | None) -> list[str]:
    """Where a worker with no model looks when ``current`` is refused (see the module docstring)."""
    versions = list_versions(root)
    try:
        previous = read_previous(root)
    except (RemiError, OSError) as exc:  # a link or an oversized file: refused, the other versions remain
        log.warning("previous refused", extra={"error": str(exc)})
        previous = None
    order = [previous] if previous in versions else []
    order += [name for name in reversed(versions) if name not in order]
    return [name for name in order if name != refused]


def release_free_memory() -> None:
    """Hands the heap's free pages back to the kernel (glibc ``malloc_trim``; a no-op elsewhere).

    Loading a version makes large short-lived buffers (the item id strings before they are
    packed, the hash check's reads, onnxruntime's graph); glibc keeps what they freed inside the
    process, where it counts as that worker's private memory. Measured at 1M items: 62 MB kept
    after packing the ids, 16 MB after a trim.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Versions:
    """Holds the serving Engine and swaps it on reload."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.root = Path(settings.index_root)
        self.engine: Engine | None = None
        self._error: str | None = None  # why the last load failed (None after a success); see `error`
        self.failed: str | None = None  # version name that failed, not retried by polling
        self.loaded_at: float | None = None
        self._lock = asyncio.Lock()
        self._trims: set[asyncio.Future[None]] = set()  # trims under way (a task must be referenced to run)
        self.milvus: MilvusServing | None = None  # the alias and collections of REMI_BACKEND=milvus
        if settings.backend == "milvus":
            from retrieval.milvus import MilvusServing  # pymilvus is an extra: imported only when chosen

            uri, alias, timeout = str(settings.milvus_uri), settings.milvus_alias, settings.milvus_timeout_s
            self.milvus = MilvusServing(self.root, uri, alias, settings.milvus_credential(), timeout)

    @property
    def error(self) -> str | None:
        """Why the last load failed, as /readyz shows it (None after a success)."""
        return self._error

    @error.setter
    def error(self, message: str | None) -> None:
        # Every error this object holds reaches HTTP answers: stored without paths (public_error).
        self._error = None if message is None else public_error(message, self.root)

    def no_version_error(self) -> str:
        """Why there is nothing to serve: no ``current``, and why ``--artifacts`` gave none.

        ``remi serve --artifacts`` publishes the first version before the workers start (the
        service only reads versions); when that failed, the artifact check says why in /readyz.
        """
        if self.milvus is not None:
            return f"Milvus alias {self.milvus.alias} names no collection (run `remi reindex --backend milvus`)"
        error = f"{self.root}: no current index version (run `remi reindex`)"
        if self.settings.artifacts is None:
            return error
        try:
            read_artifact_manifest(self.settings.artifacts)
        except (RemiError, OSError) as exc:
            return f"could not build the first index version: {exc}"
        return f"{error}; the artifacts {self.settings.artifacts} were not published"

    def _load(self, name: str) -> Engine:
        if self.milvus is not None:
            version, retriever = self.milvus.load(name, threads=self.settings.onnx_threads, mmap=self.settings.mmap)
            return self._engine(version, retriever)
        return self._engine(
            load_version(version_dir(self.root, name), threads=self.settings.onnx_threads, mmap=self.settings.mmap)
        )

    def _engine(self, version: ServedVersion, retriever: Retriever | None = None) -> Engine:
        engine = Engine(
            version,
            faiss_threads=self.settings.faiss_threads,
            dedup_cosine=self.settings.interest_dedup_cosine,
            min_weight=self.settings.interest_min_weight,
            filter_exact_max_rows=self.settings.filter_exact_max_rows,
            filter_slot_cost=self.settings.filter_graph_slot_cost,
            filter_cache_mb=self.settings.filter_cache_mb,
            retriever=retriever,
        )
        engine.warm_up()
        release_free_memory()
        return engine

    def _fall_back(self, refused: str | None) -> tuple[list[str], tuple[str, Engine] | None]:
        """The candidates of :func:`fallback_order`, and the first that loads completely (or None)."""
        if self.milvus is not None:
            candidates = [name for name in reversed(self.milvus.versions()) if name != refused]
        else:
            candidates = fallback_order(self.root, refused)
        for name in candidates:
            try:
                return candidates, (name, self._load(name))
            except (RemiError, OSError, RuntimeError, ValueError) as exc:
                log.warning("fallback version refused", extra={"version": name, "error": str(exc)})
        return candidates, None

    def _install(self, engine: Engine) -> str | None:
        replaced, previous = self.engine, self.serving
        self.engine, self.loaded_at = engine, time.time()
        telemetry.set_version(engine.model_version, engine.index_version)
        if replaced is not None:
            self._trim_when_freed(replaced)
        return previous

    def _trim_when_freed(self, replaced: Engine) -> None:
        """Trims the heap once ``replaced`` is really freed: when the last request in flight holding it
        ends, not at the swap (nor at the end of _load, while it was still served).

        glibc keeps freed heap inside the process unless ``malloc_trim`` runs after the free: under
        load, each worker's RSS stayed ~37 MiB (one 20k-item version) higher after its first reload,
        for good; trimmed after the free, it came back (benchmarks/results/soak_short.md).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script): trim where the last reference goes
            weakref.finalize(replaced, release_free_memory)
            return

        def freed() -> None:  # in whichever thread dropped the last reference: the trim runs off the loop
            try:
                loop.call_soon_threadsafe(self._trim_soon)
            except RuntimeError:  # the loop is closed: the process is exiting
                pass

        weakref.finalize(replaced, freed)

    def _trim_soon(self) -> None:
        trim = asyncio.ensure_future(asyncio.to_thread(release_free_memory))
        self._trims.add(trim)
        trim.add_done_callback(self._trims.discard)

    async def _refuse(self, name: str | None, error: str) -> dict[str, Any]:
        """Remembers the refusal; with nothing loaded yet, serves the last good version on disk."""
        self.failed, self.error = name, error
        if self.engine is not None:
            return {"changed": False, "version": self.serving, "error": self.error}
        candidates, found = await asyncio.to_thread(self._fall_back, name)
        if found is None:
            if candidates:
                self.error = f"{error}; no other version under {VERSIONS}/ loads either"
            return {"changed": False, "version": None, "error": self.error}
        fallback, engine = found
        self._install(engine)
        self.error = f"{error}; serving {fallback} (the last good version on disk) instead"
        telemetry.RELOADS.labels("fallback").inc()
        log.warning("serving a fallback version", extra={"version": fallback, "refused": name})
        return {"changed": True, "version": fallback, "previous": None, "error": self.error}

    async def refresh(self, force: bool = False) -> dict[str, Any]:
        """Loads ``current`` if it changed (or ``force``); returns what happened."""
        async with self._lock:
            try:
                name = await asyncio.to_thread(self.read_pointer)
            except (RemiError, OSError) as exc:  # a link, a FIFO, an oversized file: refused by name
                log.error("cannot read current", extra={"error": str(exc)})
                name, self.error = None, str(exc) if isinstance(exc, RemiError) else f"cannot read {CURRENT}: {exc}"
            if name is None:
                if self.engine is None and self.failed != NO_CURRENT:
                    error = self.error if self.error else await asyncio.to_thread(self.no_version_error)
                    return await self._refuse(NO_CURRENT, error)
                return {"changed": False, "version": self.serving, "error": self.error}
            if name == self.serving and not force:
                if self.error:  # `current` is back on what this worker serves (a rollback): resolved
                    log.info("reload error resolved", extra={"version": name, "error": self.error})
                    self.failed = self.error = None
                return {"changed": False, "version": self.serving, "error": None}
            if not force and name == self.failed:
                return {"changed": False, "version": self.serving, "error": self.error}
            t0 = time.perf_counter()
            try:
                engine = await asyncio.to_thread(self._load, name)
            except (RemiError, OSError, RuntimeError, ValueError) as exc:
                telemetry.RELOADS.labels("refused").inc()
                log.error("reload refused", extra={"version": name, "error": str(exc), "serving": self.serving})
                return await self._refuse(name, f"version {name} refused: {exc}")
            previous = self._install(engine)
            self.failed, self.error = None, None
            telemetry.RELOADS.labels("loaded").inc()
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

    def read_pointer(self) -> str | None:
        """The version to serve: ``current``'s, or the Milvus alias's (REMI_BACKEND=milvus)."""
        return self.milvus.current() if self.milvus is not None else read_current(self.root)

    @property
    def refused(self) -> str | None:
        """The version name refused last and not yet resolved (for /readyz), or None."""
        return self.failed or None

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
