"""The shared harness (loadtest.server, loadtest.cpu, loadtest.wrk) on tiny stand-ins: no model, no Redis."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from loadtest.cpu import CpuSnapshot, children_cpu_seconds, tree_cpu_seconds
from loadtest.server import NotReady, ServerProcess, free_port
from loadtest.wrk import RECOMMEND_LUA, ok_and_errors, parse_output, threads_used, wrk_argv

# A stand-in server: GET /readyz answers 200 after a child process (a "worker") has started.
STAND_IN = """
import http.server, subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("worker", worker.pid, flush=True)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_server_process_waits_until_ready_and_stop_ends_its_workers(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "logs" / "server.log"
    with ServerProcess([sys.executable, "-c", STAND_IN, str(port)], port, log) as server:
        server.start().wait_ready(timeout=30)
        assert server.url == f"http://127.0.0.1:{port}"
        worker = int(log.read_text().split()[1])
        assert _alive(worker)
        assert server.cpu_seconds() >= 0.0
    assert server.proc.poll() is not None
    deadline = time.monotonic() + 5
    while _alive(worker):  # SIGKILLed with the server's process group
        assert time.monotonic() < deadline, "the worker outlived its server"
        time.sleep(0.05)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"]
    server = ServerProcess(argv, port, tmp_path / "server.log").start()
    with pytest.raises(NotReady, match="exit code 3.*bad config"):
        server.wait_ready(timeout=30)


def test_a_server_that_never_gets_ready_times_out(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    server = ServerProcess(argv, port, tmp_path / "server.log").start()
    with pytest.raises(NotReady, match="not ready after 0.5 s"):
        server.wait_ready(timeout=0.5)
    assert server.proc.poll() is not None  # stopped, not left behind


def test_cpu_snapshots_subtract_and_other_is_never_negative() -> None:
    before = CpuSnapshot(wall=10.0, server=1.0, client=0.5, redis=0.25, machine=3.0)
    after = CpuSnapshot(wall=12.0, server=2.5, client=1.0, redis=0.5, machine=5.0)
    used = after - before
    assert used == CpuSnapshot(wall=2.0, server=1.5, client=0.5, redis=0.25, machine=2.0)
    assert CpuSnapshot(1.0, 1.0, 1.0, 1.0, 0.5).other() == 0.0
    assert tree_cpu_seconds(os.getpid()) > 0.0 and children_cpu_seconds() >= 0.0


def test_wrk_command_line_and_summary() -> None:
    argv = wrk_argv("http://127.0.0.1:1", Path("users.txt"), concurrency=1, seconds=0.4, threads=2)
    assert argv[:4] == ["wrk", "-t1", "-c1", "-d1s"]  # threads capped at connections, at least 1 s
    assert argv[argv.index("-s") + 1] == str(RECOMMEND_LUA) and RECOMMEND_LUA.is_file()
    assert argv[-2:] == ["users.txt", "50"] and threads_used(32, 2) == 2
    line = (
        'WRK_JSON {"requests":10,"qps":5.0,"status_counts":{"200":7,"503":2},"non_2xx_3xx":2,'
        '"socket_errors":{"connect":0,"read":1,"write":0,"timeout":0}}'
    )
    summary = parse_output("Running 1s test\n" + line + "\n", "", 0)
    assert summary["requests"] == 10 and ok_and_errors(summary) == (7, 3)
    with pytest.raises(RuntimeError, match="wrk failed \\(1\\): unable to connect"):
        parse_output("", "unable to connect", 1)
