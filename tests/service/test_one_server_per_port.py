"""One server per port (docs/operations.md#hostile-clients-what-one-connection-may-hold): a second
`remi serve` on a taken port exits 2 with one line, whatever the worker counts, instead of joining
the first one's SO_REUSEPORT group."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from loadtest.server import ServerProcess, free_port, is_up, remi_serve_argv
from tests.service.conftest import SHARED_REDIS


def serve_env(prefix: str) -> dict[str, str]:
    return {**os.environ, "REMI_REDIS_URL": SHARED_REDIS, "REMI_REDIS_PREFIX": prefix, "REMI_POLL_SECONDS": "0.2"}


def serve_argv(port: int, root: Path, workers: int) -> list[str]:
    return remi_serve_argv(port, ["--index-root", str(root), "--workers", str(workers)])


def refused_second(port: int, root: Path, workers: int, prefix: str) -> str:
    """Runs a second `remi serve` on ``port``; returns its one stderr line (it must exit 2)."""
    proc = subprocess.Popen(
        serve_argv(port, root, workers), env=serve_env(prefix), stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        raise AssertionError(f"a second server with {workers} worker(s) started on the taken port {port}") from None
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(port) in lines[0], err
    return lines[0]


def answered_by(server: ServerProcess, count: int) -> set[str]:
    """The worker pids that answered ``count`` requests, each on a new connection."""
    workers = set()
    for i in range(count):
        with httpx.Client(timeout=10) as client:
            answer = client.post(server.url + "/recommend", json={"user_id": f"u{i}", "k": 3})
            assert answer.status_code == 200, answer.text
            workers.add(answer.headers["x-remi-worker"])
    return workers


def server_pids(server: ServerProcess) -> set[str]:
    """The server's process and its workers (its children)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return {str(server.pid), *children}


@pytest.mark.parametrize("first_workers", [2, 1])
def test_a_second_server_on_a_taken_port_exits_2_with_one_line(
    first_workers: int, tiny_root: Path, redis_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    argv = serve_argv(port, tiny_root, first_workers)
    with (
        ServerProcess(argv, port, tmp_path / "first.log", serve_env(redis_prefix))
        .start()
        .wait_ready(90, is_up) as first
    ):
        for second_workers in (2, 1):
            line = refused_second(port, tiny_root, second_workers, redis_prefix)
            assert "in use" in line, line
        assert first.proc.poll() is None
        assert answered_by(first, 30) <= server_pids(first)  # every answer from the first server's processes


def test_of_two_servers_started_at_once_on_one_port_one_exits_2(
    tiny_root: Path, redis_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    procs = [
        ServerProcess(serve_argv(port, tiny_root, 2), port, tmp_path / f"s{i}.log", serve_env(redis_prefix)).start()
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while all(p.proc.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        codes = sorted(str(p.proc.poll()) for p in procs)
        assert codes == ["2", "None"], f"exit codes {codes}: both servers run on port {port}"
        [running] = [p for p in procs if p.proc.poll() is None]
        running.wait_ready(90, is_up)
        assert len(answered_by(running, 20)) == 2
    finally:
        for p in procs:
            p.stop()


def test_a_port_is_free_again_once_its_server_stopped(tiny_root: Path, redis_prefix: str, tmp_path: Path) -> None:
    port = free_port()
    for run in range(2):  # the second start must not find the first one's claim or TIME_WAIT connections
        server = ServerProcess(serve_argv(port, tiny_root, 2), port, tmp_path / f"{run}.log", serve_env(redis_prefix))
        with server.start().wait_ready(90, is_up):
            assert len(answered_by(server, 10)) >= 1


def test_listen_refuses_a_port_any_other_program_listens_on() -> None:
    """Not only another remi: a plain listener, or a foreign SO_REUSEPORT one, makes the port taken."""
    from service.workers import PortInUse, listen

    for reuseport in (False, True):
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        try:
            for workers in (1, 2):
                with pytest.raises(PortInUse, match=str(port)):
                    listen("127.0.0.1", port, workers)
        finally:
            other.close()


def test_listen_gives_each_worker_its_own_socket_on_one_port_and_keeps_others_out() -> None:
    from service.workers import PortInUse, listen

    mine = listen("127.0.0.1", 0, 3)
    try:
        ports = {sock.getsockname()[1] for sock in mine.sockets}
        assert ports == {mine.port} and len(mine.sockets) == 3
        for workers in (1, 2):
            with pytest.raises(PortInUse):
                listen("127.0.0.1", mine.port, workers)
            with pytest.raises(PortInUse):  # another address, same port: still this server's
                listen("0.0.0.0", mine.port, workers)
    finally:
        mine.close()
    listen("127.0.0.1", mine.port, 2).close()  # released with its holder
