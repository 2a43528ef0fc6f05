"""Per-user interaction history: the input of the user tower at request time.

Two stores share one protocol: `RedisHistory` for deployments (shared by every worker, capped and
expiring per user) and `MemoryHistory` for the quick start with no Redis. Both keep at most
`max_len` events per user and answer oldest first, the order the model was trained on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("remi.history")

T = TypeVar("T")

# What "the store is down or slow" looks like; anything else (a WRONGTYPE reply, a bug) is not a
# reason to fall back silently and propagates.
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_RAW_ID = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


class HistoryUnavailable(Exception):
    """The store cannot be reached or timed out; callers fall back."""


@dataclass(frozen=True)
class Event:
    item_id: str
    timestamp: int | None = None


class HistoryStore(Protocol):
    async def get(self, user_id: str, limit: int) -> list[Event]:
        """The most recent `limit` events, oldest first."""
        ...

    async def get_many(self, user_ids: list[str], limit: int) -> list[list[Event]]:
        """`get` for a batch in one round trip; [] for unknown users."""
        ...

    async def append(self, user_id: str, events: list[Event]) -> int:
        """Add events (the last given is the newest); returns the stored length after capping."""
        ...

    async def ping(self) -> bool:
        """True if the store is usable now; never raises (readiness)."""
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


def _encode(event: Event) -> str:
    return f"{'' if event.timestamp is None else event.timestamp}:{event.item_id}"


def _decode(raw: str) -> Event:
    # The first ':' ends the timestamp; item ids may contain ':' themselves.
    stamp, _, item_id = raw.partition(":")
    return Event(item_id, int(stamp) if stamp else None)


def _public_url(url: str) -> str:
    """The URL without credentials or query (which may carry `password=`), for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<redis>"
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path.partition('?')[0]}"


def _client_for(url: str, **options: Any) -> Any:
    """A client for a plain, Cluster or Sentinel URL.

    * ``redis://`` / ``rediss://`` / ``unix://`` — one server (redis-py's own URL format).
    * ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://`` for TLS) — Redis
      Cluster; one seed node is enough, the client discovers the rest. A user's history is one
      key, so every write stays a single-slot transaction.
    * ``redis+sentinel://host:port[,host:port...]/service_name[/db]`` — Sentinel; the client
      asks the sentinels for the current master of ``service_name`` and follows failovers.
    """
    scheme, _, rest = url.partition("://")
    if scheme in ("redis+cluster", "rediss+cluster"):
        seeds = rest.split("/")[0].split(",")
        base = scheme.replace("+cluster", "")
        options.pop("max_connections", None)  # per node in cluster mode; redis-py sizes it itself
        return aioredis.RedisCluster.from_url(f"{base}://{seeds[0]}", **options)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        hosts, _, path = rest.partition("/")
        parts = [p for p in path.split("/") if p]
        if not parts:
            raise ValueError("a sentinel URL needs the service name: redis+sentinel://host:port/service_name[/db]")
        sentinels = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            sentinels.append((name or host, int(port or 26379)))
        db = int(parts[1]) if len(parts) > 1 else 0
        from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

        timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
        sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts, ssl=scheme.startswith("rediss"), **options)
        return sentinel.master_for(parts[0], connection_pool_class=SentinelConnectionPool, db=db)
    return aioredis.Redis.from_url(url, **options)


class RedisHistory:
    """Histories as Redis lists, newest first, capped at `max_len` and expiring after `ttl_seconds`.

    Timeouts are short and there are no retries: a slow history should cost a request a fallback,
    not its latency budget. After a failure a circuit breaker answers HistoryUnavailable without
    touching the network for `retry_after_s`, so an outage does not add a timeout to every request;
    then one call probes, and its success closes the breaker.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "remi:",
        max_len: int = 200,
        ttl_seconds: int | None = 30 * 86400,
        timeout_s: float = 0.05,
        max_connections: int = 64,
        retry_after_s: float = 1.0,
    ) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if ttl_seconds is not None and ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be >= 1 or None, got {ttl_seconds}")
        if timeout_s <= 0 or retry_after_s < 0 or max_connections < 1:
            raise ValueError("timeout_s and max_connections must be positive, retry_after_s non-negative")
        self.prefix = prefix
        self.max_len = max_len
        self.ttl_seconds = ttl_seconds
        self.retry_after_s = retry_after_s
        self.url = _public_url(url)
        self.failures = 0
        self._open_until: float | None = None  # None: breaker closed
        self._probing = False
        self._client = _client_for(
            url,
            max_connections=max_connections,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    @property
    def available(self) -> bool:
        """False while calls fail fast (the breaker is open or a probe is in flight)."""
        if self._open_until is None:
            return True
        return time.monotonic() >= self._open_until and not self._probing

    def _admit(self) -> bool:
        """Raises while the breaker is open; returns True when this call is the probe."""
        if self._open_until is None:
            return False
        left = self._open_until - time.monotonic()
        if left > 0:
            raise HistoryUnavailable(
                f"history store unavailable (circuit open, next try in {left:.2f} s) at {self.url}"
            )
        if self._probing:
            raise HistoryUnavailable(f"history store unavailable (circuit open, a probe is in flight) at {self.url}")
        self._probing = True
        return True

    def _trip(self, err: BaseException) -> HistoryUnavailable:
        self.failures += 1
        if self._open_until is None:
            log.warning("history store %s unavailable (%s: %s); failing fast", self.url, type(err).__name__, err)
        self._open_until = time.monotonic() + self.retry_after_s
        return HistoryUnavailable(f"history store unavailable ({type(err).__name__}: {err}) at {self.url}")

    async def _drop_idle_connections(self) -> None:
        # After a server restart the pooled sockets are dead, and the pool's check-out test does not
        # notice; without this every stale connection would fail one request and reopen the breaker.
        try:
            await self._client.connection_pool.disconnect(inuse_connections=False)
        except Exception:  # best effort: the caller is already failing
            log.debug("dropping idle history connections failed", exc_info=True)

    def _close_breaker(self) -> None:
        if self._open_until is not None:
            log.info("history store %s reachable again", self.url)
        self._open_until = None

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        probe = self._admit()
        try:
            result = await op()
        except MaxConnectionsError as err:
            # The pool is saturated, Redis itself is fine: fall back for this call only.
            self.failures += 1
            raise HistoryUnavailable(f"history store busy ({err}) at {self.url}") from err
        except _UNAVAILABLE as err:
            unavailable = self._trip(err)  # open first, so nothing is admitted while we clean up
            await self._drop_idle_connections()
            raise unavailable from err
        finally:
            if probe:
                self._probing = False
        self._close_breaker()
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
                return await pipe.execute()

        return [[_decode(r) for r in reversed(raw)] for raw in await self._call(run)]

    async def append(self, user_id: str, events: list[Event]) -> int:
        key = history_key(self.prefix, user_id)
        if not events:  # LPUSH needs at least one value
            return int(await self._call(lambda: self._client.llen(key)))

        async def run() -> list[Any]:
            # MULTI/EXEC: no reader ever sees the list uncapped or without its expiry.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.lpush(key, *(_encode(e) for e in events))
                pipe.ltrim(key, 0, self.max_len - 1)
                if self.ttl_seconds is not None:
                    pipe.expire(key, self.ttl_seconds)
                pipe.llen(key)
                return await pipe.execute()

        return int((await self._call(run))[-1])

    async def ping(self) -> bool:
        # Always tries, even while the breaker is open: readiness has to be able to see a recovery.
        try:
            await self._client.ping()
        except MaxConnectionsError:
            return False
        except _UNAVAILABLE as err:
            self._trip(err)
            await self._drop_idle_connections()
            return False
        except Exception:  # readiness must never raise
            log.exception("history store %s ping failed", self.url)
            return False
        self._close_breaker()
        return True

    async def close(self) -> None:
        await self._client.aclose()


class MemoryHistory:
    """In-process histories for the quick start: no Redis, nothing shared between workers, lost on restart."""

    def __init__(self, max_len: int = 200) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self._data: dict[str, deque[Event]] = {}  # oldest on the left; maxlen drops the oldest

    async def get(self, user_id: str, limit: int) -> list[Event]:
        events = self._data.get(user_id)
        if not events or limit <= 0:
            return []
        return list(events)[-limit:]

    async def get_many(self, user_ids: list[str], limit: int) -> list[list[Event]]:
        return [await self.get(u, limit) for u in user_ids]

    async def append(self, user_id: str, events: list[Event]) -> int:
        stored = self._data.setdefault(user_id, deque(maxlen=self.max_len))
        stored.extend(events)
        return len(stored)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def seed_from_csv(self, path: str | Path, known_items: set[str] | None = None) -> int:
        """Load the last `max_len` events per user from a `user_id,item_id,timestamp` CSV(.gz).

        Lets the quick start answer for the users of the training data. Items outside
        `known_items` (the index's catalogue) are skipped so they cannot take a history slot.
        A seeded user's history is replaced. Returns the number of users seeded.
        """
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
        missing = {"user_id", "item_id", "timestamp"} - set(df.columns)
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        if known_items is not None:
            df = df[df["item_id"].isin(known_items)]
        df = df.assign(timestamp=df["timestamp"].astype("int64"))
        # Two stable sorts = by user, then time, equal timestamps keeping their file order.
        df = df.sort_values("timestamp", kind="stable").sort_values("user_id", kind="stable")
        if df.empty:
            return 0
        users = df["user_id"].to_numpy()
        items, stamps = df["item_id"].tolist(), df["timestamp"].tolist()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            first = max(start, end - self.max_len)
            events = map(Event, items[first:end], stamps[first:end])
            self._data[users[start]] = deque(events, maxlen=self.max_len)
        return len(starts)


def make_history_store(redis_url: str | None, *, max_len: int = 200, **redis_kwargs: Any) -> HistoryStore:
    """RedisHistory when a URL is configured, else the embedded store (Redis-only options are ignored)."""
    if redis_url:
        return RedisHistory(redis_url, max_len=max_len, **redis_kwargs)
    return MemoryHistory(max_len=max_len)
