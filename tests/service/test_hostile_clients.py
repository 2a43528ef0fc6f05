"""What one client may hold of a worker
(docs/operations.md#hostile-clients-what-one-connection-may-hold), against real `remi serve`
processes.

Raw sockets, so the test controls every byte and every pause: connections that send nothing,
heads and bodies trickled a byte at a time, heads too large or with too many lines, and more
connections than the worker admits. Timeouts are configured short (about a second); each check
waits several times longer before it calls a connection "still open", so a slow machine
makes the test slower, not wrong.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from index.publish import reindex
from loadtest.server import ServerProcess, free_port, is_up, remi_serve_argv
from tests.service.conftest import Server, start_server, wait_for
from tests.service.tiny_model import TinyModel

HEAD_TIMEOUT = 1.5
KEEP_ALIVE = 1.0
BODY_TIMEOUT = 1.5
OPEN = "open"  # what a check returns for a connection the server kept


@pytest.fixture(scope="module")
def short_timeouts(tiny_root: Path) -> Iterator[Server]:
    server = start_server(
        tiny_root,
        None,
        REMI_REQUEST_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT),
        REMI_KEEP_ALIVE_TIMEOUT_S=str(KEEP_ALIVE),
        REMI_REQUEST_BODY_TIMEOUT_S=str(BODY_TIMEOUT),
    )
    yield server
    server.stop()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def head(method: str, path: str, *headers: str, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if length is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response (status, head + body); status 0 when the server closed without one."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, data
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(top.split()[1]), top + b"\r\n\r\n" + body


def until_closed(sock: socket.socket, timeout: float) -> bytes | str:
    """What the server sent before closing ``sock`` (b"" for nothing), or OPEN if it is still open."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return OPEN
    except ConnectionResetError:
        pass
    return data


def trickle(sock: socket.socket, payload: bytes, seconds: float, interval: float = 0.2) -> bool:
    """Sends ``payload`` a byte every ``interval`` s for at most ``seconds``; False once the server
    closed the connection (the send failed or the server's answer arrived)."""
    deadline = time.monotonic() + seconds
    for byte in payload:
        if time.monotonic() > deadline:
            return True
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            return False
    return True


# ---------------------------------------------------------------- A1: time limits


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(short_timeouts: Server) -> None:
    with connect(short_timeouts) as sock:
        assert until_closed(sock, HEAD_TIMEOUT * 6) == b""  # closed, silently (it asked for nothing)


def test_a_client_trickling_its_head_is_dropped_with_408(short_timeouts: Server) -> None:
    with connect(short_timeouts) as sock:
        payload = head("GET", "/healthz", *(f"X-Slow-{i}: {'v' * 20}" for i in range(50)))
        assert not trickle(sock, payload, HEAD_TIMEOUT * 8), "still sending its head: never dropped"
        answer = until_closed(sock, 10)
    assert isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 408"), answer


def test_a_client_trickling_its_body_is_dropped_with_408(short_timeouts: Server) -> None:
    body = b'{"user_id": "ann", "k": 5, "history": ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"]}'
    with connect(short_timeouts) as sock:
        sock.sendall(head("POST", "/recommend", length=len(body)))
        assert not trickle(sock, body, BODY_TIMEOUT * 8), "still sending its body: never dropped"
        answer = until_closed(sock, 10)
    assert isinstance(answer, bytes) and answer.startswith(b"HTTP/1.1 408"), answer
    assert httpx.get(short_timeouts.url + "/healthz").status_code == 200  # the worker is fine


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(short_timeouts: Server) -> None:
    with connect(short_timeouts) as sock:
        sock.sendall(head("GET", "/healthz"))
        assert read_response(sock)[0] == 200
        answered = time.monotonic()
        assert until_closed(sock, 30) == b""
        idle = time.monotonic() - answered
    assert idle < KEEP_ALIVE + 3.0, f"closed after {idle:.1f} s, not after the {KEEP_ALIVE} s keep-alive timeout"


def test_a_keep_alive_client_that_keeps_asking_is_never_cut(short_timeouts: Server) -> None:
    """The head timer runs per request, from its first byte, not from the connection's start."""
    with connect(short_timeouts) as sock:
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < HEAD_TIMEOUT * 3:
            for part in (b"GET /healthz HTTP/1.1\r\n", b"Host: test\r\n", b"\r\n"):  # a head in three sends
                sock.sendall(part)
                time.sleep(0.05)
            answers.append(read_response(sock)[0])
            time.sleep(KEEP_ALIVE / 3)
    assert len(answers) >= 4 and set(answers) == {200}, answers


# ---------------------------------------------------------------- A1: connection cap and file descriptors


def classify(socks: list[socket.socket], seconds: float) -> tuple[list[socket.socket], list[bytes]]:
    """Within ``seconds``: the sockets the server kept open, and what the others received before their close."""
    pending = {sock.fileno(): sock for sock in socks}
    closed: list[bytes] = []
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending.values()), [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            pending.pop(sock.fileno())
            closed.append(until_closed(sock, 5) or b"")  # type: ignore[arg-type]
    return list(pending.values()), closed


def open_many(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def test_connections_over_the_cap_are_refused_at_once_while_admitted_ones_are_served(tiny_root: Path) -> None:
    cap, idle_count = 20, 200
    server = start_server(tiny_root, None, REMI_MAX_CONNECTIONS=str(cap), REMI_REQUEST_HEAD_TIMEOUT_S="4",
                          REMI_KEEP_ALIVE_TIMEOUT_S="60")  # fmt: skip
    idle: list[socket.socket] = []
    try:
        with httpx.Client(base_url=server.url, timeout=10) as admitted:
            assert admitted.get("/healthz").status_code == 200  # a keep-alive connection, admitted first
            idle = open_many(server.port, idle_count)
            kept, refused = classify(idle, 1.5)
            assert len(kept) <= cap - 1, f"{len(kept)} idle connections admitted beyond the cap of {cap}"
            assert len(refused) >= idle_count - cap + 1
            assert all(answer.startswith(b"HTTP/1.1 503") for answer in refused), refused[:3]
            for _ in range(5):  # the admitted client is still served while the cap is full
                assert admitted.post("/recommend", json={"user_id": "ann", "k": 3}).status_code == 200
            still, dropped = classify(kept, 30)  # the idle ones hit the head timeout
            assert not still and set(dropped) == {b""}
        with httpx.Client(base_url=server.url, timeout=10) as fresh:  # and new clients get in again
            assert fresh.get("/healthz").status_code == 200
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def limited_files_argv(argv: list[str], nofile_soft: int, nofile_hard: int) -> list[str]:
    """``argv`` run under RLIMIT_NOFILE soft/hard (as a shell's `ulimit -n` would set them)."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile_soft}, {nofile_hard})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *argv]


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_worker_keeps_file_descriptors_for_its_own_files_under_a_connection_flood(
    tiny_model: TinyModel, tiny_root: Path, tmp_path: Path
) -> None:
    """A low open-file limit, more idle sockets than it allows: the poller still opens and loads a new
    index version (it failed with `Too many open files`), and the soft limit was raised to the hard one."""
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    soft, hard = 256, 640
    port = free_port()
    argv = limited_files_argv(remi_serve_argv(port, ["--index-root", str(root)]), soft, hard)
    env = {**os.environ, "REMI_POLL_SECONDS": "0.2", "REMI_REQUEST_HEAD_TIMEOUT_S": "120",
           "REMI_KEEP_ALIVE_TIMEOUT_S": "120"}  # fmt: skip
    idle: list[socket.socket] = []
    with ServerProcess(argv, port, tmp_path / "server.log", env).start().wait_ready(90, is_up) as server:
        with httpx.Client(base_url=server.url, timeout=10) as admitted:
            before = admitted.get("/readyz").json()["index"]
            idle = open_many(port, hard + 100)
            try:
                hnsw = {"m": 8, "ef_construction": 40, "ef_search": 16}  # another kind: another version
                version = reindex(tiny_model.artifacts, root, kind="hnsw", params=hnsw, min_recall=0.0).index_version
                assert version != before

                def serves_new() -> bool:
                    return bool(admitted.get("/readyz").json()["index"] == version)

                wait_for(serves_new, timeout=60, interval=0.5)
            finally:
                for sock in idle:
                    sock.close()
        assert "Too many open files" not in server.log_tail(200_000)
        assert open_files_limit(server.pid) == (hard, hard)


# ---------------------------------------------------------------- A3: head size and header count


def test_a_head_over_the_byte_limit_gets_431_and_the_worker_is_not_held(short_timeouts: Server) -> None:
    with connect(short_timeouts) as sock:
        sock.sendall(head("GET", "/healthz", "X-Big: " + "a" * 64 * 1024))
        status, raw = read_response(sock)
        assert status == 431 and b"REMI_MAX_HEAD_BYTES" in raw, raw
        assert until_closed(sock, 10) == b""


def test_an_unfinished_head_is_answered_431_as_soon_as_it_passes_the_limit(short_timeouts: Server) -> None:
    """The answer does not wait for the end of a 100 MB header: it comes once the limit is passed."""
    with connect(short_timeouts) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Huge: " + b"a" * 20 * 1024)
        status, raw = read_response(sock)
    assert status == 431, raw


def test_more_header_lines_than_the_limit_get_431_before_the_body_is_read(short_timeouts: Server) -> None:
    with connect(short_timeouts) as sock:  # 100 lines in all (Host among them) are fine
        sock.sendall(head("GET", "/healthz", *(f"X-N{i}: v" for i in range(99))))
        assert read_response(sock)[0] == 200
    with connect(short_timeouts) as sock:  # 101 are not, and the 50 MB body is never waited for
        sock.sendall(head("POST", "/recommend", *(f"X-N{i}: v" for i in range(98)), length=50_000_000))
        status, raw = read_response(sock)
    assert status == 431 and b"REMI_MAX_HEADERS" in raw, raw


def test_a_request_line_over_the_limit_gets_414(short_timeouts: Server) -> None:
    with connect(short_timeouts) as sock:
        sock.sendall(head("GET", "/healthz?q=" + "x" * 20 * 1024))
        status, raw = read_response(sock)
    assert status == 414, raw
