"""The live blocklist: raw item ids that no answer may contain, changed at run time without a reindex.

Why it is built this way (docs/operations.md#blocking-items-without-a-reindex):

* **One truth, shared and durable.** With a Redis history store the ids live in Redis under the
  service's key prefix (:class:`RedisBlocklist`): a set of the ids, a version counter, an epoch
  (a random token, new whenever the namespace starts from nothing, e.g. after Redis lost its
  data) and a change log (a stream with one entry per change, its id the version), all changed
  by one script, so every worker of every replica applies the same list, it survives restarts,
  and a reindex or a new model version keeps it. Without Redis (the embedded history store) it
  lives in the process (:class:`MemoryBlocklist`): per process and lost on restart, as the
  embedded histories are.
* **Changes, not the whole list.** Each worker holds a :class:`LiveBlocklist` and polls the
  version (one MGET every ``REMI_BLOCKLIST_POLL_MS``, 200 ms by default); when it moved, the
  worker reads the log entries after its own version and applies them to its set and to its
  mapped item indices. Re-reading a 100k-id set on every change held each worker's event loop
  for 150-300 ms (SMEMBERS, a frozenset, a full re-map): its history reads timed out and 12% of
  the answers fell back. The whole set is read only at start, when the epoch changed, when the
  worker fell behind the trimmed log (``LOG_MAX`` entries) and every ``FULL_READ_EVERY_S``; that
  read is SSCAN in pages (the loop runs between them) plus the log since the version it started
  at, which makes it exact without a transaction.
* **No transactions on the read path.** Redis refuses MULTI at maxmemory with noeviction, reads
  or not: a worker that started then read no list and served blocked items. Every read here is
  a plain read command.
* **Fail closed.** A worker that cannot establish the list serves no answer that could hold a
  blocked item: with Redis it keeps the last list it applied on disk (``blocklist.json`` in the
  index root, written off the event loop) and starts from it when the store cannot be read; with
  neither, the recommendation routes answer 503 and /readyz says why until the store answers.
* **Requests never touch Redis for it:** they read the mapped array (sorted item indices per
  model vocabulary, swapped by reference) that goes into the engine's exclusions, so answers
  still have k items. The store keeps raw ids, including ids the serving model does not know;
  each vocabulary maps what it knows, so an id blocked before the item exists is applied as soon
  as a version that knows it is loaded.
* **An outage never drops the list.** When Redis cannot be read the worker keeps the last list
  it applied and logs the outage once (and the recovery); writes and the listing answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from remi.contract import ItemVocabulary
from service import telemetry
from service.config import ServiceSettings
from service.redis_client import NO_ACCESS, RedisAccess, client_for, public_url

log = logging.getLogger("remi.blocklist")

EMPTY = np.zeros(0, dtype=np.int64)
EMPTY.setflags(write=False)
# A safety net: every worker also reads the whole list this often (an SSCAN in pages, off the
# request path), whatever the version and the epoch say.
FULL_READ_EVERY_S = 300.0
LOG_MAX = 1000  # change-log entries kept: a worker more than this many changes behind reads the whole list
SCAN_PAGE = 2000  # ids per SSCAN page of a whole read: the event loop runs between pages
CHANGES_PAGE = 200  # log entries per read while catching up
SNAPSHOT_FILE = "blocklist.json"  # the last list a worker applied, in the index root (fail closed)
SNAPSHOT_EVERY_S = 5.0  # the disk copy is rewritten at most this often (it only serves a start without the store)
MIN_TIMEOUT_S = 1.0  # no request waits on these calls, so a longer timeout costs nothing


class BlocklistUnavailable(Exception):
    """The store could not be read or written now (Redis down or slow)."""


class BlocklistNotLoaded(Exception):
    """This worker has no list to apply (the store was never readable and no copy was on disk)."""


@dataclass(frozen=True)
class Snapshot:
    """The blocklist as one read saw it: the store's version counter, the raw ids, the epoch."""

    version: int
    items: frozenset[str]
    epoch: str = ""  # "" before the first write


@dataclass(frozen=True)
class Head:
    """What a poll reads: the version counter and the epoch of the store's namespace."""

    version: int
    epoch: str


@dataclass(frozen=True)
class Entry:
    """One change of the log: after it the store was at ``version``."""

    version: int
    block: bool
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Change:
    """The outcome of a block or unblock call."""

    changed: int  # ids added (block) or removed (unblock)
    total: int  # ids blocked after the call
    version: int  # the store's version counter after the call


class BlocklistStore(Protocol):
    async def head(self) -> Head:
        """The version counter (0 before the first write) and the epoch; cheap, polled by every worker."""
        ...

    async def changes(self, since: int, limit: int) -> list[Entry]:
        """Up to ``limit`` log entries after version ``since``, oldest first (the caller checks
        that they continue its version: a trimmed or lost log does not)."""
        ...

    async def snapshot(self) -> Snapshot:
        """The ids and the version they belong to, exact (read in pages, no transaction)."""
        ...

    async def block(self, item_ids: Sequence[str]) -> Change: ...

    async def unblock(self, item_ids: Sequence[str]) -> Change: ...

    async def close(self) -> None: ...


def blocklist_keys(prefix: str) -> tuple[str, str, str, str]:
    """(set, version, epoch, log) keys. One hash tag, so in Redis Cluster all live in one slot and
    the script that changes them stays one atomic call (a prefix that holds its own hash tag wins,
    and that also puts them in one slot)."""
    base = f"{prefix}{{blocklist}}"
    return f"{base}:items", f"{base}:version", f"{base}:epoch", f"{base}:log"


# KEYS: set, version, epoch, log. ARGV: 'b' | 'u', a new epoch token, log entries kept, the ids as
# one JSON array (the log entry), then the ids. The first command is the SADD/SREM, so a refused
# write (OOM, READONLY) leaves nothing behind. Version 1 means the namespace starts from nothing
# (first write, or Redis lost its data): a new epoch and a new log, so no worker mistakes the new
# history for the one it applied.
_CHANGE_LUA = """
local cmd = ARGV[1] == 'b' and 'SADD' or 'SREM'
local changed = 0
for i = 5, #ARGV, 1000 do
  changed = changed + redis.call(cmd, KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local v = redis.call('INCR', KEYS[2])
if v == 1 or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[4])
  redis.call('SET', KEYS[3], ARGV[2])
end
redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[3], v .. '-0', 'op', ARGV[1], 'ids', ARGV[4])
return {changed, redis.call('SCARD', KEYS[1]), v}
"""


def _replay(items: set[str], entries: Iterable[Entry]) -> None:
    for entry in entries:
        if entry.block:
            items.update(entry.ids)
        else:
            items.difference_update(entry.ids)


def _continues(version: int, entries: list[Entry]) -> bool:
    """Whether ``entries`` are exactly the changes after ``version``, in order, with no gap."""
    return bool(entries) and all(e.version == version + 1 + n for n, e in enumerate(entries))


class RedisBlocklist:
    """The blocklist in Redis: set, version, epoch and change log, all changed by one script."""

    def __init__(
        self, url: str, prefix: str, timeout_s: float, log_max: int = LOG_MAX, access: RedisAccess = NO_ACCESS
    ) -> None:
        self.items_key, self.version_key, self.epoch_key, self.log_key = blocklist_keys(prefix)
        self.log_max = log_max
        self.url = public_url(url)
        timeout = max(timeout_s, MIN_TIMEOUT_S)
        self._client = client_for(
            url,
            access,
            max_connections=4,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._change_script = self._client.register_script(_CHANGE_LUA)

    async def _run(self, call: Callable[[], Any]) -> Any:
        try:
            return await call()
        except Exception as err:  # every redis-py / socket error: the caller keeps its last list or answers 503
            raise BlocklistUnavailable(f"{type(err).__name__}: {err}") from err

    async def head(self) -> Head:
        version, epoch = await self._run(lambda: self._client.mget(self.version_key, self.epoch_key))
        return Head(int(version or 0), epoch or "")

    async def changes(self, since: int, limit: int) -> list[Entry]:
        raw = await self._run(lambda: self._client.xrange(self.log_key, f"{since + 1}-0", "+", count=limit))
        return [
            Entry(int(entry_id.partition("-")[0]), fields["op"] == "b", tuple(orjson.loads(fields["ids"])))
            for entry_id, fields in raw
        ]

    async def snapshot(self) -> Snapshot:
        for _ in range(5):
            start = await self.head()
            items: set[str] = set()
            cursor = 0
            while True:
                cursor, page = await self._scan_page(cursor)
                items.update(page)
                if not cursor:
                    break
            # What changed during the scan: an id no change touched kept its membership all along
            # (so SSCAN saw it right); for the others the last change applied here decides.
            end = await self.head()
            if end.epoch != start.epoch:
                continue
            version = start.version
            while version < end.version:
                entries = await self.changes(version, CHANGES_PAGE)
                if not _continues(version, entries):
                    break
                _replay(items, entries)
                version = entries[-1].version
            else:
                return Snapshot(version, frozenset(items), start.epoch)
        raise BlocklistUnavailable("the list changed faster than it could be read whole; retrying at the next poll")

    async def _scan_page(self, cursor: int) -> tuple[int, list[str]]:
        page: tuple[int, list[str]] = await self._run(
            lambda: self._client.sscan(self.items_key, cursor, count=SCAN_PAGE)
        )
        return page

    async def _change(self, op: str, item_ids: Sequence[str]) -> Change:
        args = [op, uuid.uuid4().hex, self.log_max, orjson.dumps(list(item_ids)).decode(), *item_ids]
        keys = [self.items_key, self.version_key, self.epoch_key, self.log_key]
        changed, total, version = await self._run(lambda: self._change_script(keys=keys, args=args))
        return Change(int(changed), int(total), int(version))

    async def block(self, item_ids: Sequence[str]) -> Change:
        return await self._change("b", item_ids)

    async def unblock(self, item_ids: Sequence[str]) -> Change:
        return await self._change("u", item_ids)

    async def close(self) -> None:
        await self._client.aclose()


class MemoryBlocklist:
    """The blocklist in this process (no Redis configured): not shared with other processes, lost on restart."""

    def __init__(self, log_max: int = LOG_MAX) -> None:
        self._items: set[str] = set()
        self._version = 0
        self._epoch = uuid.uuid4().hex
        self._log: deque[Entry] = deque(maxlen=log_max)

    async def head(self) -> Head:
        return Head(self._version, self._epoch)

    async def changes(self, since: int, limit: int) -> list[Entry]:
        return [e for e in self._log if e.version > since][:limit]

    async def snapshot(self) -> Snapshot:
        return Snapshot(self._version, frozenset(self._items), self._epoch)

    def _change(self, block: bool, item_ids: Sequence[str]) -> Change:
        before = len(self._items)
        entry = Entry(self._version + 1, block, tuple(item_ids))
        _replay(self._items, [entry])
        self._version = entry.version
        self._log.append(entry)
        return Change(abs(len(self._items) - before), len(self._items), self._version)

    async def block(self, item_ids: Sequence[str]) -> Change:
        return self._change(True, item_ids)

    async def unblock(self, item_ids: Sequence[str]) -> Change:
        return self._change(False, item_ids)

    async def close(self) -> None:
        return None


def make_blocklist_store(settings: ServiceSettings) -> BlocklistStore:
    """Redis when REMI_REDIS_URL is set (shared, durable), else in process (as the history store)."""
    if settings.redis_url:
        return RedisBlocklist(
            settings.redis_url, settings.redis_prefix, settings.redis_timeout_ms / 1000, access=settings.redis_access()
        )
    return MemoryBlocklist()


def make_live_blocklist(settings: ServiceSettings) -> LiveBlocklist:
    """The worker's live list; with Redis it keeps its disk copy in the index root (fail closed)."""
    store = make_blocklist_store(settings)
    if not isinstance(store, RedisBlocklist):
        return LiveBlocklist(store, settings.blocklist_poll_ms / 1000)
    disk = SnapshotFile(settings.index_root / SNAPSHOT_FILE, f"{store.url} {settings.redis_prefix}")
    return LiveBlocklist(store, settings.blocklist_poll_ms / 1000, disk=disk)


class SnapshotFile:
    """The last list a worker applied, on disk beside the index versions, for a start without the store.

    ``identity`` (the store's URL without credentials, and the key prefix) is written with it: a
    copy of another store's list is not applied. Written whole to a temporary file and renamed, so
    a reader sees the old copy or the new one; several workers may write it, each its latest.
    """

    def __init__(self, path: Path, identity: str) -> None:
        self.path = path
        self.identity = identity
        self._failed_logged = False

    def write(self, version: int, epoch: str, items: list[str]) -> None:
        # Unsorted: sorting 100k ids held the GIL (and so the worker's event loop) for 80 ms.
        body = {"identity": self.identity, "epoch": epoch, "version": version, "written_at": time.time(),
                "items": items}  # fmt: skip
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(orjson.dumps(body))
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only root: the worker works, it only cannot start without the store
            if not self._failed_logged:
                log.warning("cannot keep the blocklist on disk", extra={"path": str(self.path), "error": str(exc)})
                self._failed_logged = True
            tmp.unlink(missing_ok=True)

    def read(self) -> tuple[Snapshot, float] | None:
        """(the list, when it was written) if a copy of this store's list is there, else None."""
        try:
            body = orjson.loads(self.path.read_bytes())
            if body["identity"] != self.identity:
                return None
            snapshot = Snapshot(int(body["version"]), frozenset(map(str, body["items"])), str(body["epoch"]))
            return snapshot, float(body["written_at"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("the blocklist copy on disk is unreadable", extra={"path": str(self.path), "error": str(exc)})
            return None


class LiveBlocklist:
    """What one worker applies: its copy of the list (version, epoch, ids) and that list as item
    indices per model vocabulary, kept up to date change by change.

    The ids and the mapped arrays are changed only by the refresh (on the event loop, between its
    awaits); a request reads one mapped array, immutable and swapped by reference, so requests,
    the compute threads and the refresh need no lock.
    """

    def __init__(
        self,
        store: BlocklistStore,
        poll_s: float,
        clock: Callable[[], float] = time.monotonic,
        disk: SnapshotFile | None = None,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self.clock = clock
        self.disk = disk
        self.version = -1  # -1: nothing applied yet
        self.epoch = ""
        self.source = "none"  # "store" | "disk" (a copy from disk, the store not read since start) | "none"
        self.disk_written_at: float | None = None  # when the copy applied from disk was written
        self.failing_since: float | None = None  # when the store stopped answering; None while it answers
        self.last_error: str | None = None
        self._items: set[str] = set()
        self._refreshing = asyncio.Lock()
        self._full_read_at = float("-inf")  # the next whole read even if the version did not move
        # id(vocabulary) -> (vocabulary, sorted item indices): the serving model's, and during a
        # reload the previous one's (two at most)
        self._mapped: dict[int, tuple[ItemVocabulary, np.ndarray]] = {}
        self._saved_version: tuple[str, int] | None = None  # what the disk copy holds
        self._saved_at = float("-inf")

    @property
    def loaded(self) -> bool:
        """Whether a list was applied (from the store or from the disk copy)."""
        return self.version >= 0

    @property
    def snapshot(self) -> Snapshot:
        """A copy of the applied list (the ids are copied: for the listing and tests, not requests)."""
        return Snapshot(self.version, frozenset(self._items), self.epoch)

    def status(self) -> tuple[str, str | None]:
        """("ok" | "stale" | "unavailable", why) for /readyz: "stale" while the list came from disk
        or the store cannot be read, "unavailable" while there is no list at all (no answers)."""
        if not self.loaded:
            return "unavailable", f"no blocklist yet: the store cannot be read ({self.last_error})"
        if self.source == "disk":
            return "stale", (
                f"blocklist version {self.version} from the copy on disk (written at {self.disk_written_at}); "
                f"the store cannot be read ({self.last_error})"
            )
        if self.failing_since is not None:
            return "stale", f"keeping blocklist version {self.version}: the store cannot be read ({self.last_error})"
        return "ok", None

    async def start(self) -> None:
        """Before the first request: the list from the store, else the copy on disk, else none (no answers)."""
        await self.refresh()
        if self.loaded or self.disk is None:
            return
        copy = await asyncio.to_thread(self.disk.read)
        if copy is None:
            return
        snapshot, written_at = copy
        async with self._refreshing:
            if self.loaded:  # the store answered meanwhile
                return
            self._apply_snapshot(snapshot)
            self.source, self.disk_written_at = "disk", written_at
            self._saved_version = (snapshot.epoch, snapshot.version)
        log.warning(
            "blocklist store not readable at start: applying the copy on disk",
            extra={"version": snapshot.version, "items": len(snapshot.items), "error": self.last_error},
        )

    async def refresh(self) -> bool:
        """Applies what changed in the store; True if the applied list changed. Never raises:
        while the store is down the last list stays applied. One at a time (the poller and an
        admin call may both refresh): a slow older read must not land after a newer one."""
        async with self._refreshing:
            try:
                changed = await self._refresh()
            except BlocklistUnavailable as exc:
                telemetry.BLOCKLIST_ERRORS.inc()
                self.last_error = str(exc)
                if self.failing_since is None:
                    self.failing_since = self.clock()
                    log.warning(
                        "blocklist store unavailable: keeping the last list applied",
                        extra={"version": self.version, "items": len(self._items), "error": str(exc)},
                    )
                return False
        self._recovered()
        if changed:
            telemetry.BLOCKLIST_VERSION.set(self.version)
        return changed

    async def _refresh(self) -> bool:
        head = await self.store.head()
        due = self.clock() >= self._full_read_at
        if self.source == "store" and head.epoch == self.epoch and not due:
            if head.version == self.version:
                return False
            if head.version > self.version and await self._catch_up(head.version):
                return True
        # Start, a copy from disk, another epoch, a trimmed log or the periodic check: read it whole.
        snapshot = await self.store.snapshot()
        self._full_read_at = self.clock() + FULL_READ_EVERY_S
        changed = snapshot.version != self.version or snapshot.epoch != self.epoch or snapshot.items != self._items
        self._apply_snapshot(snapshot)
        self.source = "store"
        if changed:
            log.info("blocklist read whole", extra={"version": snapshot.version, "items": len(snapshot.items)})
        return changed

    async def _catch_up(self, target: int) -> bool:
        """The log's changes from this worker's version to ``target``; False where the log does not
        reach back to it (trimmed, or another epoch's), leaving what was applied so far."""
        while self.version < target:
            entries = await self.store.changes(self.version, CHANGES_PAGE)
            if not _continues(self.version, entries):
                return False
            for entry in entries:
                self._apply(entry.block, entry.ids)
                self.version = entry.version
        return True

    def _apply(self, block: bool, ids: Iterable[str]) -> None:
        """One change to the ids and to every mapped array (only the ids that change membership)."""
        items = self._items
        if block:
            moved = [i for i in dict.fromkeys(ids) if i not in items]
            items.update(moved)
        else:
            moved = [i for i in dict.fromkeys(ids) if i in items]
            items.difference_update(moved)
        if not moved:
            return
        for key, (vocabulary, indices) in list(self._mapped.items()):
            delta = map_ids(vocabulary, moved)
            if not len(delta):
                continue
            out = np.union1d(indices, delta) if block else np.setdiff1d(indices, delta, assume_unique=True)
            out.setflags(write=False)
            self._mapped[key] = (vocabulary, out)

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        if not self.loaded:
            self._items = set(snapshot.items)
            self._mapped.clear()
        else:  # only the difference, so the mapped arrays are updated, not rebuilt
            self._apply(False, self._items - snapshot.items)
            self._apply(True, snapshot.items - self._items)
        self.version, self.epoch = snapshot.version, snapshot.epoch

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info(
                "blocklist store reachable again",
                extra={"down_s": round(self.clock() - self.failing_since, 3), "version": self.version},
            )
            self.failing_since = None
            self.last_error = None

    async def save(self, now: bool = False) -> None:
        """Writes the applied list to disk (off the event loop) when it changed, at most every
        SNAPSHOT_EVERY_S unless ``now`` (at shutdown)."""
        if self.disk is None or self.source != "store" or self._saved_version == (self.epoch, self.version):
            return
        if not now and self.clock() - self._saved_at < SNAPSHOT_EVERY_S:
            return
        version, epoch, items = self.version, self.epoch, list(self._items)  # a list: the cheapest copy
        self._saved_version, self._saved_at = (epoch, version), self.clock()
        await asyncio.to_thread(self.disk.write, version, epoch, items)

    async def poll_forever(self) -> None:
        """The background task of a worker: refresh every ``poll_s`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
                await self.save()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the task: the list would freeze silently
                log.exception("blocklist refresh failed")

    def indices(self, vocabulary: ItemVocabulary) -> np.ndarray:
        """The blocked items ``vocabulary`` knows, as sorted unique item indices (ids it does not know
        are skipped). Raises :class:`BlocklistNotLoaded` while there is no list: fail closed."""
        if not self.loaded:
            raise BlocklistNotLoaded(f"no blocklist yet: the store cannot be read ({self.last_error})")
        mapped = self._mapped.get(id(vocabulary))
        if mapped is not None and mapped[0] is vocabulary:
            return mapped[1]
        known = map_ids(vocabulary, self._items)  # once per model version and worker
        while len(self._mapped) >= 2:
            del self._mapped[next(iter(self._mapped))]
        self._mapped[id(vocabulary)] = (vocabulary, known)
        return known


def map_ids(vocabulary: ItemVocabulary, raw_ids: Iterable[str]) -> np.ndarray:
    """Raw ids -> sorted unique item indices of the ones ``vocabulary`` knows (read-only array)."""
    known, _ = vocabulary.indices_of(raw_ids)
    if not len(known):
        return EMPTY
    out = np.unique(known)
    out.setflags(write=False)
    return out
