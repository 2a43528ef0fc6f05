"""Client authentication in process (service/auth.py): every route the app has, the settings
around it, and the keys file read again on change. The scopes against a real server: test_auth.py."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.routing import Mount

from service.app import create_app
from service.auth import SCOPES, Authenticator, new_key, write_keys
from service.config import ServiceSettings

PUBLIC = {"/healthz", "/readyz"}  # the probes: the only routes that answer without credentials


@contextmanager
def serving(root: Path, **settings: Any) -> Iterator[TestClient]:
    app = create_app(ServiceSettings(index_root=root, poll_seconds=0, **settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A keys file with one key per scope: (its path, scope -> key)."""
    made = {scope: new_key([scope]) for scope in SCOPES}
    path = tmp_path / "keys.jsonl"
    write_keys(path, [entry for _, entry in made.values()])
    return path, {scope: key for scope, (key, _) in made.items()}


def requests_of(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route and mount of the app, path parameters filled in."""
    found = []
    routes: list[Any] = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        # FastAPI 0.16x keeps an included router as one entry that lists its routes on demand
        contexts = getattr(route, "effective_route_contexts", None)
        routes += list(contexts()) if contexts is not None else [route]
    for route in routes:
        if isinstance(route, Mount):
            found.append(("GET", route.path + "/swagger-ui.css"))
        else:  # starlette's Route or FastAPI's APIRoute (not a Route subclass in every version)
            path = re.sub(r"\{[^}]+\}", "u1", route.path)
            found += [(method, path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def test_no_route_but_the_probes_answers_without_credentials(
    tiny_root: Path, keys: tuple[Path, dict[str, str]]
) -> None:
    """Enumerates the app's routes: a route added without a scope fails here."""
    with serving(tiny_root, auth_required=True, api_keys_file=keys[0]) as client:
        found = requests_of(client)
        assert {("POST", "/recommend"), ("GET", "/users/u1/history"), ("GET", "/metrics")} <= set(found)
        assert any(path.startswith("/docs-assets/") for _, path in found) and len(found) >= 15
        documented = client.app.openapi()["paths"]  # type: ignore[attr-defined]
        filled = {(m.upper(), re.sub(r"\{[^}]+\}", "u1", p)) for p, ops in documented.items() for m in ops}
        assert filled <= set(found), "the enumeration missed documented routes"
        for method, path in found:
            r = client.request(method, path, json={} if method == "POST" else None)
            expected = 200 if path in PUBLIC else 401
            assert r.status_code == expected, (method, path, r.status_code, r.text)
            if expected == 401:
                assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
        # and a key with a scope opens the docs' assets too
        ok = client.get("/docs-assets/swagger-ui.css", headers={"authorization": f"Bearer {keys[1]['recommend']}"})
        assert ok.status_code == 200


def test_without_auth_required_the_routes_are_open_and_admin_still_checks(
    tiny_root: Path, keys: tuple[Path, dict[str, str]]
) -> None:
    path, by_scope = keys
    with serving(tiny_root, api_keys_file=path) as client:
        assert client.get("/users/u1/history").status_code == 200
        assert client.post("/recommend", json={"user_id": "u1", "k": 2}).status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/admin/items/blocked").status_code == 401
        forbidden = client.get("/admin/items/blocked", headers={"authorization": f"Bearer {by_scope['recommend']}"})
        assert forbidden.status_code == 403 and "'admin'" in forbidden.json()["detail"]
        admin = client.get("/admin/items/blocked", headers={"authorization": f"Bearer {by_scope['admin']}"})
        assert admin.status_code == 200
    with serving(tiny_root) as client:  # no credential source at all: the admin routes are off, as before
        assert client.get("/admin/items/blocked").status_code == 404


def test_metrics_public_opens_only_metrics(tiny_root: Path, keys: tuple[Path, dict[str, str]]) -> None:
    with serving(tiny_root, auth_required=True, api_keys_file=keys[0], metrics_public=True) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/version").status_code == 401


def test_docs_disabled_are_gone(tiny_root: Path, keys: tuple[Path, dict[str, str]]) -> None:
    bearer = {"authorization": f"Bearer {keys[1]['admin']}"}
    with serving(tiny_root, auth_required=True, api_keys_file=keys[0], docs_enabled=False) as client:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
            assert client.get(path, headers=bearer).status_code == 404, path


def test_openapi_names_each_operations_scope_where_it_is_checked(
    tiny_root: Path, keys: tuple[Path, dict[str, str]]
) -> None:
    """The document says which scope each operation needs, and declares no credential that the
    configuration does not check (with auth off, only /admin): clients and schema fuzzers trust it."""
    bearer = {"authorization": f"Bearer {keys[1]['admin']}"}
    for required in (False, True):
        with serving(tiny_root, auth_required=required, api_keys_file=keys[0]) as client:
            document = client.get("/openapi.json", headers=bearer).json()
        [scheme] = document["components"]["securitySchemes"].values()
        assert scheme["scheme"] == "bearer"
        security = {
            f"{method.upper()} {path}": operation.get("security")
            for path, operations in document["paths"].items()
            for method, operation in operations.items()
        }
        [name] = document["components"]["securitySchemes"]
        assert security["POST /admin/reload"] == [{name: ["admin"]}]
        assert security["GET /healthz"] is None and security["GET /readyz"] is None
        if required:
            assert security["GET /users/{user_id}/history"] == [{name: ["history:read"]}]
            assert security["POST /recommend"] == [{name: ["recommend"]}]
            assert security["GET /version"] == [{name: []}]
        else:
            assert security["GET /users/{user_id}/history"] is None and security["POST /recommend"] is None


def test_fast_path_never_answers_without_the_scope(
    tiny_root: Path, keys: tuple[Path, dict[str, str]], fast_calls: list[int]
) -> None:
    """The /recommend fast path runs before the router: it must check the scope itself."""
    body = {"user_id": "u1", "k": 2, "history": ["item-001"]}
    with serving(tiny_root, auth_required=True, api_keys_file=keys[0]) as client:
        assert client.post("/recommend", json=body).status_code == 401
        wrong = client.post("/recommend", json=body, headers={"authorization": f"Bearer {keys[1]['metrics']}"})
        assert wrong.status_code == 403
        assert fast_calls == []
        right = client.post("/recommend", json=body, headers={"authorization": f"Bearer {keys[1]['recommend']}"})
        assert right.status_code == 200 and fast_calls == [1]


def test_auth_required_without_a_credential_source_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="REMI_AUTH_REQUIRED=true needs a credential source"):
        ServiceSettings(index_root=tmp_path, auth_required=True)
    with pytest.raises(ValidationError, match="at least 32 characters"):
        ServiceSettings(index_root=tmp_path, jwt_secret="short")


def test_a_broken_keys_file_grants_nothing_until_fixed(tmp_path: Path, keys: tuple[Path, dict[str, str]]) -> None:
    """Fail closed: a revocation that broke the file must not leave the revoked key working."""
    path, by_scope = keys
    auth = Authenticator(ServiceSettings(index_root=tmp_path, auth_required=True, api_keys_file=path))
    key = by_scope["recommend"]
    assert auth.authenticate(key) is not None
    good = path.read_text()
    path.write_text(good + "{not json\n")
    deadline = time.monotonic() + 10
    while auth.authenticate(key) is not None:  # re-read within about a second
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert auth.keys is not None and "line" in (auth.keys.error or "")
    path.write_text(good)
    while auth.authenticate(key) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    path.unlink()
    while auth.authenticate(key) is not None:  # a removed file: no keys
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_remembered_jwt_still_expires_and_a_changed_key_set_forgets_it(tmp_path: Path) -> None:
    """Valid JWTs are remembered (service/auth.py JwtVerifier): never past their exp, nor past the
    key set that checked them."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]}))
    auth = Authenticator(ServiceSettings(index_root=tmp_path, auth_required=True, jwt_jwks_file=jwks))

    def token(lifetime: float) -> str:
        claims = {"scope": "recommend", "exp": int(time.time() + lifetime)}
        return jwt.encode(claims, rsa_key, "RS256", headers={"kid": "k1"})

    short = token(2)
    assert auth.authenticate(short) is not None and auth.authenticate(short) is not None  # checked, then remembered
    deadline = time.monotonic() + 10
    while auth.authenticate(short) is not None:
        assert time.monotonic() < deadline, "a remembered token outlived its exp"
        time.sleep(0.1)
    long = token(300)
    assert auth.authenticate(long) is not None
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rotated = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(other.public_key()))
    jwks.write_text(json.dumps({"keys": [{**rotated, "kid": "k2", "alg": "RS256"}]}))  # k1 withdrawn
    while auth.authenticate(long) is not None:
        assert time.monotonic() < deadline, "a token of a withdrawn key is still accepted"
        time.sleep(0.1)
