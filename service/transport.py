"""The connection layer under the app: what one client may hold of a worker
(docs/operations.md#hostile-clients-what-one-connection-may-hold).

uvicorn's HTTP protocol (httptools) bounds nothing a client sends before the app sees a
request, nor how long it may take: ~20,600 sockets that sent nothing held one worker until
every ``POST /recommend`` went unanswered and the index poller failed with ``Too many open
files``; clients sending a byte a second were never dropped; a 100 MB header was accepted after
16 s (httptools grows a header value by concatenation) while every other request of the worker
waited. uvicorn's ``limit_concurrency`` does not help: it answers 503 only after a whole head
arrived, and it has no head timeout. :class:`GuardedHttpToolsProtocol` adds, per connection:

* a **head timeout**: the request line and headers must arrive within ``request_head_timeout_s``
  of the connection's start (or of the first byte of a later request on it), however slowly
  they trickle; else 408 (or a silent close when nothing came) -- the slowloris defence;
* the **keep-alive timeout** between requests (uvicorn's, in seconds with a fraction);
* a **body timeout**: the body must follow its head within ``request_body_timeout_s``;
* a **connection cap** per worker: a connection over it is answered 503 and closed as it is
  accepted, before it costs a parser or a timer, while admitted connections keep being served;
  the cap never exceeds the open-file limit less ``fd_headroom``, so the worker can always open
  its own files (a new index version, the model, Redis connections, metrics files);
* **head limits**: more than ``max_head_bytes`` of request line + headers, or more than
  ``max_headers`` header lines, is 431 (414 for the request line alone) as soon as the limit is
  passed, before any body is read and without buffering the rest.

Both ways ``remi serve`` runs (one process, or SO_REUSEPORT workers; service/workers.py) build
their server with :func:`server_config`, so the limits are the same everywhere.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import telemetry
from service.config import ServiceSettings

log = logging.getLogger("remi.service")

REQUEST_LINE_OVERHEAD = 16  # method, spaces, "HTTP/1.1", CRLF: what the parser does not hand back
HEADER_LINE_OVERHEAD = 4  # ": " and CRLF around each header's name and value


@dataclass(frozen=True)
class TransportLimits:
    """The connection limits of one worker (see the module docstring and ServiceSettings)."""

    head_timeout_s: float
    keep_alive_s: float
    body_timeout_s: float
    max_connections: int  # already capped by the open-file limit (see connection_cap)
    max_head_bytes: int
    max_headers: int

    @classmethod
    def of(cls, settings: ServiceSettings, open_files: int) -> TransportLimits:
        return cls(
            head_timeout_s=settings.request_head_timeout_s,
            keep_alive_s=settings.keep_alive_timeout_s,
            body_timeout_s=settings.request_body_timeout_s,
            max_connections=connection_cap(settings.max_connections, open_files, settings.fd_headroom),
            max_head_bytes=settings.max_head_bytes,
            max_headers=settings.max_headers,
        )


def raise_open_file_limit() -> int:
    """Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit now in force.

    Distributions start services with a low soft limit (often 1,024) under a high hard one; the
    soft one is what runs out first under many connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. a hard limit above the kernel's nr_open
            log.warning("could not raise the open-file limit", extra={"soft": soft, "hard": hard, "error": str(exc)})
    return soft


def connection_cap(configured: int, open_files: int, headroom: int) -> int:
    """The connections one worker admits: ``configured``, but never so many that fewer than
    ``headroom`` file descriptors remain for the worker's own files (at least 1)."""
    cap = min(configured, open_files - headroom)
    if cap < configured:
        log.warning(
            "connection cap lowered to fit the open-file limit",
            extra={"max_connections": configured, "open_files": open_files, "fd_headroom": headroom, "cap": cap},
        )
    return max(1, cap)


def _response(status: str, text: str) -> bytes:
    body = text.encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    if status.startswith("503"):
        head += "retry-after: 1\r\n"
    return head.encode() + b"\r\n" + body


OVER_CAP = _response("503 Service Unavailable", "server at its connection limit (REMI_MAX_CONNECTIONS)")
HEAD_TIMEOUT = _response("408 Request Timeout", "request head not received in time (REMI_REQUEST_HEAD_TIMEOUT_S)")
BODY_TIMEOUT = _response("408 Request Timeout", "request body not received in time (REMI_REQUEST_BODY_TIMEOUT_S)")
HEAD_TOO_LARGE = _response(
    "431 Request Header Fields Too Large", "request head larger than allowed (REMI_MAX_HEAD_BYTES)"
)
TOO_MANY_HEADERS = _response("431 Request Header Fields Too Large", "more header lines than allowed (REMI_MAX_HEADERS)")
URL_TOO_LONG = _response("414 URI Too Long", "request line longer than allowed (REMI_MAX_HEAD_BYTES)")


class _Rejected(Exception):
    """Raised from a parser callback to stop parsing a head that broke a limit."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`TransportLimits` (module docstring).

    uvicorn makes one instance per accepted connection; ``limits`` is set on the subclass that
    :func:`protocol_class` makes for one server.
    """

    limits: ClassVar[TransportLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None  # the head or body deadline running now
        self._refused = False
        self._awaiting_head = True  # between requests or inside a head (not in a body)
        self._head_started = False  # a byte of the head being awaited has arrived
        self._head_bytes = 0  # raw bytes received for that head (the parser buffers a header whole)
        self._header_bytes = 0
        self._header_lines = 0
        self._rejection: tuple[bytes, str] | None = None

    # ------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # Refused before it takes a place in `connections`, a timer or a read.
            self._refused = True
            self.transport = transport
            transport.write(OVER_CAP)
            transport.close()
            telemetry.CONNECTIONS_CLOSED.labels("over_cap").inc()
            return
        super().connection_made(transport)
        self._arm(self.limits.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            self.parser = None  # type: ignore[assignment]
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self.parser is None:
            return
        self._unset_keepalive_if_required()
        if self._awaiting_head:
            if self._timer is None:  # the first byte after a keep-alive pause: this head's clock starts
                self._arm(self.limits.head_timeout_s, self._head_timed_out)
            self._head_started = True
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._rejection is not None:
                self._reject(*self._rejection)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self._awaiting_head and self._head_bytes > self.limits.max_head_bytes:
            self._reject(HEAD_TOO_LARGE, "head_too_large")  # an unfinished head already over the limit

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = REQUEST_LINE_OVERHEAD
        self._header_lines = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) + REQUEST_LINE_OVERHEAD > self.limits.max_head_bytes:
            self._rejection = (URL_TOO_LONG, "url_too_long")
            raise _Rejected
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_lines += 1
        self._header_bytes += len(name) + len(value) + HEADER_LINE_OVERHEAD
        if self._header_lines > self.limits.max_headers:
            self._rejection = (TOO_MANY_HEADERS, "too_many_headers")
            raise _Rejected
        if self._header_bytes > self.limits.max_head_bytes:
            self._rejection = (HEAD_TOO_LARGE, "head_too_large")
            raise _Rejected
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._awaiting_head = False
        self._head_started = False
        self._head_bytes = 0
        self._arm(self.limits.body_timeout_s, self._body_timed_out)  # cancelled when the message completes
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._awaiting_head = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # uvicorn's timer, in whole seconds: ours has fractions
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.limits.keep_alive_s, self.timeout_keep_alive_handler
            )

    # ------------------------------------------------------------ limits

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._head_started:  # a head that began and did not finish: say why
            self._close(HEAD_TIMEOUT, "head_timeout")
        else:  # nothing asked: nothing to answer
            self._close(None, "head_timeout")

    def _body_timed_out(self) -> None:
        self._timer = None
        started = self.cycle is not None and self.cycle.response_started
        self._close(None if started else BODY_TIMEOUT, "body_timeout")

    def _reject(self, response: bytes, reason: str) -> None:
        self._rejection = None
        self._close(response, reason)

    def _close(self, response: bytes | None, reason: str) -> None:
        """Answers ``response`` (unless one was already started) and closes the connection; the
        request in progress, if any, sees a disconnect and writes nothing more."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                response = None
            cycle.disconnected = True
            cycle.message_event.set()
        if response is not None:
            self.transport.write(response)
        self.transport.close()
        telemetry.CONNECTIONS_CLOSED.labels(reason).inc()


def protocol_class(limits: TransportLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for one server, carrying its limits (uvicorn takes a class, not an instance)."""
    return type("RemiHttpProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def server_config(factory: str, log_level: str, access_log: bool, settings: ServiceSettings | None = None) -> Config:
    """The uvicorn config of a server process of ``remi serve``: the app ``factory`` behind the
    guarded protocol, with the connection limits of ``settings`` (default: the REMI_* environment).
    Raises the process's open-file limit first (see :func:`raise_open_file_limit`)."""
    settings = settings or ServiceSettings()
    limits = TransportLimits.of(settings, raise_open_file_limit())
    log.info(
        "connection limits",
        extra={
            "max_connections": limits.max_connections,
            "head_timeout_s": limits.head_timeout_s,
            "keep_alive_s": limits.keep_alive_s,
            "body_timeout_s": limits.body_timeout_s,
        },
    )
    return Config(
        factory,
        factory=True,
        http=protocol_class(limits),
        log_level=log_level,
        access_log=access_log,
        log_config=None,
        timeout_keep_alive=max(1, math.ceil(limits.keep_alive_s)),
    )
