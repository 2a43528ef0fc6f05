"""The Redis plumbing every Redis user of the service shares: one client factory for every
topology, what a failure means, a deadline that a busy event loop does not eat, a circuit breaker.

Users: the history store (service/history.py), the live blocklist (service/blocklist.py) and the
bulk loader (service/history_load.py). Nothing here knows about histories or blocklists.

* :func:`client_for` — a client for a plain, Cluster or Sentinel URL (:func:`parse_url`: the URL
  grammar), with the credentials and TLS files of :class:`RedisAccess` (REMI_REDIS_* settings,
  secret files included) that the URL leaves out; :func:`node_client` — one cluster node with the
  same; :func:`public_url` — that URL without credentials, for messages and logs.
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
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class RedisAccess:
    """Credentials and TLS files for every connection to Redis, beside the URL (REMI_REDIS_* settings).

    What the URL itself says wins (its user and password, its query options), so a URL that
    carries everything keeps working unchanged; these fill in what it leaves out, which is how a
    password kept out of the URL (a secret file, docs/operations.md "Redis topologies") reaches
    the server, the cluster nodes, the sentinels and the master they name.
    """

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: str = "full"  # full: chain + host name; ca: chain only; none: no check

    def __post_init__(self) -> None:
        if self.tls_verify not in TLS_VERIFY_MODES:
            raise ValueError(f"TLS verify mode {self.tls_verify!r}: one of {', '.join(TLS_VERIFY_MODES)}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("a TLS client certificate needs both its certificate and its key file")

    @property
    def wants_tls(self) -> bool:
        """TLS settings other than the defaults: they make no sense on a plain-text URL."""
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        return any(f is not None for f in files) or self.tls_verify != "full"

    def data_options(self, tls: bool) -> dict[str, Any]:
        """Connection options for data nodes (a server, a cluster node, a sentinel's master)."""
        options: dict[str, Any] = {}
        if self.username is not None:
            options["username"] = self.username
        if self.password is not None:
            options["password"] = self.password
        return options | (self.tls_options() if tls else {})

    def sentinel_options(self, tls: bool) -> dict[str, Any]:
        """Connection options for the sentinels themselves (their own ACL user and password)."""
        options: dict[str, Any] = {}
        if self.sentinel_username is not None:
            options["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            options["password"] = self.sentinel_password
        return options | (self.tls_options() | {"ssl": True} if tls else {})

    def tls_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "ssl_cert_reqs": "none" if self.tls_verify == "none" else "required",
            "ssl_check_hostname": self.tls_verify == "full",
        }
        for name, value in (("ssl_ca_certs", self.tls_ca_file), ("ssl_certfile", self.tls_cert_file),
                            ("ssl_keyfile", self.tls_key_file)):  # fmt: skip
            if value is not None:
                options[name] = value
        return options


TLS_VERIFY_MODES = ("full", "ca", "none")
NO_ACCESS = RedisAccess()
_TLS_SCHEMES = ("rediss", "rediss+cluster", "rediss+sentinel")
_SCHEMES = ("redis", "unix", "redis+cluster", "redis+sentinel", *_TLS_SCHEMES)


@dataclass(frozen=True)
class Target:
    """What a Redis URL names (:func:`parse_url`): the topology, its nodes and the connection options."""

    kind: str  # "server", "cluster" or "sentinel"
    tls: bool
    nodes: tuple[tuple[str, int], ...]  # cluster seeds or sentinels; () for one server
    service_name: str | None  # the sentinels' name of the master
    options: dict[str, Any] = field(repr=False)  # for data-node connections: the URL's, then RedisAccess's
    sentinel_options: dict[str, Any] = field(repr=False)  # for the sentinels' own connections


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.partition(":") if text.count(":") == 1 else (text, "", "")
    if not host:
        raise ValueError(f"empty host in {text!r}")
    try:
        return host, int(port) if port else default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None


def _url_options(userinfo: str, path: str, query: str) -> dict[str, Any]:
    """User, password, db and query options as redis-py reads them from a one-server URL."""
    from redis.asyncio.connection import parse_url as redis_parse_url

    at = f"{userinfo}@" if userinfo else ""
    options = dict(redis_parse_url(f"redis://{at}placeholder/{path}?{query}"))
    options.pop("host", None)
    return options


def parse_url(url: str, access: RedisAccess = NO_ACCESS) -> Target:
    """Reads a Redis URL (grammar in :func:`client_for`); ValueError names what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in _SCHEMES)}")
    tls = scheme in _TLS_SCHEMES
    if access.wants_tls and not tls:
        raise ValueError("TLS settings (REMI_REDIS_TLS_*) need a TLS URL: rediss://, rediss+cluster:// or "
                         "rediss+sentinel://")  # fmt: skip
    if scheme in ("redis", "rediss", "unix"):
        return Target("server", tls, (), None, access.data_options(tls), {})
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    if scheme.endswith("+cluster"):
        seeds = tuple(_host_port(h, 6379) for h in hosts.split(","))
        options = _url_options(userinfo, path, query)
        if options.pop("db", 0):
            raise ValueError("Redis Cluster has only db 0")
        return Target("cluster", tls, seeds, None, access.data_options(tls) | options, {})
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("a sentinel URL needs the service name: redis+sentinel://host:port/service_name[/db]")
    sentinels = tuple(_host_port(h, 26379) for h in hosts.split(","))
    options = _url_options(userinfo, parts[1] if len(parts) > 1 else "", query)
    own = {k.removeprefix("sentinel_"): options.pop(k) for k in ("sentinel_username", "sentinel_password")
           if k in options}  # fmt: skip
    return Target("sentinel", tls, sentinels, parts[0], access.data_options(tls) | options,
                  access.sentinel_options(tls) | own)  # fmt: skip


def client_for(url: str, access: RedisAccess = NO_ACCESS, **options: Any) -> Any:
    """A client for a plain, Cluster or Sentinel URL, with ``access``'s credentials and TLS files.

    * ``redis://[user:password@]host:port/db[?option=value...]`` (``rediss://`` for TLS,
      ``unix:///path.sock``) — one server, redis-py's own URL format.
    * ``redis+cluster://[user:password@]host:port[,host:port...][?option=value...]``
      (``rediss+cluster://``) — Redis Cluster; every host:port is a seed (the client starts
      from whichever answers and discovers the rest), the query options apply to every node.
      A user's history is one key, so every write stays a single-slot script.
    * ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?option=value...]``
      (``rediss+sentinel://``: TLS to the sentinels and to the master) — Sentinel; the client
      asks the sentinels for the current master of ``service_name`` and follows failovers. The
      user and password (or ``?username=&password=``) are the master's; the sentinels' own are
      ``?sentinel_username=&sentinel_password=``. ``?db=`` works as the ``/db`` segment does.

    What the URL says wins over ``access`` (REMI_REDIS_USERNAME, _PASSWORD, _SENTINEL_*, _TLS_*).
    Percent-encode a user or password with ``@ : / ? # %`` in them, as in any URL.
    """
    target = parse_url(url, access)
    if target.kind == "server":
        # redis-py's from_url: what the URL says overrides these keyword options.
        return aioredis.Redis.from_url(url, **(options | target.options))
    if target.kind == "cluster":
        options.pop("max_connections", None)  # per node in cluster mode; redis-py sizes it itself
        from redis.asyncio.cluster import ClusterNode

        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        return aioredis.RedisCluster(startup_nodes=nodes, ssl=target.tls, **(options | target.options))
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    # The caller's deadline and retry policy hold for asking the sentinels too.
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout", "retry") if k in options}
    unannotated_sentinel: Any = Sentinel  # redis-py declares no types for its constructor
    sentinel = unannotated_sentinel(
        target.nodes, sentinel_kwargs=timeouts | target.sentinel_options, ssl=target.tls, **(options | target.options)
    )
    return sentinel.master_for(target.service_name, connection_pool_class=SentinelConnectionPool)


def node_client(target: Target, host: str, port: int, **options: Any) -> Any:
    """A one-server client to ``host:port`` (a cluster node) with the target's credentials and TLS."""
    return aioredis.Redis(host=host, port=port, ssl=target.tls, **(options | target.options))


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
_COMMAND_REPLIES = {"READONLY": "read_only", "OOM": "out_of_memory", "NOPERM": "no_permission",
                   "MOVED": "moved", "ASK": "moved"}  # fmt: skip


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
        # redis-py strips the code off the replies it has a class for (ClusterDownError: "The cluster is down").
        code = str(getattr(err, "status_code", None) or text.split(" ", 1)[0]).upper()
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
    if isinstance(err, redis_exceptions.RedisClusterException):  # no node answers for the slot, or none at all
        return Failure("cluster_down", None, True)
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
