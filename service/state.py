"""What the routes of one worker process share: settings, the serving versions, the history
store, the live blocklist, the compute pool and the micro-batcher. Built by the app factory, started and stopped by
the lifespan (service/lifespan.py), handed to routes by dependencies (service/deps.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from service.batcher import MicroBatcher
from service.blocklist import make_live_blocklist
from service.config import ServiceSettings
from service.history import HistoryStore, make_history_store
from service.versions import Versions

OUTAGE_LOG_EVERY_S = 5.0  # one warning per interval during a history-store outage, not one per request


class State:
    """Everything the routes share; one per worker process."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.versions = Versions(settings)
        self.history = history_store(settings)
        self.blocklist = make_live_blocklist(settings)
        # OpenMP's thread count is per calling thread: set it in each compute thread, where FAISS runs.
        self.executor = ThreadPoolExecutor(
            settings.compute_threads,
            thread_name_prefix="remi-compute",
            initializer=_set_faiss_threads,
            initargs=(settings.faiss_threads,),
        )
        self.batcher: MicroBatcher | None = None
        self.active = 0  # recommendation requests in progress (tells the batcher whether to wait)
        self._outage_logged_at = float("-inf")

    def start_batcher(self) -> None:
        """Micro-batching (REMI_MICROBATCH), once the event loop runs."""
        if self.settings.microbatch:
            self.batcher = MicroBatcher(
                self.executor,
                self.settings.microbatch_wait_ms / 1000,
                self.settings.microbatch_max,
                parallel=self.settings.compute_threads,
                active=lambda: self.active,
            )
            self.batcher.start()

    def should_log_outage(self) -> bool:
        """True at most once per OUTAGE_LOG_EVERY_S: an outage is logged, not every request in it."""
        now = time.monotonic()
        if now - self._outage_logged_at <= OUTAGE_LOG_EVERY_S:
            return False
        self._outage_logged_at = now
        return True

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        await self.history.close()
        await self.blocklist.save(now=True)  # the disk copy a restart without the store starts from
        await self.blocklist.store.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def history_store(settings: ServiceSettings) -> HistoryStore:
    """Redis when REMI_REDIS_URL is set, else the embedded in-process store."""
    return make_history_store(
        settings.redis_url,
        prefix=settings.redis_prefix,
        max_len=settings.history_max_len,
        ttl_seconds=settings.history_ttl_seconds,
        timeout_s=settings.redis_timeout_ms / 1000,
        max_connections=settings.redis_max_connections,
        retry_after_s=settings.redis_breaker_open_s,
        breaker_window_s=settings.redis_breaker_window_s,
        breaker_min_failures=settings.redis_breaker_min_failures,
        breaker_failure_rate=settings.redis_breaker_failure_rate,
        idempotency_ttl_s=settings.idempotency_ttl_s,
        access=settings.redis_access(),
    )


def _set_faiss_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)
