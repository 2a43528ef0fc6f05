"""Client authentication: who may call which route, by the scopes of a bearer credential.

A client sends ``Authorization: Bearer <credential>``; the credential is one of

* an **API key** from the keys file (REMI_API_KEYS_FILE, written by ``remi auth add-key``), or
* a **JWT** signed by a key of the configured key set (REMI_JWT_JWKS_FILE) or with the shared
  HS256 secret (REMI_JWT_SECRET), checked by PyJWT (signature, ``exp``, and ``aud`` / ``iss``
  when configured); its scopes are the ``scope`` claim (space-separated, OAuth 2) or ``scp``, or
* the operator token REMI_ADMIN_TOKEN, kept from before this module as a credential with the
  ``admin`` scope, so existing deployments and scripts go on working.

Each route needs one scope (:data:`SCOPES`); ``admin`` passes every check. With
REMI_AUTH_REQUIRED=true every route but /healthz and /readyz needs a valid credential: none or
a bad one answers 401 (``WWW-Authenticate: Bearer``), a valid one without the route's scope 403
naming the scope. With it false (the default, for `remi demo` and a local quick start) only the
/admin routes check credentials, as they always did; the other routes are open.

How keys are kept. A key is ``remi_<id>_<secret>`` with 32 random bytes of secret
(:func:`secrets.token_urlsafe`); the file stores only its id, the SHA-256 of the whole key,
its scopes, a name and when it was made. A fast unsalted hash is right here, unlike for
passwords: with 256 bits of entropy no guessing attack on a leaked hash is feasible, however
fast the hash, and a slow one (bcrypt, scrypt) would cost tens of milliseconds of CPU on every
request. The id in the key finds its one entry; the hashes are compared with
:func:`hmac.compare_digest`, so the time taken says nothing about how close a guess was.

The keys file is read again when it changes (its mtime, size or inode, checked at most once a
second per worker), so adding and revoking keys needs no restart. A file that cannot be read or
parsed grants nothing until it is fixed (fail closed: a revocation that broke the file must not
leave the revoked key working) and logs why; a missing file is no keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jwt
from fastapi import HTTPException, Request, Security
from fastapi.params import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import ServiceSettings

log = logging.getLogger("service.auth")

# scope -> what it allows (docs/operations.md "Threat model" has the same table)
SCOPES: dict[str, str] = {
    "recommend": "POST /recommend, POST /recommend/batch",
    "events:write": "POST /users/{user_id}/events",
    "history:read": "GET /users/{user_id}/history, GET /users/{user_id}/interests",
    "metrics": "GET /metrics (unless REMI_METRICS_PUBLIC)",
    "admin": "the /admin routes, and every other scope",
}
ADMIN = "admin"
KEY_PREFIX = "remi"
RELOAD_CHECK_S = 1.0  # how stale a worker's view of the keys file may be
ADMIN_TOKEN_ID = "admin-token"
JWT_CACHE_MAX = 4096  # valid tokens remembered until their exp (JwtVerifier)

_bearer = HTTPBearer(auto_error=False, description="An API key (`remi auth add-key`) or a JWT.")


@dataclass(frozen=True)
class Principal:
    """Who a valid credential names (a key id, a JWT subject) and the scopes it carries."""

    id: str
    scopes: frozenset[str]

    def allows(self, scope: str | None) -> bool:
        return scope is None or scope in self.scopes or ADMIN in self.scopes


# ---------------------------------------------------------------------------- API keys


@dataclass(frozen=True)
class KeyEntry:
    """One line of the keys file: never the key itself, only its SHA-256."""

    id: str
    sha256: str
    scopes: tuple[str, ...]
    name: str = ""
    created: str = ""

    def to_json(self) -> str:
        fields = {"id": self.id, "sha256": self.sha256, "scopes": list(self.scopes)}
        return json.dumps(fields | {"name": self.name, "created": self.created})


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(scopes: Iterable[str], name: str = "") -> tuple[str, KeyEntry]:
    """A fresh key (shown to its owner once) and the entry that stores its hash."""
    scopes = check_scopes(scopes)
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return key, KeyEntry(key_id, key_hash(key), scopes, name, created)


def check_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes, de-duplicated in order; ValueError naming an unknown one."""
    out = tuple(dict.fromkeys(s.strip() for s in scopes if s.strip()))
    unknown = [s for s in out if s not in SCOPES]
    if unknown or not out:
        raise ValueError(f"unknown scope(s) {unknown}: use {', '.join(SCOPES)}" if unknown else "no scope given")
    return out


def parse_keys(text: str, source: str = "keys file") -> dict[str, KeyEntry]:
    """The entries of a keys file (JSON lines; blank lines skipped), by id; ValueError naming the line."""
    entries: dict[str, KeyEntry] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            entry = KeyEntry(
                id=str(raw["id"]),
                sha256=str(raw["sha256"]),
                scopes=check_scopes(raw["scopes"]),
                name=str(raw.get("name", "")),
                created=str(raw.get("created", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source} line {n}: {exc}") from exc
        if len(entry.sha256) != 64 or entry.id in entries:
            raise ValueError(f"{source} line {n}: a bad sha256 or a repeated id {entry.id!r}")
        entries[entry.id] = entry
    return entries


def read_keys(path: Path) -> dict[str, KeyEntry]:
    return parse_keys(path.read_text(), str(path)) if path.exists() else {}


def write_keys(path: Path, entries: Iterable[KeyEntry]) -> None:
    """Replaces the file atomically (a reader sees the old or the new one), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(e.to_json() + "\n" for e in entries))
    os.replace(tmp, path)


class WatchedFile:
    """A file's parsed content, parsed again when the file changes (checked at most every ``every_s``).

    A missing file parses as ``empty``; one that fails to parse gives ``empty`` too (fail closed),
    and why is logged once per change of the file. Called on the event loop only (no lock).
    """

    def __init__(self, path: Path, parse: Callable[[Path], Any], empty: Any, every_s: float = RELOAD_CHECK_S):
        self.path, self.parse, self.empty, self.every_s = path, parse, empty, every_s
        self.value: Any = empty
        self.error: str | None = None
        self._signature: tuple[int, int, int] | None = (-1, -1, -1)  # matches no file, nor a missing one
        self._checked = float("-inf")
        self.get()

    def get(self) -> Any:
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return self.value
        self._checked = now
        try:
            st = self.path.stat()
            signature: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            signature = None
        if signature != self._signature:
            self._signature = signature
            self._load(present=signature is not None)
        return self.value

    def _load(self, present: bool) -> None:
        self.value, self.error = self.empty, None
        if not present:
            log.warning("credentials file missing: it grants nothing", extra={"path": str(self.path)})
            return
        try:
            self.value = self.parse(self.path)
        except (OSError, ValueError) as exc:
            self.error = str(exc)
            log.error("credentials file unusable: it grants nothing until fixed", extra={"error": self.error})


# ---------------------------------------------------------------------------- JWTs


def _read_jwks(path: Path) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_json(path.read_text())
    except jwt.PyJWTError as exc:
        raise ValueError(f"{path}: not a usable JWKS ({exc})") from exc


class JwtVerifier:
    """Checks a JWT's signature (a key of the JWKS file by its ``kid``, or the HS256 secret), its
    ``exp`` (required), and ``aud`` / ``iss`` when configured; returns its subject and scopes.

    A client sends the same token until it expires, and checking one costs tens to hundreds of
    microseconds (PyJWT; an RSA signature more), so valid tokens are remembered until their
    ``exp`` (at most :data:`JWT_CACHE_MAX`, forgotten all at once when full or when the key set
    changes). Only valid tokens are kept: garbage cannot fill it.
    """

    def __init__(self, settings: ServiceSettings) -> None:
        self.jwks = WatchedFile(settings.jwt_jwks_file, _read_jwks, None) if settings.jwt_jwks_file else None
        self.secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self.audience, self.issuer = settings.jwt_audience, settings.jwt_issuer
        self._valid: dict[str, tuple[Principal, float]] = {}  # token -> (its principal, its exp)
        self._valid_for: jwt.PyJWKSet | None = None  # the key set the cached tokens were checked with

    def verify(self, token: str) -> Principal | None:
        jwks: jwt.PyJWKSet | None = self.jwks.get() if self.jwks else None
        if jwks is not self._valid_for:
            self._valid.clear()
            self._valid_for = jwks
        hit = self._valid.pop(token, None)
        if hit is not None and hit[1] > time.time():
            self._valid[token] = hit
            return hit[0]
        checked = self._check(token, jwks)
        if checked is None:
            return None
        if len(self._valid) >= JWT_CACHE_MAX:
            self._valid.clear()
        self._valid[token] = checked
        return checked[0]

    def _check(self, token: str, jwks: jwt.PyJWKSet | None) -> tuple[Principal, float] | None:
        try:
            header = jwt.get_unverified_header(token)
            key: Any
            if header.get("alg") == "HS256" and self.secret:
                key, algorithms = self.secret, ["HS256"]
            else:  # the key set's key by kid; PyJWT refuses a token whose alg is not that key's own
                if jwks is None:
                    return None
                key = jwks[str(header.get("kid"))]
                algorithms = [key.algorithm_name]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", *(["aud"] if self.audience else []), *(["iss"] if self.issuer else [])]},
            )
        except (jwt.PyJWTError, KeyError) as exc:
            log.debug("JWT refused", extra={"error": str(exc)})  # debug: one line per bad request would flood
            return None
        principal = Principal(f"jwt:{claims.get('sub', '?')}", frozenset(_claim_scopes(claims)))
        return principal, float(claims["exp"])


def _claim_scopes(claims: Mapping[str, Any]) -> list[str]:
    raw = claims.get("scope", claims.get("scp", []))
    return raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []


# ---------------------------------------------------------------------------- the check


class Authenticator:
    """The credential sources of one worker, from its settings."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.required = settings.auth_required
        self.metrics_public = settings.metrics_public or not settings.auth_required
        self.keys = WatchedFile(settings.api_keys_file, read_keys, {}) if settings.api_keys_file else None
        self.jwt = JwtVerifier(settings) if settings.jwt_jwks_file or settings.jwt_secret else None
        self.admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None

    @property
    def configured(self) -> bool:
        """Some source can grant a credential (else the admin routes are off: 404)."""
        return bool(self.keys or self.jwt or self.admin_token)

    def authenticate(self, credential: str) -> Principal | None:
        """The principal of a bearer credential, or None when it is not valid (unknown, revoked, expired)."""
        if self.admin_token and hmac.compare_digest(credential.encode(), self.admin_token.encode()):
            return Principal(ADMIN_TOKEN_ID, frozenset({ADMIN}))
        if credential.count(".") == 2:  # a JWT (header.payload.signature); a key has no dot
            return self.jwt.verify(credential) if self.jwt else None
        prefix, _, rest = credential.partition("_")
        key_id, _, _ = rest.partition("_")
        if self.keys is None or prefix != KEY_PREFIX:
            return None
        entry: KeyEntry | None = self.keys.get().get(key_id)
        if entry is None or not hmac.compare_digest(key_hash(credential), entry.sha256):
            return None
        return Principal(f"key:{entry.id}", frozenset(entry.scopes))

    def checks(self, scope: str | None) -> bool:
        """Whether a route needing ``scope`` checks credentials at all in this configuration."""
        if scope == ADMIN:
            return True
        if scope == "metrics":
            return not self.metrics_public
        return self.required

    def check(self, scope: str | None, credential: str | None) -> Principal | None:
        """The caller's principal, or HTTPException: 404 (admin with no source), 401, 403 naming the scope."""
        if not self.checks(scope):
            return None
        if scope == ADMIN and not self.configured:
            raise HTTPException(404, "admin endpoints are disabled (set REMI_ADMIN_TOKEN or REMI_API_KEYS_FILE)")
        if not credential:
            raise HTTPException(401, "missing bearer credentials", headers={"WWW-Authenticate": "Bearer"})
        principal = self.authenticate(credential)
        if principal is None:
            challenge = 'Bearer error="invalid_token"'
            raise HTTPException(401, "invalid, expired or revoked credentials", headers={"WWW-Authenticate": challenge})
        if not principal.allows(scope):
            challenge = f'Bearer error="insufficient_scope", scope="{scope}"'
            detail = f"this credential lacks the scope {scope!r} (it has: {', '.join(sorted(principal.scopes))})"
            raise HTTPException(403, detail, headers={"WWW-Authenticate": challenge})
        return principal

    def document(self, openapi: dict[str, Any]) -> dict[str, Any]:
        """The OpenAPI document with a security requirement only on the operations that check
        credentials in this configuration (with auth off, only /admin): a client, or a schema
        fuzzer, must not be told a route needs a credential that it does not check."""
        for operations in openapi.get("paths", {}).values():
            for operation in operations.values():
                requirements = operation.get("security") if isinstance(operation, dict) else None
                if not requirements:
                    continue
                scopes = [s for requirement in requirements for listed in requirement.values() for s in listed]
                if not any(self.checks(s) for s in scopes or [None]):
                    del operation["security"]
        return openapi

    def check_asgi(self, scope: str | None, headers: Iterable[tuple[bytes, bytes]]) -> Principal | None:
        """:meth:`check` for code that sees the raw ASGI headers (a mount, the /recommend fast path)."""
        return self.check(scope, bearer_credential(headers))

    def allows_asgi(self, scope: str, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """For code before the router (the /recommend fast path): True when a request with these
        headers passes the check for ``scope``; otherwise the full app answers it, with its 401 or 403."""
        try:
            self.check_asgi(scope, headers)
        except HTTPException:
            return False
        return True


def bearer_credential(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The credential of an ``Authorization: Bearer`` header among raw ASGI headers (None: none or another scheme)."""
    for name, value in headers:
        if name == b"authorization":
            kind, _, credential = value.decode("latin-1").partition(" ")
            if kind.lower() != "bearer":
                return None
            return credential.strip() or None
    return None


def scope_check(scope: str | None) -> Callable[..., Awaitable[Principal | None]]:
    """The dependency function of a route that needs ``scope`` (None: any valid credential, when required).

    A dependency, so FastAPI runs it before it validates the body: a caller without the right
    credential learns nothing about the body's fields. Its bearer sub-dependency puts the scheme
    in the OpenAPI document (Swagger UI's Authorize button).
    """

    # the scope rides on the bearer requirement, so the OpenAPI document names it per operation
    bearer = Security(_bearer, scopes=[scope] if scope else [])

    async def check(request: Request, credentials: HTTPAuthorizationCredentials | None = bearer) -> Principal | None:
        auth: Authenticator = request.app.state.auth
        return auth.check(scope, credentials.credentials if credentials else None)

    return check


def require(scope: str | None) -> Depends:
    """``dependencies=[require("history:read")]`` on a route or a router."""
    guard: Depends = Security(scope_check(scope))
    return guard
