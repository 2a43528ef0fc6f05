"""Serving benchmark: compute floor in-process, then POST /recommend over HTTP with wrk.

    python -m benchmarks.serving                     # full run, about 10 min on 2 cores
    python -m benchmarks.serving --duration 5 --headline-duration 10 --concurrency 1 32   # quick
    python -m benchmarks.serving --trained ART --data DATA.csv.gz   # a trained model, lever by lever

With --trained, the whole run is benchmarks/serving_trained.py (see its --help): a real exported
model and the histories of its own data, each serving lever
(docs/operations.md#serving-cost-of-a-trained-model) against the code before it, with recall@50 of
the served answers against exact search.

This module is the command line and the order of the runs; the work is done in
benchmarks/serving_setup.py (artifacts, histories), serving_stages.py (a), serving_http.py (b),
serving_profile.py (c) and serving_report.py (Markdown, plot, targets), on the servers, wrk
runs and CPU accounting of the loadtest package that the end-to-end tests use too.

Setup (cached under --work, rebuilt only when missing):

* a synthetic model artifact folder for a 100k-item catalogue at d = 64: a ComiRec-SA user tower
  (K = 4, L = 20) whose item table is replaced by clustered vectors with log-normal norms (the
  recipe of benchmarks/index.py), exported to ONNX and checked against PyTorch, written per
  remi/contract.py (no training: the benchmark is about the serving path, not about quality);
* an index root built with ``remi reindex --kind hnsw`` (the library's reindex, default HNSW
  parameters, recall@50 checked on the tower's interests);
* --users histories of 20-50 items (2-4 topics each) in Redis under a fresh key prefix, deleted
  again at the end (SCAN + DEL of that prefix only).

Measurements:

(a) compute floor: per request in one process, no HTTP: the history fetch from Redis
    (RedisHistory.get_many of one user), encode, ONNX model, FAISS search and merge, plus building
    and encoding the response as the app does (a dict encoded by orjson) as a separate stage;
    median and p99 over --floor-requests.
(b) HTTP: ``remi serve`` (uvicorn, uvloop, httptools, no access log) with 1 and 2 worker
    processes at each --concurrency with wrk (loadtest/recommend.lua), then micro-batching
    on at the best worker count, then the best configuration at concurrency 32 for
    --headline-duration seconds; the no-op app (benchmarks/noop_app.py: same stack, precomputed
    answer of the same bytes) at the same workers and concurrencies; and one run of the Python
    ``remi loadtest`` at concurrency 32 against the best configuration. Server and client CPU
    seconds are read from /proc and getrusage, so CPU per request is reported next to the rate.
    With --variant-env KEY=VALUE the real-server sweeps and headline are repeated with that
    environment (e.g. OMP_NUM_THREADS=1, which showed that FAISS ran with the OpenMP default in the
    compute threads before the service set the thread count in each of them).
(c) optional (--profile-seconds > 0): cProfile of a one-worker server's event-loop thread under
    load at concurrency 32 (not used for any other figure).

Nothing is pinned; server, wrk and Redis share the machine's cores, as they would on one host.
Writes benchmarks/results/serving.json, serving.md and serving.png (latency vs throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import flags, machine
from benchmarks.serving_http import headline, noop_server, python_loadtest, real_server, sweep, tag
from benchmarks.serving_report import best_of, best_workers, plot, report, targets
from benchmarks.serving_setup import build_artifacts, delete_prefix, seed_histories, synthetic_spec, synthetic_users
from benchmarks.serving_stages import compute_floor

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "serving")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-serving-bench",
                    help="cache folder for the artifacts, index root, users files and server logs")  # fmt: skip
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size")
    ap.add_argument("--dim", type=int, default=64, help="embedding size d")
    ap.add_argument("--clusters", type=int, default=2000, help="topic clusters of the synthetic catalogue")
    ap.add_argument("--seed", type=int, default=0, help="seed of the catalogue, model and histories")
    ap.add_argument("--users", type=int, default=10_000, help="users with a stored history in Redis")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the history store")
    ap.add_argument(
        "--prefix", default=None, help="Redis key prefix (default: a fresh remi-bench-serving-<pid>-<time>:)"
    )
    ap.add_argument("--floor-requests", type=int, default=2000, help="requests timed for the in-process compute floor")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64], help="wrk connections to sweep")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server worker counts to sweep")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run of the sweeps")
    ap.add_argument("--headline-duration", type=float, default=60.0,
                    help="seconds of the headline run (best configuration, concurrency 32)")  # fmt: skip
    ap.add_argument("--server-warmup", type=float, default=3.0, help="seconds of unrecorded load after a server starts")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (capped at the connection count)")
    ap.add_argument(
        "--fallback-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the other micro-batch setting for --headline-duration at C = 32: with a healthy Redis "
        "both must answer with 0 fallbacks (a circuit breaker that opens on one late reply shows here)",
    )
    ap.add_argument(
        "--loadtest-duration", type=float, default=15.0, help="seconds of the `remi loadtest` run (0 = skip)"
    )
    ap.add_argument("--profile-seconds", type=float, default=10.0, help="seconds of the cProfile run (0 = skip)")
    ap.add_argument("--profile-top", type=int, default=15, help="functions listed from the profile")
    ap.add_argument(
        "--variant-env",
        nargs="*",
        default=[],
        help="KEY=VALUE environment of an extra real-server sweep + headline at every worker count, e.g. "
        "OMP_NUM_THREADS=1 (default: none)",
    )
    ap.add_argument(
        "--report-only", action="store_true", help="re-render the .md and .png from the existing .json, measure nothing"
    )
    return ap


def source_fingerprint() -> dict[str, str]:
    """The git commit and a hash of the serving code (service/, index/, remi/), to catch edits mid-run."""
    digest = hashlib.sha256()
    for path in sorted(p for d in ("service", "index", "remi") for p in (REPO / d).rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    return {"commit": harness.commit(), "code_sha256": digest.hexdigest()[:16]}


def all_targets(result: dict[str, Any], variant: dict[str, str]) -> list[list[str]]:
    """The targets as shipped, then with the --variant-env environment if one was run."""
    return targets(result, {}) + (targets(result, variant) if variant else [])


def write_results(result: dict[str, Any], folder: Path, name: str) -> None:
    """<name>.json, <name>.md and <name>.png in ``folder``; the Markdown is printed too."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2))
    text = report(result, name)
    (folder / f"{name}.md").write_text(text)
    plot(result["http"], folder / f"{name}.png")
    print(text)


def http_runs(
    args: argparse.Namespace, root: Path, prefix: str, work: Path, first_user: str, variant: dict[str, str]
) -> dict[str, Any]:
    """(b): the sweeps, the no-op baseline, the headline (+ fallback check), the Python client and the variant."""
    users_file, users_csv, logs = work / "users.txt", work / "users.csv", work / "logs"
    result: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    captured = work / "real_response.json"
    for w in args.workers:
        with real_server(args, root, prefix, w, False, logs / f"real-w{w}.log") as server:
            if w == args.workers[0]:  # the no-op app replays this answer
                import httpx

                r = httpx.post(server.url + "/recommend", json={"user_id": first_user, "k": 50}, timeout=10)
                r.raise_for_status()
                captured.write_bytes(r.content)
            rows += tag(sweep(f"real w{w}", server, args, users_file, args.concurrency), w, False)
    at32 = {w: best_of(rows, f"real w{w}", 32) for w in args.workers}
    best_w = best_workers(rows, "real w{}", args.workers)
    result["best_workers"] = best_w
    label = f"real w{best_w} microbatch"
    with real_server(args, root, prefix, best_w, True, logs / f"real-w{best_w}-mb.log") as server:
        rows += tag(sweep(label, server, args, users_file, args.concurrency), best_w, True)
    mb32, off32 = best_of(rows, label, 32), at32[best_w]
    assert mb32 is not None and off32 is not None  # 32 is always swept
    use_mb = mb32["errors"] == 0 and mb32["qps"] > off32["qps"]
    result["microbatch_verdict"] = (
        f"{'on' if use_mb else 'off'} is better at C = 32 ({mb32['qps']:,.0f} req/s on vs {off32['qps']:,.0f} off)"
    )
    for w in args.workers:
        with noop_server(w, captured, logs / f"noop-w{w}.log") as server:
            rows += tag(sweep(f"noop w{w}", server, args, users_file, args.concurrency), w, False)

    head_label = f"real w{best_w}" + (" microbatch" if use_mb else "")
    with real_server(args, root, prefix, best_w, use_mb, logs / "headline.log") as server:
        rows += tag([headline(head_label, server, args, users_file)], best_w, use_mb)
        if args.fallback_check:  # the other micro-batch setting, as long: a healthy Redis must give 0 fallbacks
            check = f"real w{best_w}" + ("" if use_mb else " microbatch") + " (fallback check)"
            with real_server(args, root, prefix, best_w, not use_mb, logs / "fallback-check.log") as other:
                rows += tag([{**headline(check, other, args, users_file), "headline": False,
                              "fallback_check": True}], best_w, not use_mb)  # fmt: skip
        if args.loadtest_duration > 0:
            result["python_loadtest"] = python_loadtest(server, users_csv, 32, args.loadtest_duration)
            result["python_loadtest_reference"] = best_of(rows, head_label, 32)
            print(json.dumps({"python_loadtest": result["python_loadtest"]}), flush=True)

    if variant:  # the same service with extra environment (default OMP_NUM_THREADS=1)
        text = " ".join(f"{k}={v}" for k, v in variant.items())
        for w in args.workers:
            with real_server(args, root, prefix, w, False, logs / f"variant-w{w}.log", variant) as server:
                rows += tag(sweep(f"real w{w} {text}", server, args, users_file, args.concurrency), w, False, variant)
        vbest = best_workers(rows, "real w{} " + text, args.workers)
        result["variant_best_workers"] = vbest
        with real_server(args, root, prefix, vbest, False, logs / "variant-headline.log", variant) as server:
            rows += tag([headline(f"real w{vbest} {text}", server, args, users_file)], vbest, False, variant)
    result["http"] = rows
    return result


def main() -> None:
    if "--trained" in sys.argv[1:]:  # the trained-model mode has its own flags
        from benchmarks.serving_trained import main as trained_main

        trained_main(sys.argv[1:])
        return
    ap = parser()
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads((args.results / f"{args.name}.json").read_text())
        saved["targets"] = all_targets(saved, dict(kv.split("=", 1) for kv in saved["meta"]["args"]["variant_env"]))
        write_results(saved, args.results, args.name)
        return
    if 32 not in args.concurrency:
        ap.error("--concurrency must include 32 (the headline and target concurrency)")

    variant = dict(kv.split("=", 1) for kv in args.variant_env)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    spec = synthetic_spec(args.items, args.dim, args.clusters, args.seed)
    prefix = args.prefix or f"remi-bench-serving-{os.getpid()}-{int(time.time())}:"
    loadavg = list(os.getloadavg())
    others = subprocess.run(["pgrep", "-f", "benchmarks.index"], capture_output=True, text=True).stdout.split()
    if others:
        print(f"warning: benchmarks.index is running ({others}); timings will be disturbed", flush=True)

    art = build_artifacts(work / f"artifacts-{spec['items']}-{spec['dim']}-{spec['seed']}", spec)
    root = work / f"root-{spec['items']}-{spec['dim']}-{spec['seed']}"
    from index.publish import reindex

    t0 = time.perf_counter()
    built = reindex(art, root, "hnsw")
    print(f"index: {built.index_version} (built {built.built}, {time.perf_counter() - t0:.1f} s)", flush=True)

    users, histories = synthetic_users(art, spec, args.users)
    (work / "users.txt").write_text("\n".join(users) + "\n")  # wrk's users file
    (work / "users.csv").write_text("user_id\n" + "\n".join(users) + "\n")  # remi loadtest's

    from loadtest.wrk import version as wrk_version

    result: dict[str, Any] = {
        "meta": {
            **machine(),
            "loadavg_before": loadavg,
            "other_benchmarks_running": bool(others),
            "spec": spec,
            "users": args.users,
            "index_version": built.index_version,
            "args": flags(args),
            "source": source_fingerprint(),
            "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "OPENBLAS_"))},
            "wrk": wrk_version(),
        }
    }
    try:
        t0 = time.perf_counter()
        asyncio.run(seed_histories(args.redis_url, prefix, users, histories))
        print(f"seeded {len(users):,} histories under {prefix!r} in {time.perf_counter() - t0:.1f} s", flush=True)

        result["floor"] = compute_floor(root, args.redis_url, prefix, users, args.floor_requests)
        print(json.dumps(result["floor"]["stages"]), flush=True)

        result |= http_runs(args, root, prefix, work, users[0], variant)
        if args.profile_seconds > 0:
            from benchmarks.serving_profile import profile_server

            result["profile"] = profile_server(args, root, prefix, work / "users.txt")
    finally:
        print(f"deleted {delete_prefix(args.redis_url, prefix)} keys under {prefix!r}", flush=True)

    result["meta"]["source_at_end"] = source_fingerprint()
    result["targets"] = all_targets(result, variant)
    write_results(result, args.results, args.name)


if __name__ == "__main__":
    main()
