"""Serving ``remi serve`` on one port: the listening sockets, one server per port, SO_REUSEPORT workers.

uvicorn's own ``--workers`` shares one listening socket: with keep-alive clients that connect
all at once, whichever worker wakes first accepts most connections and the other idles (we
measured 424 req/s with 2 workers vs 792 with a better spread). With SO_REUSEPORT every worker
has its own socket on the same port and the kernel spreads new connections evenly. The parent
supervises: it restarts a worker that dies and stops them all on SIGINT/SIGTERM.

One server per port (docs/operations.md#hostile-clients-what-one-connection-may-hold): SO_REUSEPORT
lets any process of the same user join a port, so a second ``remi serve --workers 2`` on a taken
port used to start and silently take half of
the first one's connections (with other settings). Now the parent claims the port before any
worker exists (:func:`listen`): it takes a Linux abstract-namespace socket named after the port
(held for the server's life, released by the kernel when the process ends, so nothing goes
stale), then binds without SO_REUSEPORT to check that nothing else listens there, then binds
and listens the workers' SO_REUSEPORT sockets itself and hands one to each worker. A taken port
is :class:`PortInUse`: one line and exit status 2 from the CLI, before the model loads, for one
worker or many. One worker listens without SO_REUSEPORT at all.

Every server process builds its uvicorn config with service.transport.server_config (the connection
limits of docs/operations.md#hostile-clients-what-one-connection-may-hold), in one process or in
each worker.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from remi.errors import RemiError

log = logging.getLogger("remi.service")


APP_FACTORY = "service.app:create_app"
BACKLOG = 2048  # uvicorn's default


class PortInUse(RemiError):
    """Another server (another ``remi serve``, or anything else) listens on the port."""

    def __init__(self, port: int, host: str | None = None) -> None:
        where = f"{host}:{port}" if host else f"port {port}"
        super().__init__(
            f"{where} is in use by another server (one `remi serve` per port): choose another --port or stop it"
        )


@dataclass
class Listeners:
    """The listening sockets of one server on host:port, and its claim on the port."""

    host: str
    port: int
    sockets: list[socket.socket]
    claim: socket.socket | None = None
    reuseport: bool = False
    closed: bool = field(default=False, init=False)

    def replace(self, i: int) -> socket.socket:
        """A new listening socket in place of the ``i``-th (whose worker died): the kernel stops
        routing connections to a socket no worker accepts on once the old one closes."""
        self.sockets[i].close()
        self.sockets[i] = _listening(self.host, self.port, self.reuseport)
        return self.sockets[i]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.claim is not None:
            self.claim.close()
        self.closed = True


def listen(host: str, port: int, count: int) -> Listeners:
    """Claims host:port for this server alone and listens there: one plain socket for one worker,
    ``count`` SO_REUSEPORT sockets for ``count`` workers. Port 0 picks a free port.
    Raises :class:`PortInUse` when another server has the port."""
    claim = _claim(port) if port else None
    sockets: list[socket.socket] = []
    try:
        if count == 1:
            sockets.append(_listening(host, port, reuseport=False))
            port = sockets[0].getsockname()[1]
        else:
            # Nothing may listen there already, SO_REUSEPORT or not: a plain bind fails if anything does.
            probe = _bound(host, port, reuseport=False)
            port = probe.getsockname()[1]
            probe.close()
            sockets.extend(_listening(host, port, reuseport=True) for _ in range(count))
        if claim is None:
            claim = _claim(port)
    except BaseException:
        for sock in sockets:
            sock.close()
        if claim is not None:
            claim.close()
        raise
    return Listeners(host, port, sockets, claim, reuseport=count > 1)


def _claim(port: int) -> socket.socket | None:
    """The mark that a ``remi serve`` has the port: a Linux abstract unix socket named after it.

    Bound at most once per network namespace (the scope of a TCP port), gone with the process
    that holds it. Keyed by the port alone: two servers on one port but different addresses
    overlap for wildcard binds, and the operator meant one server per port anyway. None where
    abstract sockets do not exist (not Linux): the bind checks of :func:`listen` remain.
    """
    if not sys.platform.startswith("linux"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0remi-serve-port-{port}")
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port) from None
        return None
    return sock


def _bound(host: str, port: int, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait for TIME_WAIT
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(port, host) from None
        raise RemiError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _listening(host: str, port: int, reuseport: bool) -> socket.socket:
    sock = _bound(host, port, reuseport)
    sock.listen(BACKLOG)
    return sock


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port that other processes may bind too (SO_REUSEPORT)."""
    return _listening(host, port, reuseport=True)


def serve_one(listeners: Listeners, log_level: str, access_log: bool, factory: str = APP_FACTORY) -> None:
    """Runs the app ``factory`` in this process on the listening socket of ``listeners`` until
    SIGINT/SIGTERM; exits with uvicorn's start-up failure status if the app cannot start."""
    import uvicorn

    from service.transport import server_config

    server = uvicorn.Server(server_config(factory, log_level, access_log))
    log.info("listening", extra={"host": listeners.host, "port": listeners.port, "workers": 1})
    server.run(sockets=listeners.sockets)
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


def _worker(sock: socket.socket, log_level: str, access_log: bool, factory: str) -> None:
    import uvicorn

    from remi.logs import setup_logging
    from service.transport import server_config

    setup_logging(log_level)
    uvicorn.Server(server_config(factory, log_level, access_log)).run(sockets=[sock])


def serve_workers(
    workers: int,
    host: str,
    port: int,
    log_level: str,
    access_log: bool,
    factory: str = APP_FACTORY,
    listeners: Listeners | None = None,
) -> None:
    """Runs ``workers`` uvicorn processes of the app ``factory`` ("module:function") on host:port
    until SIGINT/SIGTERM, on the sockets of ``listeners`` (by default it listens itself)."""
    if listeners is None:
        listeners = listen(host, port, workers)
    port = listeners.port
    # One /metrics for all workers: prometheus-client's multiprocess mode, where every worker
    # writes its samples to files in a shared folder and a scrape of any worker merges them.
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="remi-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start(sock: socket.socket) -> Any:
        proc = ctx.Process(target=_worker, args=(sock, log_level, access_log, factory), daemon=False)
        proc.start()
        return proc

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    procs = [start(sock) for sock in listeners.sockets]
    log.info("workers started", extra={"workers": workers, "host": host, "port": port, "balancing": "SO_REUSEPORT"})
    try:
        while not stopping:
            time.sleep(0.5)
            for i, proc in enumerate(procs):
                if not proc.is_alive() and not stopping:
                    log.error("worker died; restarting", extra={"pid": proc.pid, "exitcode": proc.exitcode})
                    if metrics_dir:
                        from prometheus_client import multiprocess

                        mark_dead: Any = multiprocess.mark_process_dead  # prometheus-client declares no types for it
                        mark_dead(proc.pid)
                    procs[i] = start(listeners.replace(i))
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    finally:
        listeners.close()
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
