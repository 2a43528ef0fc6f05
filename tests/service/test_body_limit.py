"""REMI_MAX_BODY_BYTES against a real uvicorn server: 413 by Content-Length before the body is
read, and 413 as soon as a chunked body passes the limit. Raw sockets, so the test controls
exactly what is sent (an HTTP client would first insist on uploading the whole body)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.service.conftest import Server, start_server

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def small_limit(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("limit") / "root"
    server = start_server(root, artifacts_dir, REMI_MAX_BODY_BYTES=str(LIMIT))
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    url = urlparse(server.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length")), 0
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), head + b"\r\n\r\n" + body


def test_a_body_declared_over_the_limit_is_413_before_it_is_sent(small_limit: Server) -> None:
    with connect(small_limit) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
        )  # and not one byte of the 50 MB: the answer must not wait for it
        status, raw = read_status(sock)
    assert status == 413 and b"REMI_MAX_BODY_BYTES" in raw


def test_a_chunked_body_over_the_limit_is_413_while_streaming(small_limit: Server) -> None:
    chunk = b"x" * 8192
    with connect(small_limit) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        while sent <= LIMIT + 2 * len(chunk):  # a little over the limit, never the terminating chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        status, raw = read_status(sock)
    assert status == 413 and b"REMI_MAX_BODY_BYTES" in raw


def test_a_chunked_body_under_the_limit_is_read(small_limit: Server) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"user_id": '
        yield b'"u", "history": [' + b", ".join(b'"i%d"' % i for i in range(1000)) + b"]}"

    response = httpx.post(small_limit.url + "/recommend", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text  # read whole, validated and answered, not refused for size
    assert response.json()["items"]


def test_the_server_stays_responsive_after_oversized_bodies(small_limit: Server) -> None:
    for _ in range(5):
        test_a_body_declared_over_the_limit_is_413_before_it_is_sent(small_limit)
    t0 = time.perf_counter()
    assert httpx.get(small_limit.url + "/healthz", timeout=5).status_code == 200
    assert time.perf_counter() - t0 < 1.0


def test_a_huge_user_id_is_never_echoed(small_limit: Server, tmp_path: Path) -> None:
    response = httpx.post(small_limit.url + "/recommend", json={"user_id": "x" * 50_000}, timeout=10)
    assert response.status_code == 422 and len(response.content) < 2000
