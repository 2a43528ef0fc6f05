"""POST /recommend without the framework's per-request layers, for the requests that need none of them.

Why: on a trained 87k-item model the event-loop thread of a worker spent ~0.5 ms per request, as
much as the search itself, and about half of it in the ASGI layers between uvicorn and the route
(FastAPI's and Starlette's middleware, routing, dependency solving, the body reader, the response
object; docs/operations.md#serving-cost-of-a-trained-model,
benchmarks/results/serving_fast_path.md). Nearly every request is the same well-formed JSON object,
so this path answers exactly those:

* a POST to ``/recommend`` sent as ``application/json`` with a Content-Length within the body
  limit, no query string;
* whose body decodes with the service's strict decoder (service/http_guards.py) and validates as
  a :class:`service.schemas.RecommendRequest` under the app's limits;
* while a model is loaded.

Requests with a ``filter`` or ``exclude_items`` take this path too (the same flow filters them);
a filter that does not fit the served model's attributes raises before any work, so it is
replayed like any other bad request and the full app renders its 422.

Anything else -- and any exception before the answer is sent -- is handed to the full app with
the body it already read replayed, so every error (413, 422 naming the field, 503, 500) is
rendered by the one code that renders it, byte for byte. The answer itself comes from the same
flow as the route (service/recommender.py ``recommend_many``) and is encoded the same way; a
test compares both paths' answers. The request still counts in ``remi_requests_total`` and
``remi_request_seconds`` under the route template, as the metrics middleware would count it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from service import telemetry
from service.http_guards import DECODED, decode_json, is_json
from service.recommender import recommend_many
from service.schemas import RecommendRequest
from service.state import State

ROUTE = "/recommend"
App = Callable[[Scope, Receive, Send], Awaitable[None]]
_HEADERS_JSON = [(b"content-type", b"application/json")]


def _worker_header() -> tuple[bytes, bytes]:
    """The X-Remi-Worker header, as the route sends it (service/telemetry.py)."""
    return telemetry.WORKER_HEADER.encode(), telemetry.worker_id().encode()


def eligible(scope: Scope, max_body_bytes: int) -> int | None:
    """The declared body length when ``scope`` may take the fast path, else None."""
    if scope["type"] != "http" or scope["path"] != ROUTE or scope["method"] != "POST" or scope.get("query_string"):
        return None
    length: int | None = None
    content_type = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None  # duplicate or odd: the full app decides
            length = int(value)
        elif name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"transfer-encoding":
            return None
    if length is None or length > max_body_bytes or not is_json(content_type):
        return None
    return length


async def handle(app: App, state: State, scope: Scope, receive: Receive, send: Send, length: int) -> None:
    """Answers the request, on this path or, when it is not a plain one, on ``app``'s."""
    start = time.perf_counter()
    body, tail = await _read_body(receive, length)
    answer = None
    if tail is None:
        answer = await _answer(state, body, scope)
    if answer is None:
        await app(scope, _replay(body, tail, receive), send)
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(answer)).encode()), *_HEADERS_JSON, _worker_header()],
        }
    )
    await send({"type": "http.response.body", "body": answer})
    telemetry.REQUESTS.labels(ROUTE, "POST", "200").inc()
    telemetry.LATENCY.labels(ROUTE).observe(time.perf_counter() - start)


async def _read_body(receive: Receive, length: int) -> tuple[bytes, Message | None]:
    """The body if it arrives whole and as declared; else what was read and the message that broke it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message  # a disconnect: the full app sees it too
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > length:
            return b"".join(chunks), {"type": "http.request", "body": b"", "more_body": message.get("more_body", False)}
        if not message.get("more_body", False):
            body = b"".join(chunks)
            if size != length:
                return body, {"type": "http.request", "body": b"", "more_body": False}
            return body, None


def _replay(body: bytes, tail: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that gives the body already read first, then whatever ``receive`` gives."""
    if tail is not None and tail["type"] != "http.request":  # e.g. a disconnect: the app sees it after the body
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": True}, tail]
    else:
        more = tail is not None and bool(tail.get("more_body", False))
        pending = [{"type": "http.request", "body": body, "more_body": more}]

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _answer(state: State, body: bytes, scope: Scope) -> bytes | None:
    """The answer's bytes, or None to leave the request to the full app (which is handed the
    decoded body of a request that failed validation, so a large bad body is decoded once)."""
    engine = state.versions.engine
    if engine is None:
        return None
    try:
        value = decode_json(body)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None
    try:
        request = RecommendRequest.model_validate(value)
    except ValidationError:
        scope[DECODED] = (body, value)
        return None
    try:
        answers = await recommend_many(state, engine, [request])
    except Exception:  # rendered (as a 500, or what it is) by the full app
        return None
    return orjson.dumps(answers[0])
