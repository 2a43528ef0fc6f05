"""A server under test as a subprocess: a free port, wait until it answers, stop it and its workers.

The end-to-end tests and the serving benchmark start ``remi serve`` (or the no-op app) the same
way, so both go through :class:`ServerProcess`. The process gets its own session (process
group): stopping it sends SIGTERM to the server, which stops its workers itself, and then
SIGKILLs whatever of the group is still there, so no worker outlives a test or a benchmark run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from loadtest.cpu import tree_cpu_seconds

READY_PATH = "/readyz"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's pick; another process could take it later)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def is_ready(response: httpx.Response) -> bool:
    """/readyz says the service can answer (a model is loaded)."""
    return response.status_code == 200


def is_up(response: httpx.Response) -> bool:
    """/readyz answers at all: the process serves HTTP, with or without a model (503)."""
    return response.status_code in (200, 503)


class NotReady(RuntimeError):
    """The server exited, or did not become ready in time."""


def wait_ready(
    url: str,
    timeout: float = 90.0,
    ready: Callable[[httpx.Response], bool] = is_ready,
    alive: Callable[[], bool] = lambda: True,
    interval: float = 0.2,
) -> None:
    """Polls GET ``url``/readyz until ``ready`` accepts the answer; raises :class:`NotReady` once
    ``alive`` says the server is gone or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise NotReady("server exited")
        try:
            if ready(httpx.get(url + READY_PATH, timeout=2)):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise NotReady(f"server not ready after {timeout:g} s")
        time.sleep(interval)


def remi_serve_argv(port: int, args: Sequence[str]) -> list[str]:
    """``remi serve`` of this interpreter (no console script needed) on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "cli", "serve", *args, "--port", str(port)]


class ServerProcess:
    """One server subprocess on 127.0.0.1:``port``, its output appended to ``log``.

    Use as ``with ServerProcess(...).start().wait_ready() as server:`` or call :meth:`stop`.
    """

    def __init__(
        self,
        argv: Sequence[str],
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv, self.port, self.log = list(argv), port, log
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(
        self, timeout: float = 90.0, ready: Callable[[httpx.Response], bool] = is_ready, interval: float = 0.2
    ) -> ServerProcess:
        """:func:`wait_ready` for this process; on failure it is stopped and its log's tail is in the error."""
        try:
            wait_ready(self.url, timeout, ready, lambda: self.proc.poll() is None, interval)
        except NotReady as exc:
            self.stop()
            raise NotReady(f"{exc} (exit code {self.proc.returncode}); {self.log}: {self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server (it stops its own workers), then SIGKILL to what is left of its group."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group is gone already
            self._proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server and all its worker processes."""
        return tree_cpu_seconds(self.pid)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_remi_serve(
    args: Sequence[str],
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    ready: Callable[[httpx.Response], bool] = is_ready,
    cwd: Path | None = None,
) -> ServerProcess:
    """``remi serve`` with ``args`` on a free port, returned once ``ready`` accepts its /readyz."""
    port = free_port()
    return ServerProcess(remi_serve_argv(port, args), port, log, env, cwd).start().wait_ready(timeout, ready)
