"""(b) POST /recommend over HTTP: the servers under test, wrk runs with CPU accounting, the Python client.

Servers are ``remi serve`` (Redis-backed, ``real_server``) and the no-op app
(benchmarks/noop_app.py, ``noop_server``), started with loadtest.server. Every wrk run
(loadtest.wrk) records, next to wrk's own summary, the CPU that the server's processes, wrk,
redis-server and everything else on the machine used during it (loadtest.cpu), and how the
keep-alive connections were spread over the worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from loadtest.cpu import connections_per_process, cpu_snapshot, redis_pid
from loadtest.server import ServerProcess, free_port, remi_serve_argv
from loadtest.wrk import WrkRun, ok_and_errors, threads_used, wrk_argv

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300.0  # a 100k-item HNSW index and the ONNX warm-up load within this


def history_store_ready(response: httpx.Response) -> bool:
    """Ready, and (for the real service) its history store answers: a run must not start degraded."""
    return response.status_code == 200 and response.json().get("history_store", "ok") == "ok"


def real_server(
    args: argparse.Namespace,
    root: Path,
    prefix: str,
    workers: int,
    microbatch: bool,
    log: Path,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """``remi serve`` on ``root`` with ``workers`` processes, started and ready (use it in ``with``)."""
    port = free_port()
    argv = remi_serve_argv(port, ["--index-root", str(root), "--workers", str(workers)])
    argv += ["--redis-url", args.redis_url, "--log-level", "warning"]
    env = {**os.environ, "REMI_REDIS_PREFIX": prefix, "REMI_MICROBATCH": "true" if microbatch else "false"}
    server = ServerProcess(argv, port, log, env | (extra_env or {}), cwd=REPO)
    return server.start().wait_ready(START_TIMEOUT_S, history_store_ready)


def noop_server(workers: int, response: Path, log: Path) -> ServerProcess:
    """The no-op app replaying ``response``, started and ready (use it in ``with``)."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.noop_app", "--port", str(port), "--workers", str(workers)]
    argv += ["--response", str(response), "--log-level", "warning"]
    server = ServerProcess(argv, port, log, dict(os.environ), cwd=REPO)
    return server.start().wait_ready(START_TIMEOUT_S, history_store_ready)


def wrk(
    url: str, server_cpu: Callable[[], float], users_file: Path, concurrency: int, seconds: float, threads: int
) -> dict[str, Any]:
    """One wrk run; adds server and client CPU seconds (and per request) to wrk's JSON.

    ``server_cpu`` reads the server's CPU seconds so far: its process tree, or this process for
    the in-process server of the profile run.
    """
    redis = redis_pid()
    before = cpu_snapshot(server_cpu, redis)
    run = WrkRun(wrk_argv(url, users_file, concurrency, seconds, threads))
    time.sleep(min(2.0, seconds / 2))
    split = connections_per_process(int(url.rsplit(":", 1)[1]))
    out = run.finish()
    used = cpu_snapshot(server_cpu, redis) - before
    wall = used.wall
    ok, errors = ok_and_errors(out)
    out |= {
        "concurrency": concurrency,
        "wrk_threads": threads_used(concurrency, threads),
        "ok": ok,
        "errors": errors,
        "server_cpu_s": round(used.server, 2),
        "server_cores": round(used.server / wall, 2),
        "server_cpu_ms_per_request": round(1000 * used.server / max(1, out["requests"]), 3),
        "client_cpu_s": round(used.client, 2),
        "client_cores": round(used.client / wall, 2),
        "connections_per_worker": split,
        "redis_cores": round(used.redis / wall, 2) if redis else None,
        "machine_cores": round(used.machine / wall, 2),
        # everything else on the machine: > 0.1 means another job disturbed this run
        "other_cores": round(used.other() / wall, 2),
    }
    return out


def sweep(
    label: str, server: ServerProcess, args: argparse.Namespace, users_file: Path, concurrencies: list[int]
) -> list[dict[str, Any]]:
    """An unrecorded warm-up, then one wrk run of --duration seconds per concurrency."""
    wrk(server.url, server.cpu_seconds, users_file, 8, args.server_warmup, args.wrk_threads)
    rows = []
    for c in concurrencies:
        row = {"config": label, **wrk(server.url, server.cpu_seconds, users_file, c, args.duration, args.wrk_threads)}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("config", "concurrency", "qps", "latency_ms", "errors")}), flush=True)
    return rows


def headline(label: str, server: ServerProcess, args: argparse.Namespace, users_file: Path) -> dict[str, Any]:
    """The long run at concurrency 32 (after an unrecorded warm-up)."""
    wrk(server.url, server.cpu_seconds, users_file, 8, args.server_warmup, args.wrk_threads)
    load = wrk(server.url, server.cpu_seconds, users_file, 32, args.headline_duration, args.wrk_threads)
    row = {"config": label, **load, "headline": True}
    print(
        json.dumps({k: row[k] for k in ("config", "concurrency", "qps", "latency_ms", "errors", "headline")}),
        flush=True,
    )
    return row


def tag(
    rows: list[dict[str, Any]], workers: int, microbatch: bool, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    return [r | {"workers": workers, "microbatch": microbatch, "env": env or {}} for r in rows]


def python_loadtest(server: ServerProcess, users_csv: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """``remi loadtest`` (loadtest.client, in its own process) against ``server``, with the server's cores."""
    cmd = [sys.executable, "-m", "cli", "loadtest", "--url", server.url, "--users-from", str(users_csv)]
    cmd += ["--concurrency", str(concurrency), "--duration", str(seconds), "--warmup", "2"]
    server_cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = json.loads(proc.stdout)
    result["server_cores"] = round((server.cpu_seconds() - server_cpu0) / wall, 2)
    return result
