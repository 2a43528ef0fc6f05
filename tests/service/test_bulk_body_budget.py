"""The bulk-body budget (service/bulk_budget.py) and credentials before bodies (service/credentials_first.py).

In process (TestClient, the tiny model) with a clock the test moves, for what the app answers and
when the bucket pays; against a real `remi serve` with raw sockets for what is about the transport:
an answer that comes before the body was sent at all, and a chunked body cut off mid-stream.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.app import create_app
from service.bulk_budget import BulkBodyBudget
from service.config import ServiceSettings
from tests.service.conftest import Server, start_server

TOKEN = "s3cret"
BEARER = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- in process

LIMIT = 8192  # REMI_MAX_BODY_BYTES: the bucket holds max(LIMIT, 2 x RATE) = 8192
RATE = 1024
THRESHOLD = 1024


@contextmanager
def serving(root: Path, clock: Clock, **settings: Any) -> Iterator[TestClient]:
    values: dict[str, Any] = {
        "max_body_bytes": LIMIT,
        "bulk_body_bytes_per_s": RATE,
        "bulk_body_min_bytes": THRESHOLD,
        "admin_token": TOKEN,
    }
    config = ServiceSettings(index_root=root, poll_seconds=0, **(values | settings))
    app = create_app(config)
    app.bulk_budget = BulkBodyBudget.of(config, clock=clock)  # type: ignore[attr-defined]
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def invalid_json(size: int) -> bytes:
    """A body that is a 422 ``json_invalid`` whenever it is read and decoded."""
    return b'{"user_id": "u1", "history": [' + b"1," * ((size - 32) // 2) + b"}"


def refused(kind: str) -> float:
    return REGISTRY.get_sample_value("remi_bulk_bodies_refused_total", {"when": kind}) or 0.0


def is_budget_503(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get("retry-after") == "1"
        and response.headers.get("connection") == "close"
        and "REMI_BULK_BODY_BYTES_PER_S" in response.json()["detail"]
    )


def test_a_large_body_the_bucket_cannot_pay_is_503_without_being_decoded(tiny_root: Path) -> None:
    clock = Clock()
    with serving(tiny_root, clock) as client:
        body = invalid_json(6000)
        first = client.post("/recommend", content=body, headers=JSON)
        assert first.status_code == 422 and first.json()["detail"][0]["type"] == "json_invalid"  # paid: decoded
        before = refused("declared")
        second = client.post("/recommend", content=body, headers=JSON)
        assert is_budget_503(second), (second.status_code, second.headers, second.text)  # not a 422: never decoded
        assert refused("declared") == before + 1


def test_the_bucket_refills_at_the_configured_rate(tiny_root: Path) -> None:
    clock = Clock()
    with serving(tiny_root, clock) as client:
        body = invalid_json(6000)
        assert client.post("/recommend/batch", content=body, headers=JSON).status_code == 422
        assert client.post("/recommend/batch", content=body, headers=JSON).status_code == 503  # ~2.2 KiB left
        clock.now += 3.0  # + 3 KiB: still short of 6,000 bytes
        assert client.post("/recommend/batch", content=body, headers=JSON).status_code == 503
        clock.now += 1.0  # + 1 KiB more: enough
        assert client.post("/recommend/batch", content=body, headers=JSON).status_code == 422


def test_small_bodies_and_the_probes_are_never_refused_while_the_bucket_is_empty(tiny_root: Path) -> None:
    clock = Clock()
    with serving(tiny_root, clock) as client:
        big = invalid_json(LIMIT)
        assert client.post("/users/u1/events", content=big, headers=JSON).status_code == 422
        assert client.post("/users/u1/events", content=big, headers=JSON).status_code == 503  # empty now
        small = client.post("/recommend", json={"user_id": "u1", "k": 3, "history": ["item-001"]})
        assert small.status_code == 200, small.text
        assert client.post("/recommend", content=invalid_json(THRESHOLD), headers=JSON).status_code == 422
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.post("/healthz", content=big, headers=JSON).status_code == 405  # exempt: the route answers


def test_the_fast_path_pays_from_the_same_budget(tiny_root: Path, fast_calls: list[int]) -> None:
    clock = Clock()
    with serving(tiny_root, clock, bulk_body_min_bytes=256) as client:
        body = {"user_id": "u1", "k": 3, "history": [f"item-{i % 40:03d}" for i in range(200)]}  # ~2.4 KiB
        for _ in range(3):  # 3 x ~2.4 KiB out of 8 KiB
            assert client.post("/recommend", json=body).status_code == 200
        assert fast_calls == [1, 1, 1]  # answered on the fast path
        assert is_budget_503(client.post("/recommend", json=body))
        assert fast_calls == [1, 1, 1]


def test_a_chunked_body_is_charged_and_refused_with_the_same_503(tiny_root: Path) -> None:
    clock = Clock()
    with serving(tiny_root, clock) as client:
        body = invalid_json(6000)

        def chunks() -> Iterator[bytes]:
            yield from (body[i : i + 1000] for i in range(0, len(body), 1000))

        first = client.post("/recommend/batch", content=chunks(), headers=JSON)  # sent without Content-Length
        assert first.status_code == 422
        before = refused("streamed")
        second = client.post("/recommend/batch", content=chunks(), headers=JSON)
        assert is_budget_503(second), (second.status_code, second.text)
        assert refused("streamed") == before + 1


def test_a_body_over_the_size_limit_is_still_413(tiny_root: Path) -> None:
    with serving(tiny_root, Clock()) as client:
        response = client.post("/recommend", content=b"x" * (LIMIT + 1), headers=JSON)
        assert response.status_code == 413 and "REMI_MAX_BODY_BYTES" in response.text


def test_a_rate_of_zero_turns_the_budget_off(tiny_root: Path) -> None:
    config = ServiceSettings(index_root=tiny_root, poll_seconds=0, max_body_bytes=LIMIT, bulk_body_bytes_per_s=0)
    assert BulkBodyBudget.of(config) is None
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        for _ in range(20):  # 20 x 8 KiB: far over any bucket of this size
            assert client.post("/recommend", content=invalid_json(LIMIT), headers=JSON).status_code == 422


def test_without_a_credential_a_large_body_is_401_and_spends_nothing(tiny_root: Path) -> None:
    clock = Clock()
    with serving(tiny_root, clock, auth_required=True) as client:
        body = invalid_json(6000)
        for headers in (JSON, JSON | {"authorization": "Bearer wrong"}):
            for path in ("/recommend", "/recommend/batch", "/users/u1/events", "/admin/reload"):
                response = client.post(path, content=body, headers=headers)
                assert response.status_code == 401, (path, response.text)  # not a 422: never decoded
                assert response.headers["www-authenticate"].startswith("Bearer")
        missing = client.post("/recommend", content=body, headers=JSON)
        assert missing.json() == {"detail": "missing bearer credentials"}
        assert missing.headers["www-authenticate"] == "Bearer"
        bad = client.post("/recommend", content=body, headers=JSON | {"authorization": "Bearer wrong"})
        assert bad.json() == {"detail": "invalid, expired or revoked credentials"}
        assert bad.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        # none of those 16 bodies drew on the budget: a valid credential still gets one decoded
        assert client.post("/recommend", content=body, headers=JSON | BEARER).status_code == 422
        assert client.post("/healthz", content=body, headers=JSON).status_code == 405  # a probe: no credential


# ---------------------------------------------------------------- a real server, raw sockets

SERVER_LIMIT = 65536
SERVER_THRESHOLD = 4096


@pytest.fixture(scope="module")
def budgeted(tiny_root: Path) -> Iterator[Server]:
    """Auth required (the admin token), a 64 KiB body limit and a budget refilling at 1 KiB/s."""
    server = start_server(
        tiny_root,
        None,
        REMI_AUTH_REQUIRED="true",
        REMI_ADMIN_TOKEN=TOKEN,
        REMI_MAX_BODY_BYTES=str(SERVER_LIMIT),
        REMI_BULK_BODY_MIN_BYTES=str(SERVER_THRESHOLD),
        REMI_BULK_BODY_BYTES_PER_S="1024",
    )
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    url = urlparse(server.url)
    return socket.create_connection((url.hostname, url.port), timeout=10)


def read_answer(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one answer."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), head.lower(), body


def head(path: str, length: int | None, credential: str | None = TOKEN, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", *extra]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if credential:
        lines.append(f"Authorization: Bearer {credential}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stream(server: Server, chunk: int = 2048) -> tuple[int, bytes, int]:
    """Streams a chunked body of ``chunk``-byte chunks (never its end) until the server answers:
    (status, head, bytes sent)."""
    with connect(server) as sock:
        sock.sendall(head("/recommend/batch", None))
        sock.settimeout(0.05)
        sent = 0
        while sent <= 2 * SERVER_LIMIT:
            sock.sendall(b"%x\r\n%s\r\n" % (chunk, b"1" * chunk))
            sent += chunk
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        sock.settimeout(10)
        status, answer_head, _ = read_answer(sock)
    return status, answer_head, sent


def drain(server: Server) -> tuple[int, bytes, int]:
    """Empties the budget by streaming bodies until one is refused for it: that answer."""
    for _ in range(4):
        answer = stream(server)
        if answer[0] == 503:
            return answer
    raise AssertionError(f"the budget never ran dry: {answer}")


def test_a_chunked_body_is_cut_off_with_503_once_the_budget_runs_dry(budgeted: Server) -> None:
    status, answer_head, sent = drain(budgeted)
    assert status == 503 and b"retry-after: 1" in answer_head and b"connection: close" in answer_head
    assert SERVER_THRESHOLD < sent < SERVER_LIMIT  # past the threshold, long before the body's end or its 413


def test_a_declared_body_over_the_budget_is_refused_before_it_is_sent(budgeted: Server) -> None:
    drain(budgeted)
    with connect(budgeted) as sock:
        sock.sendall(head("/recommend", 60_000))  # and not one byte of the body
        status, answer_head, body = read_answer(sock)
        assert status == 503 and b"retry-after: 1" in answer_head and b"connection: close" in answer_head
        assert b"REMI_BULK_BODY_BYTES_PER_S" in body
        assert sock.recv(1) == b""  # and the connection is closed
    metrics = httpx.get(budgeted.url + "/metrics", headers=BEARER, timeout=10).text
    assert 'remi_bulk_bodies_refused_total{when="declared"}' in metrics


def test_a_client_that_expects_100_continue_is_told_503_instead(budgeted: Server) -> None:
    """Such a client never uploads a refused body: the server says 100 only once the app reads."""
    drain(budgeted)
    with connect(budgeted) as sock:
        sock.sendall(head("/recommend/batch", 60_000, TOKEN, "Expect: 100-continue"))
        status, answer_head, _ = read_answer(sock)
    assert status == 503 and b"retry-after: 1" in answer_head


def test_small_bodies_and_healthz_are_served_while_the_budget_is_spent(budgeted: Server) -> None:
    drain(budgeted)
    small = httpx.post(budgeted.url + "/recommend", json={"user_id": "u1", "k": 3}, headers=BEARER, timeout=10)
    assert small.status_code == 200, small.text
    assert httpx.get(budgeted.url + "/healthz", timeout=10).status_code == 200


def test_without_a_credential_the_401_comes_before_the_body(budgeted: Server) -> None:
    for credential, challenge in ((None, b"www-authenticate: bearer\r\n"), ("nope", b'error="invalid_token"')):
        with connect(budgeted) as sock:
            sock.sendall(head("/recommend/batch", 60_000, credential))  # the body never follows
            status, answer_head, body = read_answer(sock)
        assert status == 401 and challenge in answer_head + b"\r\n", answer_head
        assert b"credentials" in body
