"""A per-worker budget for large request bodies: how many bytes a second of them a worker decodes.

Why: every body up to REMI_MAX_BODY_BYTES is read and decoded before a route can refuse it, at
5-80 ms of the event loop per ~1 MiB (benchmarks/results/worst_bodies.md). Four clients looping
such bodies kept both workers of the 2-core reference machine busy decoding, and normal requests'
p99 went from 20 ms to 180-320 ms (benchmarks/results/hostile.md). Normal traffic is small bodies
(a /recommend request is a few hundred bytes to a few KiB), so only the large ones are rationed:

* a body larger than REMI_BULK_BODY_MIN_BYTES draws its size from a token bucket that refills at
  REMI_BULK_BODY_BYTES_PER_S and holds max(REMI_MAX_BODY_BYTES, 2 x rate), so a quiet worker
  always admits one largest legitimate body at once;
* a declared body (Content-Length) the bucket cannot pay is answered at once, before one byte of
  it is read: 503, ``Retry-After: 1``, ``Connection: close`` (the unread body is not drained);
* a streamed body (chunked) is charged as it arrives, from the chunk that takes it over the
  threshold on (that charge covers the whole body so far); a chunk the bucket cannot pay ends
  it with the same 503, as :class:`service.http_guards.BodyTooLarge` does with its 413;
* small bodies never touch the bucket, nor do the probes and /metrics; a body declared over
  REMI_MAX_BODY_BYTES is left to its 413. A rate of 0 turns the budget off.

It runs first in ``RemiAPI.__call__`` (service/app.py), so the /recommend fast path, which answers
before the middlewares, is covered too; the credential check before it (service/credentials_first.py)
keeps a client without a valid credential from spending the budget of those who have one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from service import telemetry
from service.config import ServiceSettings

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # never refused: probes and scrapes
RETRY_AFTER_S = 1
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenBucket:
    """``rate`` tokens a second up to ``burst``, starting full; a take is all or nothing."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens = burst
        self._stamp = clock()

    def take(self, n: int) -> bool:
        """Pays ``n`` tokens when the bucket holds them (True); else takes nothing (False)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


def _detail(rate: float) -> str:
    return (
        f"this worker's budget for large request bodies ({rate:,.0f} bytes/s, REMI_BULK_BODY_BYTES_PER_S) is "
        f"spent: retry after {RETRY_AFTER_S} s"
    )


class BulkBudgetSpent(HTTPException):
    """Raised from ``receive`` when a streamed body's next chunk cannot be paid; an HTTPException,
    so FastAPI's body reader re-raises it and the app renders it (503 with the headers below)."""

    def __init__(self, rate: float) -> None:
        headers = {"Retry-After": str(RETRY_AFTER_S), "Connection": "close"}
        super().__init__(503, _detail(rate), headers=headers)


def _declared_length(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length if one valid value was sent, whether the body is streamed without one)."""
    length: int | None = None
    streamed = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            streamed = True
    return length, streamed and length is None


class BulkBodyBudget:
    """The budget of one worker (module docstring); call it with the app it guards."""

    def __init__(self, rate: float, min_bytes: int, max_body_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.min_bytes, self.max_body_bytes = rate, min_bytes, max_body_bytes
        self.bucket = TokenBucket(rate, max(max_body_bytes, 2 * rate), clock)

    @classmethod
    def of(cls, settings: ServiceSettings, clock: Callable[[], float] = time.monotonic) -> BulkBodyBudget | None:
        """The budget the settings ask for; None when REMI_BULK_BODY_BYTES_PER_S is 0 (off)."""
        if settings.bulk_body_bytes_per_s <= 0:
            return None
        return cls(settings.bulk_body_bytes_per_s, settings.bulk_body_min_bytes, settings.max_body_bytes, clock)

    async def __call__(self, app: App, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in EXEMPT_PATHS:
            await app(scope, receive, send)
            return
        declared, streamed = _declared_length(scope)
        if declared is not None:
            if self.min_bytes < declared <= self.max_body_bytes:  # over the limit: its 413 follows, unread
                if not self.bucket.take(declared):
                    telemetry.BULK_BODIES_REFUSED.labels("declared").inc()
                    await self._send_503(send)
                    return
                telemetry.BULK_BODY_BYTES.inc(declared)
            await app(scope, receive, send)
            return
        if not streamed:
            await app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, self._charging(receive), tracking_send)
        except BulkBudgetSpent:
            if started:
                raise
            await self._send_503(send)

    def _charging(self, receive: Receive) -> Receive:
        """``receive`` that charges a streamed body's chunks once it is past the threshold."""
        received = 0

        async def charged() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] != "http.request":
                return message
            size = len(message.get("body", b""))
            before, received = received, received + size
            if received <= self.min_bytes or received > self.max_body_bytes:  # small so far, or a 413 now
                return message
            cost = received if before <= self.min_bytes else size
            if not self.bucket.take(cost):
                telemetry.BULK_BODIES_REFUSED.labels("streamed").inc()
                raise BulkBudgetSpent(self.rate)
            telemetry.BULK_BODY_BYTES.inc(cost)
            return message

        return charged

    async def _send_503(self, send: Send) -> None:
        body = orjson.dumps({"detail": _detail(self.rate)})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
