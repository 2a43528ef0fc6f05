"""The live blocklist: raw item ids that no answer may contain, changed at run time without a reindex.

Why it is built this way (issue 13, part 3):

* **One truth, shared and durable.** With a Redis history store the ids live in Redis, as a set
  plus a version counter under the service's key prefix (:class:`RedisBlocklist`), so every
  worker of every replica applies the same list, it survives restarts, and a reindex or a new
  model version keeps it. Without Redis (the embedded history store) it lives in the process
  (:class:`MemoryBlocklist`): per process and lost on restart, as the embedded histories are.
* **Applied within a second, off the request path.** Each worker holds a :class:`LiveBlocklist`:
  an immutable snapshot (version + ids) that a background task refreshes when the version key
  moves (one GET every ``REMI_BLOCKLIST_POLL_MS``, 200 ms by default; the whole set is read only
  when it changed). Requests never touch Redis for it: they read the snapshot, mapped once per
  (snapshot, model vocabulary) to a sorted array of item indices that goes into the engine's
  existing exclusion lists, so answers still have k items.
* **Raw ids, mapped per model version.** The store keeps raw ids, including ids the serving
  model does not know; each vocabulary maps what it knows, so an id blocked before the item
  exists is applied as soon as a version that knows it is loaded.
* **An outage never fails a request.** When Redis cannot be read the worker keeps the last list
  it read and logs the outage once (and the recovery); writes and the listing answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from remi.contract import ItemVocabulary
from service import telemetry
from service.config import ServiceSettings
from service.history import _client_for

log = logging.getLogger("remi.blocklist")

EMPTY = np.zeros(0, dtype=np.int64)
EMPTY.setflags(write=False)
# A Redis that lost its data restarts the counter, which could meet the number a worker holds:
# every worker also reads the whole list this often, whatever the version says.
FULL_READ_EVERY_S = 30.0
MIN_TIMEOUT_S = 1.0  # the set may be large; no request waits on these calls, so a longer timeout costs nothing


class BlocklistUnavailable(Exception):
    """The store could not be read or written now (Redis down or slow)."""


@dataclass(frozen=True)
class Snapshot:
    """The blocklist as one read saw it: the store's version counter and the raw ids."""

    version: int
    items: frozenset[str]


@dataclass(frozen=True)
class Change:
    """The outcome of a block or unblock call."""

    changed: int  # ids added (block) or removed (unblock)
    total: int  # ids blocked after the call
    version: int  # the store's version counter after the call


class BlocklistStore(Protocol):
    async def version(self) -> int:
        """The version counter (0 before the first write); cheap, polled by every worker."""
        ...

    async def snapshot(self) -> Snapshot:
        """The ids and the version they belong to, read together."""
        ...

    async def block(self, item_ids: Sequence[str]) -> Change: ...

    async def unblock(self, item_ids: Sequence[str]) -> Change: ...

    async def close(self) -> None: ...


def blocklist_keys(prefix: str) -> tuple[str, str]:
    """(set key, version key). One hash tag, so in Redis Cluster both live in one slot and the
    MULTI that changes the set and bumps the version stays one transaction (a prefix that holds
    its own hash tag wins, and that also puts both in one slot)."""
    return f"{prefix}{{blocklist}}:items", f"{prefix}{{blocklist}}:version"


class RedisBlocklist:
    """The blocklist as a Redis set plus a version counter, both changed in one MULTI."""

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        self.items_key, self.version_key = blocklist_keys(prefix)
        timeout = max(timeout_s, MIN_TIMEOUT_S)
        self._client = _client_for(
            url,
            max_connections=4,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    async def _run(self, call: Callable[[], Any]) -> Any:
        try:
            return await call()
        except Exception as err:  # every redis-py / socket error: the caller keeps its last list or answers 503
            raise BlocklistUnavailable(f"{type(err).__name__}: {err}") from err

    async def version(self) -> int:
        value = await self._run(lambda: self._client.get(self.version_key))
        return int(value or 0)

    async def snapshot(self) -> Snapshot:
        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.get(self.version_key)
                pipe.smembers(self.items_key)
                result: list[Any] = await pipe.execute()
                return result

        version, items = await self._run(read)
        return Snapshot(int(version or 0), frozenset(items))

    async def _change(self, command: str, item_ids: Sequence[str]) -> Change:
        async def write() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                getattr(pipe, command)(self.items_key, *item_ids)
                pipe.scard(self.items_key)
                pipe.incr(self.version_key)
                result: list[Any] = await pipe.execute()
                return result

        changed, total, version = await self._run(write)
        return Change(int(changed), int(total), int(version))

    async def block(self, item_ids: Sequence[str]) -> Change:
        return await self._change("sadd", item_ids)

    async def unblock(self, item_ids: Sequence[str]) -> Change:
        return await self._change("srem", item_ids)

    async def close(self) -> None:
        await self._client.aclose()


class MemoryBlocklist:
    """The blocklist in this process (no Redis configured): not shared with other processes, lost on restart."""

    def __init__(self) -> None:
        self._snapshot = Snapshot(0, frozenset())

    async def version(self) -> int:
        return self._snapshot.version

    async def snapshot(self) -> Snapshot:
        return self._snapshot

    def _change(self, items: frozenset[str], changed: int) -> Change:
        self._snapshot = Snapshot(self._snapshot.version + 1, items)
        return Change(changed, len(items), self._snapshot.version)

    async def block(self, item_ids: Sequence[str]) -> Change:
        before = self._snapshot.items
        after = before | frozenset(item_ids)
        return self._change(after, len(after) - len(before))

    async def unblock(self, item_ids: Sequence[str]) -> Change:
        before = self._snapshot.items
        after = before - frozenset(item_ids)
        return self._change(after, len(before) - len(after))

    async def close(self) -> None:
        return None


def make_blocklist_store(settings: ServiceSettings) -> BlocklistStore:
    """Redis when REMI_REDIS_URL is set (shared, durable), else in process (as the history store)."""
    if settings.redis_url:
        return RedisBlocklist(settings.redis_url, settings.redis_prefix, settings.redis_timeout_ms / 1000)
    return MemoryBlocklist()


class LiveBlocklist:
    """What one worker applies: the last snapshot it read, and that snapshot as item indices per model.

    Everything a request reads is immutable and swapped by reference (the snapshot, the mapped
    array), so requests and the refresh task need no lock.
    """

    def __init__(self, store: BlocklistStore, poll_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.poll_s = poll_s
        self.clock = clock
        self.snapshot = Snapshot(-1, frozenset())  # -1: nothing read yet
        self.failing_since: float | None = None  # when the store stopped answering; None while it answers
        self.last_error: str | None = None
        self._refreshing = asyncio.Lock()
        self._full_read_at = float("-inf")  # the next whole read even if the version did not move
        # (snapshot, vocabulary) -> sorted item indices; one entry: a vocabulary changes only on reload
        self._mapped: tuple[Snapshot, ItemVocabulary, np.ndarray] | None = None

    @property
    def loaded(self) -> bool:
        """Whether a snapshot was ever read (False: the store was down since start, nothing is blocked)."""
        return self.snapshot.version >= 0

    async def refresh(self) -> bool:
        """Reads the store if its version moved; True if the applied list changed. Never raises:
        while the store is down the last list stays applied. One at a time (the poller and an
        admin call may both refresh): a slow older read must not land after a newer one."""
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> bool:
        try:
            version = await self.store.version()
            due = self.clock() >= self._full_read_at
            if version == self.snapshot.version and not due:
                self._recovered()
                return False
            snapshot = await self.store.snapshot()
            self._full_read_at = self.clock() + FULL_READ_EVERY_S
        except BlocklistUnavailable as exc:
            telemetry.BLOCKLIST_ERRORS.inc()
            self.last_error = str(exc)
            if self.failing_since is None:
                self.failing_since = self.clock()
                log.warning(
                    "blocklist store unavailable: keeping the last list read",
                    extra={"version": self.snapshot.version, "items": len(self.snapshot.items), "error": str(exc)},
                )
            return False
        self._recovered()
        if snapshot == self.snapshot:
            return False
        self.snapshot = snapshot  # one reference swap: a request sees the old list or the new one
        telemetry.BLOCKLIST_VERSION.set(snapshot.version)
        log.info("blocklist applied", extra={"version": snapshot.version, "items": len(snapshot.items)})
        return True

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info(
                "blocklist store reachable again",
                extra={"down_s": round(self.clock() - self.failing_since, 3), "version": self.snapshot.version},
            )
            self.failing_since = None
            self.last_error = None

    async def poll_forever(self) -> None:
        """The background task of a worker: refresh every ``poll_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the task: the list would freeze silently
                log.exception("blocklist refresh failed")

    def indices(self, vocabulary: ItemVocabulary) -> np.ndarray:
        """The blocked items ``vocabulary`` knows, as sorted unique item indices (ids it does not know are skipped)."""
        snapshot = self.snapshot
        mapped = self._mapped
        if mapped is not None and mapped[0] is snapshot and mapped[1] is vocabulary:
            return mapped[2]
        known = map_ids(vocabulary, snapshot.items)
        self._mapped = (snapshot, vocabulary, known)
        return known


def map_ids(vocabulary: ItemVocabulary, raw_ids: Iterable[str]) -> np.ndarray:
    """Raw ids -> sorted unique item indices of the ones ``vocabulary`` knows (read-only array)."""
    known, _ = vocabulary.indices_of(raw_ids)
    if not len(known):
        return EMPTY
    out = np.unique(known)
    out.setflags(write=False)
    return out
