"""The Redis plumbing every Redis user of the service shares: one client factory for every
topology, what a failure means, a deadline that a busy event loop does not eat, a circuit breaker.

Users: the history store (service/history.py), the live blocklist (service/blocklist.py) and the
bulk loader (service/history_load.py). Nothing here knows about histories or blocklists.

* :func:`client_for` — a client for a plain, Cluster or Sentinel URL; :func:`public_url` — that
  URL without credentials, for messages and logs.
* :func:`classify` — a redis-py exception as a :class:`Failure`: its reason, whether the command
  may have run, whether the server as a whole is unusable (what the breaker counts).
* :func:`within` — a call's deadline as the service measures it, not redis-py's socket timer.
* :class:`CircuitBreaker` — fail fast on a sustained failure rate, not on one late reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as redis_exceptions
from redis.exceptions import AuthenticationError, BusyLoadingError, RedisError

T = TypeVar("T")


def public_url(url: str) -> str:
    """The URL without credentials or query (which may carry `password=`), for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<redis>"
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path.partition('?')[0]}"


def client_for(url: str, **options: Any) -> Any:
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
        unannotated_sentinel: Any = Sentinel  # redis-py declares no types for its constructor
        sentinel = unannotated_sentinel(sentinels, sentinel_kwargs=timeouts, ssl=scheme.startswith("rediss"), **options)
        return sentinel.master_for(parts[0], connection_pool_class=SentinelConnectionPool, db=db)
    return aioredis.Redis.from_url(url, **options)


@dataclass(frozen=True)
class Failure:
    """What a failed Redis call means (:func:`classify`)."""

    reason: str
    applied: bool | None  # False: the command never ran; None: unknown
    server_wide: bool  # the server as a whole is unusable (counts for the breaker), not this one command


# Error replies that mean "this server cannot serve anyone now", whatever the command.
_SERVER_WIDE_REPLIES = {
    "DENIED": "denied",
    "NOAUTH": "auth",
    "WRONGPASS": "auth",
    "LOADING": "loading",
    "MASTERDOWN": "master_down",
    "CLUSTERDOWN": "cluster_down",
    "TRYAGAIN": "try_again",
}
# Error replies refusing one command on a reachable server: reads may still work, no breaker.
_COMMAND_REPLIES = {"READONLY": "read_only", "OOM": "out_of_memory", "NOPERM": "no_permission"}


_NETWORK = (redis_exceptions.ConnectionError, redis_exceptions.TimeoutError, OSError, asyncio.TimeoutError)
_CONNECT_FAILED = re.compile(r"(Error [-\w]+|Timeout) connecting to ")  # redis-py's wording for connect()


def classify(err: BaseException) -> Failure | None:
    """What a failed Redis call means for fallbacks, the breaker and the client; None = not a store failure.

    Every redis-py exception is a store failure (a handshake refused with DENIED arrives as a plain
    ResponseError), so none of them can turn a read into a 500.
    """
    if isinstance(err, BusyLoadingError):
        return Failure("loading", False, True)
    if isinstance(err, AuthenticationError):
        return Failure("auth", False, True)
    text = str(err)
    if isinstance(err, _NETWORK) and _CONNECT_FAILED.match(text):
        # "Error 111 connecting to host:port", "Timeout connecting to server": nothing was sent.
        return Failure("unreachable", False, True)
    if isinstance(err, (redis_exceptions.TimeoutError, asyncio.TimeoutError)):
        return Failure("timeout", None, True)
    if isinstance(err, (redis_exceptions.ConnectionError, OSError)):
        return Failure("connection_lost", None, True)
    if isinstance(err, redis_exceptions.ResponseError):
        code = text.split(" ", 1)[0].upper()
        if code in _SERVER_WIDE_REPLIES:
            return Failure(_SERVER_WIDE_REPLIES[code], False, True)
        if code in _COMMAND_REPLIES:
            return Failure(_COMMAND_REPLIES[code], False, False)
        # ReadOnlyError & co. are subclasses whose message no longer starts with the code.
        for cls, reason in ((redis_exceptions.ReadOnlyError, "read_only"),
                            (redis_exceptions.OutOfMemoryError, "out_of_memory"),
                            (redis_exceptions.NoPermissionError, "no_permission")):  # fmt: skip
            if isinstance(err, cls):
                return Failure(reason, False, False)
        return Failure("error_reply", False, False)
    if isinstance(err, RedisError):
        return Failure("redis_error", None, True)
    return None


# Client-side socket timeouts are only a backstop (a Redis call's deadline is `within`'s), so
# a loop that comes back late still finds the reply or the connection that waits in its socket.
BACKSTOP_TIMEOUT_S = 1.0
_GRACE_TURNS = 3  # loop turns after a missed deadline: enough to read a reply already received


async def within(op: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """``op()`` with a deadline of ``timeout_s`` that a busy or descheduled event loop does not eat.

    A plain timer (redis-py's socket timeout) fires whenever the loop comes back after it is
    due, even with the reply (or the new connection) already waiting in the socket: on a loaded
    2-core box with two workers a few answers in 10k fell back with a healthy Redis
    (docs/operations.md, "Scaling the API horizontally", timeouts under load). Here a missed
    deadline first lets the loop turn a few times (a reply already received is read), and if
    the timer itself fired late by half the timeout or more (the loop, not Redis, was slow) the
    call gets one more window. A server that does not answer still fails
    the call within about twice the timeout; then ``redis.exceptions.TimeoutError`` (the call is
    cancelled, and redis-py drops its connection).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(op())
    deadline = loop.time() + timeout_s
    extended = False
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            if done:
                return task.result()
            late = loop.time() - deadline
            for _ in range(_GRACE_TURNS):
                await asyncio.sleep(0)
                if task.done():
                    return task.result()
            if extended or late < timeout_s / 2:
                raise redis_exceptions.TimeoutError(f"Timeout: no reply within {timeout_s * 1000:.0f} ms")
            extended = True
            deadline = loop.time() + timeout_s
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class CircuitBreaker:
    """Opens on a sustained failure rate, not on one late reply.

    Calls and failures are counted in a rolling window of `window_s` (ten buckets). The breaker
    opens when the window holds at least `min_failures` failures AND they are at least
    `failure_rate` of its calls: a down server (every call fails) opens it after `min_failures`
    calls, while a few slow replies among hundreds on a busy event loop never do. Open, it fails
    calls fast for `open_s`; then one call probes: success closes it (and clears the window),
    failure reopens it. `clock` is injectable so the policy is testable without sleeping.
    """

    def __init__(
        self,
        *,
        window_s: float = 10.0,
        min_failures: int = 5,
        failure_rate: float = 0.5,
        open_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_s <= 0 or min_failures < 1 or not 0 < failure_rate <= 1 or open_s < 0:
            raise ValueError("breaker: window_s > 0, min_failures >= 1, 0 < failure_rate <= 1, open_s >= 0")
        self.window_s, self.min_failures, self.failure_rate, self.open_s = window_s, min_failures, failure_rate, open_s
        self.clock = clock
        self._bucket_s = window_s / 10
        self._buckets: deque[list[float]] = deque()  # [bucket start, calls, failures], oldest first
        self.open_until: float | None = None  # None: closed
        self.probing = False
        self.trips = 0

    def _bucket(self, now: float) -> list[float]:
        while self._buckets and self._buckets[0][0] <= now - self.window_s:
            self._buckets.popleft()
        start = now - now % self._bucket_s
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append([start, 0, 0])
        return self._buckets[-1]

    def counts(self) -> tuple[int, int]:
        """(calls, failures) in the window now."""
        self._bucket(self.clock())
        return int(sum(b[1] for b in self._buckets)), int(sum(b[2] for b in self._buckets))

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def admit(self) -> tuple[bool, float]:
        """(allowed, seconds left open); allowed with the breaker open means this call is the probe."""
        if self.open_until is None:
            return True, 0.0
        left = self.open_until - self.clock()
        if left > 0 or self.probing:
            return False, max(left, 0.0)
        self.probing = True
        return True, 0.0

    def success(self) -> bool:
        """Records a call the server answered; True if this closed an open breaker."""
        self.probing = False
        closed = self.open_until is not None
        if closed:  # a fresh start: the outage's failures must not re-open it
            self.open_until = None
            self._buckets.clear()
        self._bucket(self.clock())[1] += 1
        return closed

    def failure(self) -> bool:
        """Records a server-wide failure; True if this opened the breaker (it was closed)."""
        now = self.clock()
        bucket = self._bucket(now)
        bucket[1] += 1
        bucket[2] += 1
        if self.open_until is not None:  # a failed probe (or a call admitted before the trip)
            self.probing = False
            self.open_until = now + self.open_s
            return False
        calls, failures = self.counts()
        if failures >= self.min_failures and failures >= self.failure_rate * calls:
            self.open_until = now + self.open_s
            self.trips += 1
            return True
        return False

    def release(self) -> None:
        """A probe ended with neither verdict (e.g. the pool was busy): let the next call probe."""
        self.probing = False
