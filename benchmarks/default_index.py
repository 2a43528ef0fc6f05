"""The default index path on the serving benchmark's trained model, against a no-op app in one run.

    python -m benchmarks.default_index --artifacts ART --data INTERACTIONS.csv.gz --phase build
    python -m benchmarks.default_index --artifacts ART --data INTERACTIONS.csv.gz --phase measure

ART is the model of the serving benchmark's recipe (`remi data synth --users 50000 --items
100000`, `remi train --scheme remi --min-count 1 --max-steps 300`, `remi export`; 86,726 items),
INTERACTIONS its data. ``build`` (timed, the machine as it is) makes two index roots from ART:

* ``default``: this code's `remi reindex` with no kind or parameter flags (``--kind auto`` and the
  served recall gate, index/auto.py): its wall time is what auto costs on this catalogue;
* ``old default``: `remi reindex --kind hnsw` of ``--base-ref`` (the code before the served gate:
  HNSW M = 48, efSearch calibrated on interest vectors of held-out histories).

``measure`` (meant for a quiet machine) first scores both roots' indexes with the served gate's
one query set (index/gate.py: recall@50 of the served answers against those over an exact index,
and CPU us per user of search + merge on one thread), then serves each with this code's `remi
serve` (--workers, the service's defaults: micro-batching, fast path, interest dedup 0.94) and
the no-op FastAPI app (benchmarks/noop_app.py, replaying a captured real answer), one after
another, --rounds times: wrk -t2 at C = 32 for --duration s and C = 1 for --c1-duration s, users
drawn from the data (their last 50 events in Redis, fresh key prefix, deleted at the end).
Only the index differs between the two real servers. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, flags, machine, md_table, parser, save_results

BASE_REF = "f134deb"  # the last commit whose reindex gated on interest vectors (before index/gate.py)
LABELS = ("default", "noop", "old default")


def build_parser() -> argparse.ArgumentParser:
    ap = parser(__doc__, "default_index")
    ap.add_argument("--artifacts", type=Path, required=True, help="exported artifacts of the recipe's model")
    ap.add_argument("--data", type=Path, required=True, help="interactions CSV the model was trained on")
    ap.add_argument("--phase", choices=["build", "measure", "all"], default="all", help="what to run")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-default-index",
                    help="cache folder: index roots, base code, logs, the build record")  # fmt: skip
    ap.add_argument("--base-ref", default=BASE_REF, help="git ref of the old default's reindex")
    ap.add_argument("--users", type=int, default=10_000, help="users with a stored history in Redis")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the history store")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of each wrk run at C = 32")
    ap.add_argument("--c1-duration", type=float, default=10.0, help="seconds of each wrk run at C = 1")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load after a server starts")
    ap.add_argument("--rounds", type=int, default=1, help="times the three servers are measured, alternating")
    return ap


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Both index roots (reused when built), with the wall time of each reindex job."""
    from benchmarks.serving_trained import base_code, build_root, clean_env

    args.work.mkdir(parents=True, exist_ok=True)
    record_file = args.work / "build.json"
    record: dict[str, Any] = json.loads(record_file.read_text()) if record_file.is_file() else {}
    root = args.work / "root-default"
    if not (root / "current").exists():
        cmd = [sys.executable, "-m", "cli", "reindex", "--artifacts", str(args.artifacts), "--root", str(root)]
        t0, cpu0 = time.perf_counter(), _children_cpu()
        subprocess.run(cmd, cwd=REPO, check=True, env=clean_env())
        record["default"] = {
            "command": "remi reindex --artifacts ART --root ROOT",
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(_children_cpu() - cpu0, 1),
            "loadavg": round(os.getloadavg()[0], 2),
        }
    old_root = args.work / "root-old"
    if not (old_root / "current").exists():
        t0 = time.perf_counter()
        build_root(old_root, args.artifacts.resolve(), base_code(args.work, args.base_ref), [])
        record["old default"] = {
            "command": f"remi reindex --kind hnsw (code of {args.base_ref})",
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    for label, folder in (("default", root), ("old default", old_root)):
        record.setdefault(label, {})["manifest"] = current_manifest(folder)
    record_file.write_text(json.dumps(record, indent=1))
    return record


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


def current_manifest(root: Path) -> dict[str, Any]:
    from retrieval.store import read_current

    name = read_current(root)
    manifest: dict[str, Any] = json.loads((root / "versions" / str(name) / "manifest.json").read_text())
    manifest.pop("files", None)
    return {"version": name, **manifest}


def gate_figures(args: argparse.Namespace) -> dict[str, Any]:
    """Both roots' indexes measured by the served gate's one query set (the gate's own code)."""
    from index.gate import ServedGate, artifact_queries
    from remi.artifacts import load_artifacts
    from retrieval.store import load_current

    arts = load_artifacts(args.artifacts)
    gate = ServedGate(arts, artifact_queries(arts), dedup_cosine=0.94)
    out: dict[str, Any] = {"queries": gate.describe()}
    for label, root in (("default", args.work / "root-default"), ("old default", args.work / "root-old")):
        index = load_current(root).index
        gate.measure(index)  # warm the index's pages
        out[label] = gate.measure(index).summary()
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Gate figures, then the three servers under wrk, --rounds times."""
    import httpx

    from benchmarks.serving_http import noop_server
    from benchmarks.serving_setup import delete_prefix
    from benchmarks.serving_trained import measure as wrk_runs
    from benchmarks.serving_trained import seed, serve, user_histories

    work = args.work
    gate = gate_figures(args)
    print(json.dumps(gate), flush=True)
    users, histories = user_histories(args.data, args.users, 50)
    users_file = work / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    prefix = f"remi-bench-default-index-{os.getpid()}-{int(time.time())}:"
    captured = work / "real_response.json"
    runs: list[dict[str, Any]] = []
    roots = {"default": work / "root-default", "old default": work / "root-old"}
    try:
        asyncio.run(seed(args.redis_url, prefix, users, histories))
        for round_no in range(args.rounds):
            for label in LABELS:
                log = work / "logs" / f"{label.replace(' ', '-')}-{round_no}.log"
                print(f"== {label} (round {round_no + 1})", flush=True)
                if label == "noop":
                    with noop_server(args.workers, captured, log) as server:
                        http = wrk_runs(server, args, users_file)
                else:
                    with serve(REPO, roots[label], prefix, args, {}, log) as server:
                        if not captured.exists():  # the no-op app replays a real answer
                            r = httpx.post(server.url + "/recommend", json={"user_id": users[0], "k": 50}, timeout=10)
                            r.raise_for_status()
                            captured.write_bytes(r.content)
                        http = wrk_runs(server, args, users_file)
                runs.append({"label": label, "round": round_no, **http})
    finally:
        print(f"deleted {delete_prefix(args.redis_url, prefix)} keys under {prefix!r}", flush=True)
    return {"gate": gate, "runs": runs, "users": len(users)}


QUIET = 0.1  # other cores at most this during a C = 32 run: the run was not disturbed


def summary(runs: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Medians over the undisturbed rounds of one server (all rounds when none was), errors and
    fallbacks summed over those rounds."""
    every = [r for r in runs if r["label"] == label]
    mine = [r for r in every if r["c32"]["other_cores"] <= QUIET] or every
    c32, c1 = [r["c32"] for r in mine], [r["c1"] for r in mine]
    return {
        "qps": statistics.median(r["qps"] for r in c32),
        "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in c32),
        "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in c32),
        "errors": sum(r["errors"] for r in c32 + c1),
        "fallbacks": sum(int(r.get("fallbacks") or 0) for r in c32 + c1),
        "cpu_ms_per_request": statistics.median(r["server_cpu_ms_per_request"] for r in c32),
        "other_cores": max(r["other_cores"] for r in c32),
        "c1_qps": statistics.median(r["qps"] for r in c1),
        "c1_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in c1),
        "rounds": len(mine),
        "disturbed_rounds": len(every) - len(mine),
    }


def index_label(manifest: dict[str, Any]) -> str:
    p = manifest["params"]
    if manifest["kind"] == "hnsw":
        return f"hnsw M{p['m']} ef{p['ef_search']} {p.get('storage', 'flat')}"
    if manifest["kind"] == "ivfpq":
        return f"ivfpq nlist {p['nlist']} PQ{p['pq_m']} refine {p['refine']} nprobe {p['nprobe']}"
    return str(manifest["kind"])


def report(result: dict[str, Any]) -> str:
    build_rec, measured = result["build"], result["measure"]
    gate, runs = measured["gate"], measured["runs"]
    rows = {label: summary(runs, label) for label in LABELS}
    noop = rows["noop"]["qps"]
    used = ", ".join(f"{label} {row['rounds']}" for label, row in rows.items())
    table = []
    for label in LABELS:
        r = rows[label]
        index = "-" if label == "noop" else index_label(build_rec[label]["manifest"])
        g = gate.get(label, {})
        table.append([
            label, index, f"{g['recall']:.4f}" if g else "-", f"{g['us_per_user']:.0f}" if g else "-",
            f"{r['qps']:,.0f}", f"{r['qps'] / noop:.2f}", f"{r['p50_ms']:.2f} / {r['p99_ms']:.2f}", r["errors"],
            r["fallbacks"], f"{r['cpu_ms_per_request']:.3f}", f"{r['other_cores']:.2f}", f"{r['c1_p50_ms']:.2f}",
        ])  # fmt: skip
    default = build_rec["default"]
    lines = [
        "# The default index path (`python -m benchmarks.default_index`)",
        "",
        f"Model: {result['meta']['artifacts']} ({build_rec['default']['manifest']['n_items']:,} items; the serving "
        f"benchmark's recipe). {measured['users']:,} users' last 50 events in Redis. Each server: "
        f"{result['meta']['args']['workers']} workers (this code's `remi serve`, its defaults), wrk "
        f"-t{result['meta']['args']['wrk_threads']} at C = 32 for {result['meta']['args']['duration']:.0f} s and "
        f"C = 1 for {result['meta']['args']['c1_duration']:.0f} s, the three servers one after another, "
        f"{result['meta']['args']['rounds']} round(s), medians of the undisturbed ones (other cores <= {QUIET}: "
        f"{used}); on {result['meta']['machine']['cpus']} "
        "cores shared with wrk and Redis, background training paused (the quiet lock).",
        "",
        "`recall@50` and `us/user` are the served gate's (index/gate.py): "
        f"{gate['queries']['users']:,} users of every history length "
        f"({', '.join(f'{k}: {v}' for k, v in gate['queries']['users_by_length'].items())} events), seen items "
        "excluded, k = 50, interest dedup 0.94; recall of the served answer against the same engine over an exact "
        "index, CPU per user of search + merge on one thread. `x noop` = req/s over the no-op app's in the same "
        "run; `other cores` = CPU of everything else during the C = 32 run (> 0.1: disturbed).",
        "",
        md_table(
            [
                "server",
                "index",
                "recall@50",
                "us/user",
                "req/s C=32",
                "x noop",
                "p50 / p99 ms C=32",
                "errors",
                "fallbacks",
                "server CPU/req ms",
                "other cores",
                "p50 ms C=1",
            ],
            table,
        ),  # fmt: skip
        "",
        f"`remi reindex` (no kind or parameter flags) took {default.get('wall_s', '?')} s wall "
        f"({default.get('cpu_s', '?')} CPU-s, load average {default.get('loadavg', '?')}) on this catalogue; "
        f"auto's own search {default['manifest'].get('selection_seconds')} s. Its candidates (chosen first):",
        "",
        md_table(
            ["candidate", "params", "recall@50", "us/user", "build s", "outcome"],
            [
                [
                    c["label"],
                    ", ".join(f"{k} {v}" for k, v in c["params"].items() if k in ("ef_search", "refine", "nprobe"))
                    or "-",
                    "-" if c["recall"] is None else f"{c['recall']:.4f}",
                    "-" if c["us_per_user"] is None else f"{c['us_per_user']:.0f}",
                    f"{c['build_s']:.1f}",
                    "chosen" if c["chosen"] else ("passed" if c["passed"] else f"failed ({c['stopped']})"),
                ]
                for c in default["manifest"].get("candidates") or []
            ],
        ),  # fmt: skip
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    record = build(args)
    if args.phase == "build":
        print(json.dumps(record, indent=1, default=str))
        return
    result = {
        "meta": {"machine": machine(), "args": flags(args), "artifacts": str(args.artifacts)},
        "build": record,
        "measure": measure(args),
    }
    save_results(args.results, args.name, result, report(result))


if __name__ == "__main__":
    main()
