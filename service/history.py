"""Per-user interaction history: the input of the user tower at request time.

Two stores share one protocol: `RedisHistory` for deployments (shared by every worker, capped and
expiring per user) and `MemoryHistory` for the quick start with no Redis. Both keep at most
`max_len` events per user in timestamp order, oldest first (the order the model was trained on
and the one `remi history load` writes): an event that arrives late with an older timestamp goes
where its timestamp puts it, ties keep their arrival order (`merge_by_time` says the whole rule).
The Redis plumbing under `RedisHistory` (the client for every topology, what a failure means, the
deadline of a call, the circuit breaker) is service/redis_client.py, shared with the blocklist
and the bulk loader.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import MaxConnectionsError

from remi.contract import INTERACTION_COLUMNS
from service.config import ServiceSettings
from service.redis_client import (
    BACKSTOP_TIMEOUT_S,
    NO_ACCESS,
    CircuitBreaker,
    Failure,
    RedisAccess,
    classify,
    client_for,
    public_url,
    within,
)

log = logging.getLogger("remi.history")

# One source for the store's defaults: the settings' own defaults (no environment read here).
_DEFAULTS = ServiceSettings.model_construct()

T = TypeVar("T")

_RAW_ID = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


class HistoryUnavailable(Exception):
    """The store could not serve this call; readers fall back, writers answer 503.

    ``reason`` is a short code (``timeout``, ``unreachable``, ``denied``, ``read_only``, ...) and
    ``applied`` says what a writer may tell its client: False when the command surely never ran
    (nothing was stored), None when it may have run (a timeout after the command was sent), so a
    retry is only safe with the same idempotency key.
    """

    def __init__(self, message: str, reason: str = "unavailable", applied: bool | None = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.applied = applied


class IdempotencyConflict(ValueError):
    """An idempotency key was reused for a different set of events (a client bug, answered 422)."""


@dataclass(frozen=True)
class Appended:
    """The outcome of an append: as stored the first time when ``replayed`` (a retried key)."""

    stored: int
    history_len: int
    replayed: bool = False


@dataclass(frozen=True)
class Event:
    item_id: str
    timestamp: int | None = None
    # True when the timestamp is the arrival time the API gave an event posted without one: the
    # Idempotency-Key fingerprint is taken of the event as sent, so a retry later is the same request.
    stamped: bool = field(default=False, compare=False)


def _as_sent(event: Event) -> Event:
    return Event(event.item_id) if event.stamped else event


class HistoryStore(Protocol):
    async def get(self, user_id: str, limit: int) -> list[Event]:
        """The most recent `limit` events, oldest first."""
        ...

    async def get_many(self, user_ids: list[str], limit: int) -> list[list[Event]]:
        """`get` for a batch in one round trip; [] for unknown users."""
        ...

    async def append(self, user_id: str, events: list[Event], idempotency_key: str | None = None) -> Appended:
        """Add events where their timestamps put them (`merge_by_time`), at most once per `idempotency_key`."""
        ...

    async def ping(self) -> bool:
        """True if the store is usable now; never raises (readiness)."""
        ...

    async def health(self) -> tuple[str, str | None]:
        """("ok" | "unavailable" | "writes_failing", why) for /readyz; never raises."""
        ...

    async def close(self) -> None: ...


def history_key(prefix: str, user_id: str) -> str:
    """Redis key of a user's history.

    User ids are opaque and client-supplied, so they may hold ':', '*', spaces or 10 kB of
    unicode. Plain ids stay readable under `h:r:`; everything else is hashed under `h:s:`, and the
    two sub-namespaces keep a raw id from ever equalling a hashed one.
    """
    if _RAW_ID.fullmatch(user_id):
        return f"{prefix}h:r:{user_id}"
    # surrogatepass: ids decoded from JSON may hold lone surrogates; the encoding stays injective.
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}h:s:{digest}"


def idempotency_marker_key(prefix: str, user_id: str, idempotency_key: str) -> str:
    """Redis key remembering one idempotency key of one user.

    Its hash tag is the user's history key, so in Redis Cluster the marker lives in the same slot
    and the check-and-append stays one atomic single-slot script. Under the same prefix, so an
    operator's SCAN/DEL of the namespace removes it too.
    """
    digest = hashlib.sha256(idempotency_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{prefix}i:{{{history_key(prefix, user_id)}}}:{digest}"


def _check_prefix(prefix: str) -> None:
    """Refuse a prefix whose braces would put a user's marker in another Cluster slot than the history."""
    sample = "u1"
    if key_slot(history_key(prefix, sample).encode()) != key_slot(idempotency_marker_key(prefix, sample, "k").encode()):
        raise ValueError(f"redis prefix {prefix!r}: '{{' and '}}' are only allowed as one complete hash tag")


def _fingerprint(encoded: list[str]) -> str:
    return hashlib.sha256("\n".join(encoded).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _encode(event: Event) -> str:
    return f"{'' if event.timestamp is None else event.timestamp}:{event.item_id}"


def encode_many(item_ids: Any, timestamps: Any) -> list[str]:
    """`_encode` for whole columns at once (the bulk loader): ``"<timestamp>:<item_id>"``.

    Vectorised with pandas; a test checks it equals `_encode` event by event.
    """
    stamps = pd.Series(np.asarray(timestamps, dtype=np.int64)).astype(str)
    return (stamps + ":" + pd.Series(np.asarray(item_ids, dtype=object)).astype(str)).tolist()


def _decode(raw: str) -> Event:
    # The first ':' ends the timestamp; item ids may contain ':' themselves.
    stamp, _, item_id = raw.partition(":")
    return Event(item_id, int(stamp) if stamp else None)


# Check-and-append in one atomic step (a Lua script is atomic, and all its keys share one slot):
# a marker per idempotency key makes a retried request a replay of the first answer, never a
# second copy. KEYS[1]: the history (newest first); KEYS[2]: the marker, absent without a key.
# ARGV: max_len, ttl (0 = none), marker ttl, fingerprint, then the events as given.
#
# The list is kept in timestamp order (see `merge_by_time`, the same rule in Python): events that
# continue it (the common case) are LPUSHed; a batch with an event older than the newest stored
# one rewrites the list merged (LRANGE of at most max_len, a sort, LPUSH of the result above the
# old list, LTRIM). Timestamps compare as text (longer is larger, then lexicographic: exact for
# any non-negative integer); '' (no timestamp) sorts before every timestamp. Either way the first
# write is an LPUSH, so a refused write (READONLY, OOM, NOPERM) leaves nothing behind.
_APPEND_LUA = """
if #KEYS > 1 then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {1, seen} end
end
local function stamp(raw)
  return string.sub(raw, 1, string.find(raw, ':', 1, true) - 1)
end
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local newest = ''
local head = redis.call('LINDEX', KEYS[1], 0)
if head then
  newest = stamp(head)
  if newest == '' then
    local rest = redis.call('LRANGE', KEYS[1], 1, -1)
    for i = 1, #rest do
      newest = stamp(rest[i])
      if newest ~= '' then break end
    end
  end
end
local in_order, run = true, newest
for i = 5, #ARGV do
  local s = stamp(ARGV[i])
  if s ~= '' then
    if older(s, run) then in_order = false break end
    run = s
  end
end
local max_len = tonumber(ARGV[1])
if in_order then
  for i = 5, #ARGV, 1000 do
    redis.call('LPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
  end
  redis.call('LTRIM', KEYS[1], 0, max_len - 1)
else
  local stored = redis.call('LRANGE', KEYS[1], 0, -1)
  local events, keys, order = {}, {}, {}
  run = ''
  local function add(raw)
    local s = stamp(raw)
    local eff = s
    if s == '' then eff = run elseif older(run, s) then run = s end
    events[#events + 1] = raw
    keys[#keys + 1] = eff
    order[#order + 1] = #events
  end
  for i = #stored, 1, -1 do add(stored[i]) end
  for i = 5, #ARGV do add(ARGV[i]) end
  table.sort(order, function(a, b)
    if keys[a] ~= keys[b] then return older(keys[a], keys[b]) end
    return a < b
  end)
  local kept = {}
  for i = math.max(1, #order - max_len + 1), #order do kept[#kept + 1] = events[order[i]] end
  for i = 1, #kept, 1000 do
    redis.call('LPUSH', KEYS[1], unpack(kept, i, math.min(i + 999, #kept)))
  end
  redis.call('LTRIM', KEYS[1], 0, #kept - 1)
end
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
local n = redis.call('LLEN', KEYS[1])
if #KEYS > 1 then
  redis.call('SET', KEYS[2], ARGV[4] .. ':' .. (#ARGV - 4) .. ':' .. n, 'EX', ARGV[3])
end
return {0, n}
"""


class RedisHistory:
    """Histories as Redis lists, newest first, capped at `max_len` and expiring after `ttl_seconds`.

    Timeouts are short and there are no retries: a slow history should cost a request a fallback,
    not its latency budget. A :class:`CircuitBreaker` fails calls fast while the server is down
    (a sustained failure rate), so an outage does not add a timeout to every request. Every
    redis-py error becomes :class:`HistoryUnavailable` with a reason; errors of one command on a
    reachable server (READONLY, OOM, NOPERM) do not count for the breaker, since reads still work.
    """

    def __init__(
        self,
        url: str,
        prefix: str = _DEFAULTS.redis_prefix,
        max_len: int = _DEFAULTS.history_max_len,
        ttl_seconds: int | None = _DEFAULTS.history_ttl_seconds,
        timeout_s: float = _DEFAULTS.redis_timeout_ms / 1000,
        max_connections: int = _DEFAULTS.redis_max_connections,
        retry_after_s: float = _DEFAULTS.redis_breaker_open_s,
        breaker_window_s: float = _DEFAULTS.redis_breaker_window_s,
        breaker_min_failures: int = _DEFAULTS.redis_breaker_min_failures,
        breaker_failure_rate: float = _DEFAULTS.redis_breaker_failure_rate,
        idempotency_ttl_s: int = _DEFAULTS.idempotency_ttl_s,
        clock: Callable[[], float] = time.monotonic,
        access: RedisAccess = NO_ACCESS,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if ttl_seconds is not None and ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be >= 1 or None, got {ttl_seconds}")
        if timeout_s <= 0 or retry_after_s < 0 or max_connections < 1 or idempotency_ttl_s < 1:
            raise ValueError(
                "timeout_s, max_connections and idempotency_ttl_s must be positive, retry_after_s non-negative"
            )
        _check_prefix(prefix)
        self.prefix = prefix
        self.max_len = max_len
        self.ttl_seconds = ttl_seconds
        self.retry_after_s = retry_after_s
        self.idempotency_ttl_s = idempotency_ttl_s
        self.url = public_url(url)
        self.failures = 0
        self.last_error: str | None = None  # the latest failure, for /readyz
        self._write_error: str | None = None  # a refused write (READONLY, OOM, ...) not yet followed by a success
        self.breaker = CircuitBreaker(
            window_s=breaker_window_s,
            min_failures=breaker_min_failures,
            failure_rate=breaker_failure_rate,
            open_s=retry_after_s,
            clock=clock,
        )
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        backstop = max(BACKSTOP_TIMEOUT_S, 4 * timeout_s)  # the deadline is within's
        self._client = client_for(
            url,
            access,
            max_connections=max_connections,
            socket_timeout=backstop,
            socket_connect_timeout=backstop,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._append_script = self._client.register_script(_APPEND_LUA)

    @property
    def available(self) -> bool:
        """False while calls fail fast (the breaker is open or a probe is in flight)."""
        if not self.breaker.is_open:
            return True
        assert self.breaker.open_until is not None
        return self.breaker.clock() >= self.breaker.open_until and not self.breaker.probing

    def _admit(self) -> None:
        allowed, left = self.breaker.admit()
        if allowed:
            return
        why = f"next try in {left:.2f} s" if left > 0 else "a probe is in flight"
        raise HistoryUnavailable(
            f"history store unavailable (circuit open, {why}; last error: {self.last_error}) at {self.url}",
            reason="circuit_open",
            applied=False,
        )

    async def _drop_idle_connections(self) -> None:
        # After a server restart the pooled sockets are dead, and the pool's check-out test does not
        # notice; without this every stale connection would fail one request.
        try:
            await self._client.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # best effort: the caller is already failing
            log.debug("dropping idle history connections failed", exc_info=True)

    async def _failed(self, err: BaseException, failure: Failure) -> HistoryUnavailable:
        self.failures += 1
        text = str(err)  # a DENIED reply is a 1 kB essay: the first sentence says it
        message = f"{failure.reason}: {type(err).__name__}: {text if len(text) <= 200 else text[:200] + '...'}"
        self.last_error = message
        if failure.server_wide:
            if self.breaker.failure():
                log.warning(
                    "history store %s unavailable (%s); failing fast for %.1f s at a time",
                    self.url, message, self.retry_after_s,
                )  # fmt: skip
            await self._drop_idle_connections()
        else:
            self.breaker.success()  # the server answered: it is up, this command was refused
            if failure.reason == "error_reply":
                log.error("history store %s refused a command: %s", self.url, message)
        return HistoryUnavailable(
            f"history store unavailable ({message}) at {self.url}", reason=failure.reason, applied=failure.applied
        )

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        self._admit()
        try:
            result = await within(op, self.timeout_s)
        except MaxConnectionsError as err:
            # The pool is saturated, Redis itself is fine: fall back for this call only.
            self.failures += 1
            self.breaker.release()
            raise HistoryUnavailable(f"history store busy ({err}) at {self.url}", "pool_exhausted", False) from err
        except BaseException as err:
            failure = classify(err)
            if failure is None:  # a bug or a cancellation, not the store
                self.breaker.release()
                raise
            raise await self._failed(err, failure) from err
        if self.breaker.success():
            log.info("history store %s reachable again", self.url)
        return result

    async def get(self, user_id: str, limit: int) -> list[Event]:
        if limit <= 0:  # LRANGE 0 -1 would mean "everything"
            return []
        raw = await self._call(lambda: self._client.lrange(history_key(self.prefix, user_id), 0, limit - 1))
        return [_decode(r) for r in reversed(raw)]

    async def get_many(self, user_ids: list[str], limit: int) -> list[list[Event]]:
        if limit <= 0 or not user_ids:
            return [[] for _ in user_ids]
        if len(user_ids) == 1:  # the common single-user request: no pipeline machinery
            return [await self.get(user_ids[0], limit)]

        async def run() -> list[list[str]]:
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.lrange(history_key(self.prefix, user_id), 0, limit - 1)
                replies: list[list[str]] = await pipe.execute()
                return replies

        return [[_decode(r) for r in reversed(raw)] for raw in await self._call(run)]

    async def append(self, user_id: str, events: list[Event], idempotency_key: str | None = None) -> Appended:
        key = history_key(self.prefix, user_id)
        if not events:  # nothing to write: report the length
            return Appended(0, int(await self._call(lambda: self._client.llen(key))))
        encoded = [_encode(e) for e in events]
        fingerprint = _fingerprint([_encode(_as_sent(e)) for e in events])
        keys = [key]
        if idempotency_key is not None:
            keys.append(idempotency_marker_key(self.prefix, user_id, idempotency_key))
        args = [self.max_len, self.ttl_seconds or 0, self.idempotency_ttl_s, fingerprint, *encoded]
        try:
            flag, value = await self._call(lambda: self._append_script(keys=keys, args=args))
        except HistoryUnavailable as exc:
            if exc.reason in ("read_only", "out_of_memory", "no_permission", "error_reply"):
                self._write_error = str(exc)
            raise
        self._write_error = None
        if int(flag) == 0:
            return Appended(len(events), int(value))
        seen_fingerprint, stored, length = str(value).split(":")
        if seen_fingerprint != fingerprint:
            raise IdempotencyConflict("this Idempotency-Key was already used for different events")
        return Appended(int(stored), int(length), replayed=True)

    async def warm_up(self, connections: int) -> int:
        """Opens up to ``connections`` pooled connections now (at start), so the first requests of
        a burst do not each pay for a connection (connect and handshake) out of their deadline.
        Returns how many are open; never raises (a store that is down is found by the requests)."""
        pool = getattr(self._client, "connection_pool", None)  # a Cluster client has one per node
        if pool is None:
            return 0
        opened: list[Any] = []
        try:
            for _ in range(min(connections, self.max_connections)):
                opened.append(await asyncio.wait_for(pool.get_connection(), BACKSTOP_TIMEOUT_S))
        except Exception as err:  # best effort
            log.warning("history store %s: could not open the connection pool (%s)", self.url, err)
        finally:
            for connection in opened:
                await pool.release(connection)
        return len(opened)

    async def health(self) -> tuple[str, str | None]:
        # Always tries, even while the breaker is open: readiness has to be able to see a recovery.
        try:
            await within(self._client.ping, self.timeout_s)
        except MaxConnectionsError:
            return "unavailable", "connection pool exhausted"
        except Exception as err:  # readiness must never raise
            failure = classify(err)
            if failure is None:
                log.exception("history store %s ping failed", self.url)
                return "unavailable", f"{type(err).__name__}: {err}"
            return "unavailable", str(await self._failed(err, failure))
        if self.breaker.success():
            log.info("history store %s reachable again", self.url)
        if self._write_error:
            return "writes_failing", self._write_error
        return "ok", None

    async def ping(self) -> bool:
        return (await self.health())[0] != "unavailable"

    async def close(self) -> None:
        await self._client.aclose()


def merge_by_time(stored: Sequence[Event], new: Sequence[Event], max_len: int) -> list[Event]:
    """The one order of a history (both stores, and what `remi history load` writes): by timestamp,
    oldest first, the newest ``max_len`` kept. Equal timestamps keep their arrival order (stored
    before new, a batch in its own order). An event without a timestamp takes the newest time
    known when it arrives (the latest timestamp stored or earlier in its batch), so it goes after
    everything there and an event with an older timestamp that comes later goes before it; at the
    start of a history it counts as older than any timestamp. ``stored`` is in this order already.
    """
    events = [*stored, *new]
    keys: list[tuple[int, int]] = []  # (has a time, effective time)
    latest: int | None = None
    for event in events:
        if event.timestamp is not None and (latest is None or event.timestamp > latest):
            latest = event.timestamp
        effective = event.timestamp if event.timestamp is not None else latest
        keys.append((0, 0) if effective is None else (1, effective))
    order = sorted(range(len(events)), key=lambda n: (keys[n], n))
    return [events[n] for n in order[max(0, len(order) - max_len) :]]


def continues(newest: int | None, events: Sequence[Event]) -> bool:
    """Whether ``events`` can go after a history whose newest effective time is ``newest`` as they are."""
    for event in events:
        if event.timestamp is not None:
            if newest is not None and event.timestamp < newest:
                return False
            newest = event.timestamp
    return True


class MemoryHistory:
    """In-process histories for the quick start: no Redis, nothing shared between workers, lost on restart."""

    def __init__(
        self,
        max_len: int = _DEFAULTS.history_max_len,
        idempotency_ttl_s: float = _DEFAULTS.idempotency_ttl_s,
        idempotency_max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self._data: dict[str, deque[Event]] = {}  # oldest on the left; maxlen drops the oldest
        # (user, key) -> (fingerprint, stored, length, expires at); oldest first, bounded.
        self._seen: OrderedDict[tuple[str, str], tuple[str, int, int, float]] = OrderedDict()
        self._idempotency_ttl_s = idempotency_ttl_s
        self._idempotency_max_keys = idempotency_max_keys
        self._clock = clock

    async def get(self, user_id: str, limit: int) -> list[Event]:
        events = self._data.get(user_id)
        if not events or limit <= 0:
            return []
        return list(events)[-limit:]

    async def get_many(self, user_ids: list[str], limit: int) -> list[list[Event]]:
        return [await self.get(u, limit) for u in user_ids]

    async def append(self, user_id: str, events: list[Event], idempotency_key: str | None = None) -> Appended:
        # No await before the write: one event loop, so check-and-append is atomic here too.
        fingerprint = _fingerprint([_encode(_as_sent(e)) for e in events])
        now = self._clock()
        while self._seen and next(iter(self._seen.values()))[3] <= now:
            self._seen.popitem(last=False)  # expired (insertion order = expiry order)
        if idempotency_key is not None:
            seen = self._seen.get((user_id, idempotency_key))
            if seen is not None:
                if seen[0] != fingerprint:
                    raise IdempotencyConflict("this Idempotency-Key was already used for different events")
                return Appended(seen[1], seen[2], replayed=True)
        stored = self._data.setdefault(user_id, deque(maxlen=self.max_len))
        newest = next((e.timestamp for e in reversed(stored) if e.timestamp is not None), None)
        if continues(newest, events):
            stored.extend(events)
        else:  # an event older than the newest stored one: merged in timestamp order (rare, <= max_len)
            merged = merge_by_time(stored, events, self.max_len)
            stored.clear()
            stored.extend(merged)
        if idempotency_key is not None:
            self._seen[(user_id, idempotency_key)] = (
                fingerprint,
                len(events),
                len(stored),
                now + self._idempotency_ttl_s,
            )
            while len(self._seen) > self._idempotency_max_keys:
                self._seen.popitem(last=False)
        return Appended(len(events), len(stored))

    async def ping(self) -> bool:
        return True

    async def health(self) -> tuple[str, str | None]:
        return "ok", None

    async def close(self) -> None:
        return None

    def seed_from_csv(self, path: str | Path, known_items: set[str] | None = None) -> int:
        """Load the last `max_len` events per user from a `user_id,item_id,timestamp` CSV(.gz).

        Lets the quick start answer for the users of the training data. Items outside
        `known_items` (the index's catalogue) are skipped so they cannot take a history slot.
        A seeded user's history is replaced. Returns the number of users seeded.
        """
        user_col, item_col, time_col = INTERACTION_COLUMNS
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        missing = set(INTERACTION_COLUMNS) - set(df.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        if known_items is not None:
            df = df[df[item_col].isin(known_items)]
        df = df.assign(**{time_col: df[time_col].astype("int64")})
        # Two stable sorts = by user, then time, equal timestamps keeping their file order.
        df = df.sort_values(time_col, kind="stable").sort_values(user_col, kind="stable")
        if df.empty:
            return 0
        users = df[user_col].to_numpy()
        items, stamps = df[item_col].tolist(), df[time_col].tolist()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            first = max(start, end - self.max_len)
            events = map(Event, items[first:end], stamps[first:end])
            self._data[users[start]] = deque(events, maxlen=self.max_len)
        return len(starts)


def make_history_store(
    redis_url: str | None, *, max_len: int = _DEFAULTS.history_max_len, **redis_kwargs: Any
) -> HistoryStore:
    """RedisHistory when a URL is configured, else the embedded store (Redis-only options are ignored)."""
    if redis_url:
        return RedisHistory(redis_url, max_len=max_len, **redis_kwargs)
    ttl = redis_kwargs.get("idempotency_ttl_s", _DEFAULTS.idempotency_ttl_s)
    return MemoryHistory(max_len=max_len, idempotency_ttl_s=ttl)
