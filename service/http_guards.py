"""What stands between raw HTTP input and the routes: a body size limit, a JSON decode that no
value can break, and 422 bodies that are always renderable and never echo much of the input.

Why: the stdlib decoder accepts ``NaN``, ``Infinity``, ``1e309`` (-> inf) and lone surrogates
(``"\\ud800"``); the default 422 handler then echoed those values back and crashed while encoding
them (a 500, even on /admin/reload without a token). A 50 MB body was buffered whole and a 50 MB
``user_id`` was echoed back whole. Here:

* :class:`BodyLimitMiddleware` answers 413 before reading a body whose Content-Length is over the
  limit, and counts streamed (chunked) bodies chunk by chunk, so at most ~limit bytes are held.
* :class:`SafeJsonRoute` decodes request bodies as strict UTF-8 JSON (orjson, C speed); a value
  JSON cannot carry (NaN, +-Infinity, a number outside the double range, a lone surrogate) is
  reported as a 422 ``json_invalid`` *naming the field* (``loc``) instead of a position in the text.
* :func:`validation_error_handler` renders every 422 JSON-safely with ``input`` cut to a short
  prefix (also for path and query values).
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

INPUT_PREFIX = 64  # characters of an input value a 422 may echo back


# ---------------------------------------------------------------- body size limit


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes the limit; an HTTPException so that
    FastAPI's body reader re-raises it (it turns any other exception into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes (REMI_MAX_BODY_BYTES)")


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes``: by Content-Length before the app runs, else by
    counting the chunks as the app reads them (chunked encoding), never buffering more."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_413(send, self.max_bytes)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int) -> None:
    body = orjson.dumps({"detail": f"request body larger than {limit} bytes (REMI_MAX_BODY_BYTES)"})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- strict JSON decode


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (only a ``\\udXXX`` escape makes one): it is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode_json(body: bytes) -> Any:
    """Strict RFC 8259 decode at C speed, no Python call per value (a 1 MiB body of ``[1,1,...]``
    cost ~1.3 s of the event loop through the stdlib decoder's Python hooks;
    docs/operations.md#scaling-the-api-horizontally).

    orjson first: it refuses everything JSON cannot carry (NaN, Infinity, numbers outside a double,
    lone surrogates, invalid UTF-8, a BOM). Only a body it refuses -- always a 422 -- is decoded
    again by the stdlib's C scanner, which keeps those values (NaN, +-inf, strings holding a lone
    surrogate) so that validation reports each at its field (``loc``); :func:`render_errors` turns
    them into ``json_invalid``. Malformed text raises ``json.JSONDecodeError`` (FastAPI's 422
    ``json_invalid``). The cost after the decode is bounded by the request limits: every list is
    length-checked before its items and stops at its first bad item (service/schemas.py)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        refused = exc
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"body is not valid UTF-8 (byte {exc.start})", "", exc.start) from exc
    if not _names_a_value(refused, text):
        raise refused  # malformed text: one scan, not two (its pos is a character offset, as the stdlib's)
    try:
        return json.loads(text, parse_constant=float)  # NaN / Infinity -> float: refused at their field
    except json.JSONDecodeError:
        raise
    except RecursionError as exc:
        raise json.JSONDecodeError("JSON nested too deeply", "", 0) from exc
    except ValueError as exc:  # int(): a literal over sys.get_int_max_str_digits() digits
        raise json.JSONDecodeError(f"an integer literal too long to read ({exc})"[:200], "", 0) from exc


def _names_a_value(exc: orjson.JSONDecodeError, text: str) -> bool:
    """Whether orjson refused a value the stdlib decoder keeps (NaN, +-Infinity, a number outside a
    double, a lone surrogate), rather than malformed text."""
    if "infinity" in exc.msg or "surrogate" in exc.msg:
        return True
    return text[exc.pos : exc.pos + 1] in ("N", "I")  # NaN, Infinity; -Infinity: pos is after the sign


def _non_json_reason(value: Any) -> str | None:
    """Why a decoded value is not one JSON can carry (only the fallback decode keeps such values)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN, Infinity or a number outside the range of a double"
    if isinstance(value, str) and has_surrogate(value):
        return "a lone surrogate (\\udXXX escape) is not Unicode text"
    return None


DECODED = "remi.decoded_json"  # scope key: (body, value) already decoded by the fast path (fast_recommend.py)


class _SafeJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            decoded = self.scope.get(DECODED)
            if decoded is not None and decoded[0] == body:  # the fast path's refusal: not decoded twice
                self._json = decoded[1]
            else:
                self._json = decode_json(body)
        return self._json


def is_json(content_type: str | None) -> bool:
    """The test FastAPI applies: application/json or application/<anything>+json."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class SafeJsonRoute(APIRoute):
    """Every route decodes its JSON body with :func:`decode_json` (FastAPI's documented hook
    for a custom Request class), and a body sent as anything but JSON is one clear 422 (FastAPI
    would validate the raw text against the model: "Input should be a valid dictionary")."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def strict_json_handler(request: Request) -> Response:
            strict = _SafeJsonRequest(request.scope, request.receive, request._send)
            if takes_body and not is_json(strict.headers.get("content-type")) and await strict.body():
                raise RequestValidationError(
                    [
                        {
                            "type": "json_invalid",
                            "loc": ("body",),
                            "msg": "the body must be JSON sent with content-type: application/json",
                            "input": strict.headers.get("content-type", ""),
                        }
                    ]
                )
            return await handler(strict)

        return strict_json_handler


# ---------------------------------------------------------------- 422 rendering

_preview = reprlib.Repr()
_preview.maxlevel, _preview.maxdict, _preview.maxlist, _preview.maxstring, _preview.maxother = 2, 4, 4, 24, 24


def _safe_text(text: str) -> str:
    """Lone surrogates as ``\\udXXX`` text: the result always encodes as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _clip(text: str, limit: int = INPUT_PREFIX) -> str:
    return _safe_text(text if len(text) <= limit else text[:limit] + "…")


def safe_input(value: Any) -> Any:
    """A JSON-safe stand-in for an input value, never longer than a short prefix."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else _clip(f"{value:.6e}")
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _clip(value)
    if isinstance(value, (bytes, bytearray)):
        return _clip(bytes(value[: INPUT_PREFIX * 4]).decode("utf-8", "replace"))
    if isinstance(value, (dict, list, tuple)):
        if len(value) <= 8:
            try:
                small = orjson.dumps(value)  # refuses surrogates, markers and nested oddities
                if len(small) <= INPUT_PREFIX:
                    return orjson.loads(small)
            except (TypeError, orjson.JSONEncodeError):
                pass
        return _clip(_preview.repr(value))
    return _clip(str(value))


def _safe_ctx(ctx: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in ctx.items():
        scalar = value is None or isinstance(value, (bool, int, float))
        out[str(key)] = safe_input(value) if scalar else _clip(str(value), 200)
    return out


def render_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors as JSON-safe dicts. A value JSON cannot carry (NaN, Infinity, a lone
    surrogate) becomes one ``json_invalid`` error at the field's location, however many union
    branches refused it."""
    out: list[dict[str, Any]] = []
    by_value: dict[int, dict[str, Any]] = {}
    for err in errors:
        loc = [part if isinstance(part, int) else _clip(str(part)) for part in err.get("loc", ())]
        value = err.get("input")
        why = _non_json_reason(value)
        if why is not None:
            seen = by_value.get(id(value))
            if seen is not None:  # another union branch refused the same value: keep the common loc
                common = 0
                while common < min(len(loc), len(seen["loc"])) and loc[common] == seen["loc"][common]:
                    common += 1
                seen["loc"] = seen["loc"][:common]
                continue
            entry: dict[str, Any] = {
                "type": "json_invalid",
                "loc": loc,
                "msg": f"not a valid JSON value: {why}",
                "input": safe_input(value),
            }
            by_value[id(value)] = entry
            out.append(entry)
            continue
        entry = {"type": str(err.get("type", "value_error")), "loc": loc, "msg": _clip(str(err.get("msg", "")), 300)}
        if "input" in err:
            entry["input"] = safe_input(value)
        if isinstance(err.get("ctx"), dict):
            entry["ctx"] = _safe_ctx(err["ctx"])
        out.append(entry)
    return out


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """The one 422 renderer for every route: FastAPI's shape (``{"detail": [{type, loc, msg,
    input, ctx}]}``), values cut to a short prefix, never a failure of its own."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return Response(orjson.dumps({"detail": render_errors(list(errors))}), 422, media_type="application/json")
