"""Memory of the service's worker processes, 1 vs 2 workers, mapped vs copied versions, and req/s.

For each mode (``mmap``: versions mapped from their files, REMI_MMAP=true; ``copy``: each worker
reads its own copy, as before) and worker count it starts ``remi serve`` on an index root with
Redis histories, drives it with wrk (POST /recommend at concurrency ``--concurrency`` for
``--seconds``: real requests, so the index pages searches touch are resident), then reads every
worker's ``/proc/PID/smaps_rollup``:

* RSS: pages the process has mapped and resident, counting a page shared with the other
  worker in full in each (so RSS summed over workers double-counts the shared index);
* PSS: the same with each shared page divided among the processes that map it, so the sum
  over workers is the memory they actually take; split into anonymous (private heap: Python
  objects, the ONNX runtime) and file-backed (the mapped version files: page cache).

The goal (docs/operations.md#memory-per-worker-one-copy-of-the-version-for-all-workers) is that 2
workers take at most 1.25x the memory of one: the ratio is reported on both sums. The supervisor
process is listed apart (it loads no model). The wrk
run's req/s, latency and errors at the same time come with each row; the load time is the
worker's own "serving version" log line (hash check, ONNX session, index, warm-up).

    python -m benchmarks.worker_memory --root /tmp/scale-1m/root --users-file users.txt \\
        --redis-prefix scale1m: --name worker_memory_1m

Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import flags, machine, md_table, parser, save_results
from benchmarks.serving_http import history_store_ready
from loadtest.server import ServerProcess, free_port, remi_serve_argv
from loadtest.wrk import WrkRun, ok_and_errors, wrk_argv
from remi.contract import read_current, read_index_manifest, version_dir

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")


def smaps_rollup(pid: int) -> dict[str, float]:
    """MiB of the fields above for one process (the kernel's per-process totals of /proc/PID/smaps)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].rstrip(":") in FIELDS:
            values[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return values


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the workers of ``remi serve --workers N``)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def worker_pids(server: ServerProcess, workers: int) -> tuple[list[int], int | None]:
    """The processes that serve: the server itself with one worker, else its children (and the parent)."""
    if workers == 1:
        return [server.pid], None
    kids = [p for p in children(server.pid) if "resource_tracker" not in Path(f"/proc/{p}/cmdline").read_text()]
    return kids, server.pid


def load_seconds(log: Path) -> list[float]:
    """Seconds each worker took to load its version (from its JSON "serving version" log lines)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"serving version"' in line:
            match = re.search(r'"seconds":\s*([0-9.]+)', line)
            if match:
                found.append(float(match.group(1)))
    return found


def sequential(url: str, bodies: Path, requests: int) -> dict[str, Any]:
    """One request at a time, each on a new connection (so the kernel spreads them over the workers).

    The light driver: one core at most, for a memory reading while other jobs hold the machine;
    its rate is latency-bound (concurrency 1), not the service's throughput. Bodies are JSON
    lines (``--bodies``), e.g. explicit histories, so it needs no Redis.
    """
    lines = [json.loads(line) for line in bodies.read_text().splitlines() if line.strip()]
    statuses: dict[str, int] = {}
    latencies, fallbacks = [], 0
    t0 = time.perf_counter()
    for i in range(requests):
        s0 = time.perf_counter()
        response = httpx.post(url + "/recommend", json=lines[i % len(lines)], timeout=30)
        latencies.append((time.perf_counter() - s0) * 1000)
        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
        fallbacks += response.status_code == 200 and response.json().get("fallback") is not None
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "qps": requests / wall,
        "latency_ms": {"p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)]},
        "status_counts": statuses,
        "non_2xx_3xx": sum(n for code, n in statuses.items() if not 200 <= int(code) < 400),
        "socket_errors": {},
        "fallbacks": fallbacks,
    }


def wait_all_loaded(server: ServerProcess, workers: int, timeout: float = 600.0) -> None:
    """Until every worker reports a loaded version in /metrics (/readyz answers from whichever is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        if len(re.findall(r"^remi_version_info\{.*\} 1\.0$", text, flags=re.M)) >= workers:
            return
        time.sleep(0.5)
    raise RuntimeError(f"not every worker loaded a version in {timeout:g} s")


def measure(args: argparse.Namespace, mode: str, workers: int, log: Path) -> dict[str, Any]:
    port = free_port()
    argv = remi_serve_argv(port, ["--index-root", str(args.root), "--workers", str(workers)])
    argv += ["--redis-url", args.redis_url, "--log-level", "info", "--poll-seconds", "0"]
    env = {**os.environ, "REMI_REDIS_PREFIX": args.redis_prefix, "REMI_MMAP": "true" if mode == "mmap" else "false"}
    log.write_text("")
    t0 = time.perf_counter()
    with ServerProcess(argv, port, log, env, cwd=REPO).start().wait_ready(600, history_store_ready) as server:
        wait_all_loaded(server, workers)
        ready_s = time.perf_counter() - t0
        if args.driver == "wrk":
            summary = WrkRun(wrk_argv(server.url, args.users_file, args.concurrency, args.seconds, 2)).finish()
        else:
            summary = sequential(server.url, args.bodies, args.requests)
        ok, errors = ok_and_errors(summary)
        pids, parent = worker_pids(server, workers)
        per_worker = [smaps_rollup(pid) for pid in pids]
        parent_mem = smaps_rollup(parent) if parent else None
    total = {f: round(sum(w.get(f, 0.0) for w in per_worker), 1) for f in FIELDS}
    return {
        "mode": mode,
        "workers": workers,
        "per_worker": [{k: round(v, 1) for k, v in w.items()} for w in per_worker],
        "total": total,
        "supervisor": {k: round(v, 1) for k, v in parent_mem.items()} if parent_mem else None,
        "ready_seconds": round(ready_s, 1),
        "load_seconds": load_seconds(log),
        "requests_per_s": round(summary["qps"], 1),
        "p50_ms": summary["latency_ms"]["p50"],
        "p99_ms": summary["latency_ms"]["p99"],
        "ok": ok,
        "errors": errors,
        "fallbacks": summary.get("fallbacks", 0),
    }


def main() -> None:
    ap = parser(__doc__, "worker_memory")
    ap.add_argument("--root", type=Path, required=True, help="index root with a current version")
    ap.add_argument("--users-file", type=Path, help="wrk driver: user ids with histories in Redis")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the histories")
    ap.add_argument("--redis-prefix", default="remi-bench:", help="key prefix the histories were loaded under")
    ap.add_argument("--modes", nargs="+", default=["mmap", "copy"], choices=["mmap", "copy"], help="load modes")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    ap.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    ap.add_argument("--seconds", type=float, default=20.0, help="wrk seconds per run (before memory is read)")
    ap.add_argument("--driver", choices=["wrk", "sequential"], default="wrk", help="load: wrk, or one at a time")
    ap.add_argument("--bodies", type=Path, help="sequential driver: JSON lines of /recommend bodies")
    ap.add_argument("--requests", type=int, default=2000, help="sequential driver: requests per run")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp/worker_memory"), help="server logs")
    args = ap.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    version = read_current(args.root)
    if version is None:
        sys.exit(f"{args.root}: no current version")
    manifest = read_index_manifest(version_dir(args.root, version), check_hash=False)
    files = {
        str(p.relative_to(version_dir(args.root, version))): round(p.stat().st_size / 2**20, 1)
        for p in sorted(version_dir(args.root, version).rglob("*"))
        if p.is_file()
    }
    rows = []
    for mode in args.modes:
        for workers in args.workers:
            row = measure(args, mode, workers, args.log_dir / f"{mode}-{workers}.log")
            print(json.dumps(row), flush=True)
            rows.append(row)
    for mode in args.modes:
        one = next((r for r in rows if r["mode"] == mode and r["workers"] == 1), None)
        for row in rows:
            if one and row["mode"] == mode:
                row["rss_ratio"] = round(row["total"]["Rss"] / one["total"]["Rss"], 3)
                row["pss_ratio"] = round(row["total"]["Pss"] / one["total"]["Pss"], 3)
    meta = {
        **machine(),
        "version": version,
        "index": {"kind": manifest.kind, "params": manifest.params, "n_items": manifest.n_items, "dim": manifest.dim},
        "version_files_mb": files,
        "args": flags(args),
    }
    table = md_table(
        [
            "mode",
            "workers",
            "RSS sum MB",
            "PSS sum MB",
            "PSS anon MB",
            "PSS file MB",
            "RSS x1",
            "PSS x1",
            "load s",
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "fallbacks",
        ],
        [
            [
                r["mode"],
                r["workers"],
                f"{r['total']['Rss']:,.0f}",
                f"{r['total']['Pss']:,.0f}",
                f"{r['total']['Pss_Anon']:,.0f}",
                f"{r['total']['Pss_File']:,.0f}",
                f"{r.get('rss_ratio', float('nan')):.2f}",
                f"{r.get('pss_ratio', float('nan')):.2f}",
                ", ".join(f"{s:.1f}" for s in r["load_seconds"]),
                f"{r['requests_per_s']:,.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                r["errors"],
                r["fallbacks"],
            ]
            for r in rows
        ],
    )
    lines = [
        f"# Worker memory (`python -m benchmarks.worker_memory`, {manifest.n_items:,} items, {manifest.kind})",
        "",
        f"Version {version}: index {manifest.kind} {manifest.params}; files (MB): {files}.",
        (
            f"Memory read after wrk -t2 -c{args.concurrency} for {args.seconds:g} s of POST /recommend"
            " (Redis histories)."
            if args.driver == "wrk"
            else f"Memory read after {args.requests} POST /recommend one at a time, each on a new connection, "
            "with explicit histories (req/s and latency are then concurrency 1, not throughput)."
        ),
        "Sums over the serving worker processes (the supervisor of 2 workers is apart, in the JSON).",
        "RSS counts a page shared by both workers twice; PSS divides it between them (the memory",
        "actually taken). x1 = the sum divided by the same mode's 1-worker sum: the goal is <= 1.25.",
        "",
        table,
    ]
    save_results(args.results, args.name, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
