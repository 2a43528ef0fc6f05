"""Client authentication (service/auth.py) end to end: a real `remi serve` process with
REMI_AUTH_REQUIRED=true, API keys made and revoked with `remi auth`, JWTs signed with a shared
secret and with an RSA key of a JWKS file, and the old REMI_ADMIN_TOKEN as an admin credential."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from service.auth import SCOPES
from tests.service.conftest import Server, start_server, wait_for

ADMIN_TOKEN = "old-style-admin-token"
JWT_SECRET = "a-shared-secret-of-at-least-32-characters!"
AUDIENCE, ISSUER = "remi-match", "https://issuer.test"
# (method, path, body, the scope it needs; None: any valid credential)
ROUTES: list[tuple[str, str, dict[str, Any] | None, str | None]] = [
    ("POST", "/recommend", {"user_id": "u1", "k": 3, "history": ["item-001"]}, "recommend"),
    ("POST", "/recommend/batch", {"requests": [{"user_id": "u1", "k": 3}]}, "recommend"),
    ("POST", "/users/u1/events", {"events": [{"item_id": "item-002", "timestamp": 1}]}, "events:write"),
    ("GET", "/users/u1/history", None, "history:read"),
    ("GET", "/users/u1/interests", None, "history:read"),
    ("GET", "/metrics", None, "metrics"),
    ("GET", "/admin/items/blocked", None, "admin"),
    ("POST", "/admin/reload", {}, "admin"),
    ("GET", "/version", None, None),
    ("GET", "/openapi.json", None, None),
    ("GET", "/docs", None, None),
]


@dataclass
class Locked:
    server: Server
    keys_file: Path
    keys: dict[str, str]  # scope -> a key with that scope only
    rsa_key: rsa.RSAPrivateKey

    def call(self, method: str, path: str, body: dict[str, Any] | None, credential: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {credential}"} if credential else {}
        return httpx.request(method, self.server.url + path, json=body, headers=headers, timeout=20)


def remi_auth(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "cli", "auth", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def add_key(keys_file: Path, scopes: str) -> str:
    return remi_auth("add-key", "--scopes", scopes, "--keys-file", str(keys_file)).stdout.strip()


@pytest.fixture(scope="module")
def locked(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    folder = tmp_path_factory.mktemp("auth")
    keys_file = folder / "api-keys.jsonl"
    keys = {scope: add_key(keys_file, scope) for scope in SCOPES}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    server = start_server(
        tiny_root,
        None,
        REMI_AUTH_REQUIRED="true",
        REMI_API_KEYS_FILE=str(keys_file),
        REMI_ADMIN_TOKEN=ADMIN_TOKEN,
        REMI_JWT_SECRET=JWT_SECRET,
        REMI_JWT_JWKS_FILE=str(folder / "jwks.json"),
        REMI_JWT_AUDIENCE=AUDIENCE,
        REMI_JWT_ISSUER=ISSUER,
    )
    yield Locked(server, keys_file, keys, rsa_key)
    server.stop()


def hs256(scope: str, **claims: Any) -> str:
    payload = {"sub": "svc", "scope": scope, "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


def test_history_without_credentials_is_401_when_auth_is_required(locked: Locked) -> None:
    r = locked.call("GET", "/users/u1/history", None, None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "body", "scope"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_route_needs_its_scope(
    locked: Locked, method: str, path: str, body: dict[str, Any] | None, scope: str | None
) -> None:
    """No credential and a wrong one: 401; a valid key without the scope: 403 naming it; with it: served."""
    for credential in (None, "remi_000000000000_not-a-key", "not even the form of a key"):
        r = locked.call(method, path, body, credential)
        assert r.status_code == 401, (credential, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    for other, key in locked.keys.items():
        if scope is not None and other not in (scope, "admin"):
            r = locked.call(method, path, body, key)
            assert r.status_code == 403, (other, r.text)
            assert repr(scope) in r.json()["detail"] and f'scope="{scope}"' in r.headers["www-authenticate"]
    for key in [locked.keys[scope or "recommend"], locked.keys["admin"], ADMIN_TOKEN]:
        r = locked.call(method, path, body, key)
        assert r.status_code == 200, r.text


def test_probes_answer_without_credentials(locked: Locked) -> None:
    assert locked.call("GET", "/healthz", None, None).status_code == 200
    assert locked.call("GET", "/readyz", None, None).status_code == 200


def test_keys_are_added_and_revoked_without_a_restart(locked: Locked) -> None:
    key = add_key(locked.keys_file, "history:read")
    wait_for(lambda: locked.call("GET", "/users/u1/history", None, key).status_code == 200)
    key_id = key.split("_")[1]
    listed = [
        json.loads(line) for line in remi_auth("list-keys", "--keys-file", str(locked.keys_file)).stdout.splitlines()
    ]
    assert key_id in {entry["id"] for entry in listed}
    assert key not in locked.keys_file.read_text(), "the file holds hashes, never a key"
    remi_auth("revoke-key", key_id, "--keys-file", str(locked.keys_file))
    wait_for(lambda: locked.call("GET", "/users/u1/history", None, key).status_code == 401)
    assert locked.call("GET", "/users/u1/history", None, locked.keys["history:read"]).status_code == 200


def test_jwts_with_the_shared_secret_carry_their_scopes(locked: Locked) -> None:
    assert locked.call("GET", "/users/u1/history", None, hs256("history:read recommend")).status_code == 200
    r = locked.call("GET", "/users/u1/history", None, hs256("recommend"))
    assert r.status_code == 403 and "history:read" in r.json()["detail"]
    scp = jwt.encode(
        {"scp": ["history:read"], "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}, JWT_SECRET, "HS256"
    )
    assert locked.call("GET", "/users/u1/history", None, scp).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        hs256("history:read", exp=int(time.time()) - 10),  # expired
        hs256("history:read", aud="someone-else"),
        hs256("history:read", iss="https://another.test"),
        jwt.encode({"scope": "history:read", "aud": AUDIENCE, "iss": ISSUER}, JWT_SECRET, "HS256"),  # no exp
        jwt.encode({"scope": "history:read", "aud": AUDIENCE, "iss": ISSUER, "exp": 2**40}, "x" * 40, "HS256"),
        jwt.encode({"scope": "history:read", "aud": AUDIENCE, "iss": ISSUER, "exp": 2**40}, None, "none"),
    ],
    ids=["expired", "audience", "issuer", "no-exp", "other-secret", "alg-none"],
)
def test_bad_jwts_are_401(locked: Locked, token: str) -> None:
    r = locked.call("GET", "/users/u1/history", None, token)
    assert r.status_code == 401, r.text


def test_jwts_signed_by_a_key_of_the_jwks_file(locked: Locked) -> None:
    claims = {"sub": "svc", "scope": "history:read", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}
    good = jwt.encode(claims, locked.rsa_key, "RS256", headers={"kid": "k1"})
    assert locked.call("GET", "/users/u1/history", None, good).status_code == 200
    unknown_kid = jwt.encode(claims, locked.rsa_key, "RS256", headers={"kid": "k2"})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other_key, "RS256", headers={"kid": "k1"})
    for token in (unknown_kid, forged):
        assert locked.call("GET", "/users/u1/history", None, token).status_code == 401
