"""The fast path of POST /recommend (service/fast_recommend.py), off vs on, in alternating rounds.

    python -m benchmarks.serving_fast_path --root INDEX_ROOT --data INTERACTIONS.csv.gz

Same index root, same Redis histories (the data's first --users users, their last 50 events),
`remi serve` with 2 workers and micro-batching; each round starts a server with
REMI_FAST_PATH=false and one with true (the order alternates between rounds, so a drift of the
machine's load hits both), and measures wrk -t2 at C = 32 and wrk -t1 at C = 1. Besides req/s and
latency it splits the server's CPU per request between the workers' event-loop threads (HTTP,
JSON, validation, Redis client, asyncio: what the fast path changes) and their other threads
(ONNX, FAISS, merge: what it does not), read from /proc per thread. The summary is the median
over rounds and the median of the per-round on/off ratios. Writes
benchmarks/results/serving_fast_path.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import flags, machine, save_results
from benchmarks.serving_trained import seed, serve, user_histories
from loadtest.cpu import stat_fields

TICKS = os.sysconf("SC_CLK_TCK")


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "serving_fast_path")
    ap.add_argument("--root", type=Path, required=True, help="index root (`remi reindex` output) of a trained model")
    ap.add_argument("--data", type=Path, required=True, help="interactions CSV the model was trained on")
    ap.add_argument("--users", type=int, default=10_000, help="users with a stored history in Redis")
    ap.add_argument("--history", type=int, default=50, help="events stored per user (their most recent)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the history store")
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of each wrk run at C = 32")
    ap.add_argument("--c1-duration", type=float, default=8.0, help="seconds of each wrk run at C = 1")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load after a server starts")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads at C = 32")
    ap.add_argument("--dedup-cosine", type=float, default=0.94, help="REMI_INTEREST_DEDUP_COSINE")
    ap.add_argument("--work", type=Path, default=Path("/tmp/remi-serving-fast-path"), help="logs and users file")
    return ap


def thread_cpu(server_pid: int) -> tuple[float, float]:
    """(event-loop threads, other threads) CPU seconds so far of the server's worker processes."""
    loop = other = 0.0
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(stat_fields(entry)[1]) == server_pid:
                    children.append(entry)
            except OSError:
                continue
    for pid in children:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                fields = stat_fields(f"{pid}/task/{task.name}")
            except OSError:
                continue  # a thread that ended meanwhile
            seconds = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
            if task.name == pid:
                loop += seconds
            else:
                other += seconds
    return loop, other


def measure(server: Any, users_file: Path, concurrency: int, seconds: float, threads: int) -> dict[str, Any]:
    from benchmarks.serving_http import wrk

    loop0, other0 = thread_cpu(server.pid)
    row = wrk(server.url, server.cpu_seconds, users_file, concurrency, seconds, threads)
    loop1, other1 = thread_cpu(server.pid)
    n = max(1, row["requests"])
    row["event_loop_cpu_ms_per_request"] = round(1000 * (loop1 - loop0) / n, 3)
    row["compute_cpu_ms_per_request"] = round(1000 * (other1 - other0) / n, 3)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.serving import source_fingerprint
    from benchmarks.serving_http import wrk
    from benchmarks.serving_setup import delete_prefix

    args.work.mkdir(parents=True, exist_ok=True)
    users, histories = user_histories(args.data, args.users, args.history)
    users_file = args.work / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    prefix = f"remi-bench-fast-{os.getpid()}-{int(time.time())}:"
    rows: list[dict[str, Any]] = []
    code = Path(__file__).resolve().parents[1]
    meta = {**machine(), "loadavg_before": list(os.getloadavg()), "users": len(users),
            "args": flags(args),
            "source": source_fingerprint()}  # fmt: skip
    try:
        asyncio.run(seed(args.redis_url, prefix, users, histories))
        for r in range(args.rounds):
            for fast in (False, True) if r % 2 == 0 else (True, False):
                env = {"REMI_FAST_PATH": str(fast).lower(), "REMI_INTEREST_DEDUP_COSINE": str(args.dedup_cosine)}
                log = args.work / f"round{r}-{'on' if fast else 'off'}.log"
                with serve(code, args.root, prefix, args, env, log) as server:
                    wrk(server.url, server.cpu_seconds, users_file, 8, args.warmup, args.wrk_threads)
                    c32 = measure(server, users_file, 32, args.duration, args.wrk_threads)
                    c1 = measure(server, users_file, 1, args.c1_duration, 1)
                rows.append({"round": r, "fast_path": fast, "c32": c32, "c1": c1})
                print(json.dumps({"round": r, "fast_path": fast, "qps_c32": c32["qps"],
                                  "p50_c1": c1["latency_ms"]["p50"], "loop_ms": c32["event_loop_cpu_ms_per_request"],
                                  "compute_ms": c32["compute_cpu_ms_per_request"],
                                  "errors": c32["errors"] + c1["errors"]}), flush=True)  # fmt: skip
    finally:
        print(f"deleted {delete_prefix(args.redis_url, prefix)} keys under {prefix!r}", flush=True)
    meta["source_at_end"] = source_fingerprint()
    return {"meta": meta, "rows": rows}


def _median(rows: list[dict[str, Any]], get: Any) -> float:
    return float(statistics.median(get(r) for r in rows))


SUMMARY = [  # (column, value of one row)
    ("req/s C=32", lambda r: r["c32"]["qps"]),
    ("p50 ms C=32", lambda r: r["c32"]["latency_ms"]["p50"]),
    ("p99 ms C=32", lambda r: r["c32"]["latency_ms"]["p99"]),
    ("server CPU/req ms C=32", lambda r: r["c32"]["server_cpu_ms_per_request"]),
    ("event-loop CPU/req ms C=32", lambda r: r["c32"]["event_loop_cpu_ms_per_request"]),
    ("compute CPU/req ms C=32", lambda r: r["c32"]["compute_cpu_ms_per_request"]),
    ("other cores C=32", lambda r: r["c32"]["other_cores"]),
    ("p50 ms C=1", lambda r: r["c1"]["latency_ms"]["p50"]),
    ("p99 ms C=1", lambda r: r["c1"]["latency_ms"]["p99"]),
    ("event-loop CPU/req ms C=1", lambda r: r["c1"]["event_loop_cpu_ms_per_request"]),
    ("errors", lambda r: r["c32"]["errors"] + r["c1"]["errors"]),
    ("fallbacks", lambda r: r["c32"].get("fallbacks", 0) + r["c1"].get("fallbacks", 0)),
]


def report(result: dict[str, Any]) -> str:
    meta, rows = result["meta"], result["rows"]
    off = [r for r in rows if not r["fast_path"]]
    on = [r for r in rows if r["fast_path"]]
    ratios = []
    for r in sorted({row["round"] for row in rows}):
        pair = {row["fast_path"]: row for row in rows if row["round"] == r}
        if len(pair) == 2:
            ratios.append(pair[True]["c32"]["qps"] / max(pair[False]["c32"]["qps"], 1e-9))
    a = meta["args"]
    lines = [
        "# POST /recommend fast path: off vs on (`python -m benchmarks.serving_fast_path`)",
        "",
        f"Index root {a['root']}; {meta['users']:,} users' last {a['history']} events in Redis; `remi serve` "
        f"{a['workers']} workers, micro-batching, REMI_INTEREST_DEDUP_COSINE {a['dedup_cosine']}; "
        f"wrk -t{a['wrk_threads']} "
        f"C = 32 for {a['duration']:.0f} s and wrk -t1 C = 1 for {a['c1_duration']:.0f} s per server; {a['rounds']} "
        f"rounds, order alternating; medians over rounds. {meta['cpus']} cores shared with wrk and Redis (load "
        f"average before: {', '.join(f'{x:.2f}' for x in meta['loadavg_before'])}). Commit "
        f"{meta['source']['commit']}{'' if meta['source'] == meta.get('source_at_end') else ' (CHANGED in the run)'}."
        " Event-loop CPU = the workers' main threads (HTTP, JSON, validation, Redis client, asyncio); "
        "compute = their other threads (ONNX, FAISS, merge). `other cores` > 0.1: another job disturbed the run.",
        "",
        "| fast path | " + " | ".join(name for name, _ in SUMMARY) + " |",
        "|---|" + "---|" * len(SUMMARY),
    ]
    for label, group in (("off", off), ("on", on)):
        cells = [f"{_median(group, get):,.3f}".rstrip("0").rstrip(".") for _, get in SUMMARY]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if ratios:
        lines += ["", f"req/s at C = 32, on / off per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
                  f"median **{statistics.median(ratios):.2f}x**."]  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    save_results(args.results, args.name, result, report(result))


if __name__ == "__main__":
    main()
