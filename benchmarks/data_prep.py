"""Seconds and peak RSS of data preparation at 1M / 10M / 100M interactions (Taobao-shaped synthetic data).

    python -m benchmarks.data_prep --rows 1000000,10000000,100000000

For each size: `remi data synth --rows N --format parquet` (timed), then `prepare()` of a run
(DuckDB engine: read + validate, encode ids, sort by user and time, k-core + CSR, raw ids, split +
eval cuts) with --min-count 5. Every step runs in its own subprocess, which reports its own peak
RSS (getrusage RUSAGE_SELF ru_maxrss: DuckDB's memory is in-process, so it is counted). At the
sizes in --pandas-rows the in-memory pandas path (training.data.read_interactions + encode) runs
on the same rows as CSV.gz, side by side, as the "before". Data goes to --data-dir (deleted after).

Writes benchmarks/results/data_prep.json and data_prep.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import machine, md_table, parser, save_results

GOAL = "100M interactions within 8 GB peak RSS and <= 10 minutes on 2 cores"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(args: argparse.Namespace) -> None:
    """One measured step; prints one JSON line (seconds by stage, peak RSS)."""
    out: dict[str, Any] = {}
    started = time.perf_counter()
    if args.child == "synth":
        from training.synth import SynthConfig, write

        write(SynthConfig.taobao(args.n), args.out, fmt=args.fmt, progress=False)
        out["seconds"] = {"synth": time.perf_counter() - started}
    elif args.child == "prep":
        from training.config import TrainConfig
        from training.prepare import prepare

        timings: dict[str, float] = {"imports": time.perf_counter() - started}
        started = time.perf_counter()
        prep = prepare(TrainConfig(data=args.data, min_count=5, prep_memory_gb=args.memory_gb), timings=timings)
        timings["total"] = time.perf_counter() - started
        out.update(seconds=timings, shape=prep.shape().__dict__)
    else:  # pandas: the in-memory path, for comparison
        from training.data import encode, eval_set, read_interactions, split_users

        timings = {"imports": time.perf_counter() - started}
        started = t = time.perf_counter()
        df = read_interactions(args.data)
        timings["read + validate"] = time.perf_counter() - t
        t = time.perf_counter()
        data = encode(df, min_count=5)
        del df
        timings["k-core + sort + encode"] = time.perf_counter() - t
        t = time.perf_counter()
        split = split_users(data)
        eval_set(data, split.valid, 20)
        eval_set(data, split.test, 20)
        timings["split + eval cut"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        out.update(
            seconds=timings, shape={"users": data.n_users, "items": data.n_items, "interactions": len(data.items)}
        )
    out["peak_rss_mb"] = _peak_mb()
    print(json.dumps(out))


def _run(*args: str, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "benchmarks.data_prep", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = parser(__doc__, "data_prep")
    ap.add_argument("--rows", default="1000000,10000000,100000000", help="comma-separated sizes")
    ap.add_argument("--pandas-rows", default="1000000,10000000", help="sizes also run through the pandas path")
    ap.add_argument("--memory-gb", type=float, default=4.0, help="prep_memory_gb (DuckDB memory limit)")
    ap.add_argument("--data-dir", default="/tmp/data-bench", help="where the generated data goes (deleted after)")
    ap.add_argument("--keep", action="store_true", help="keep the generated Parquet of the largest size")
    ap.add_argument("--child", choices=["synth", "prep", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--fmt", default="parquet", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    sizes = [int(x) for x in args.rows.split(",")]
    pandas_sizes = {int(x) for x in args.pandas_rows.split(",") if x}
    rows: list[dict[str, Any]] = []
    root = Path(args.data_dir)
    for n in sizes:
        folder = root / f"taobao-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        synth = _run("--child", "synth", "--n", str(n), "--out", str(folder), threads=2)
        data = folder / "interactions.parquet"
        entry: dict[str, Any] = {
            "rows": n,
            "synth": synth,
            "parquet_mb": data.stat().st_size / 2**20 if data.exists() else None,
        }
        print(f"{n:,} rows: synth {synth}", flush=True)
        entry["duckdb"] = _run("--child", "prep", "--data", str(data), "--memory-gb", str(args.memory_gb), threads=2)
        print(f"  duckdb prep (Parquet) {entry['duckdb']}", flush=True)
        if n in pandas_sizes:
            csv = folder / "csv"
            _run("--child", "synth", "--n", str(n), "--out", str(csv), "--fmt", "csv", threads=2)
            gz = str(csv / "interactions.csv.gz")
            entry["duckdb_csv"] = _run("--child", "prep", "--data", gz, "--memory-gb", str(args.memory_gb), threads=2)
            print(f"  duckdb prep (CSV.gz) {entry['duckdb_csv']}", flush=True)
            entry["pandas_csv"] = _run("--child", "pandas", "--data", gz, threads=2)
            print(f"  pandas prep (CSV.gz) {entry['pandas_csv']}", flush=True)
        if args.keep and n == max(sizes):
            shutil.rmtree(folder / "csv", ignore_errors=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        rows.append(entry)
    _report(rows, args)


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out = {"goal": GOAL, **machine(), "memory_gb": args.memory_gb, "runs": rows}
    table = []
    stages: list[str] = []
    for r in rows:
        labels = [("duckdb", "DuckDB, Parquet"), ("duckdb_csv", "DuckDB, CSV.gz"), ("pandas_csv", "pandas, CSV.gz")]
        if "duckdb_low_memory" in r:  # the same prep under a lower --prep-memory-gb (a child run added by hand)
            labels.append(
                ("duckdb_low_memory", f"DuckDB, Parquet, prep_memory_gb {r['duckdb_low_memory']['memory_gb']:g}")
            )
        for key, label in labels:
            run = r.get(key)
            if run is None:
                continue
            if "error" in run:
                table.append([f"{r['rows']:,}", label, "failed: " + run["error"], "", "", ""])
                continue
            secs = run["seconds"]
            stages += [s for s in secs if s not in stages and s != "total"]
            shape = run["shape"]
            after = f"{shape['users']:,} / {shape['items']:,} / {shape['interactions']:,}"
            detail = ", ".join(f"{k} {v:.1f}" for k, v in secs.items() if k not in ("total", "imports"))
            table.append([f"{r['rows']:,}", label, f"{secs['total']:.1f}", f"{run['peak_rss_mb']:,.0f}", after, detail])
    synth = [
        [
            f"{r['rows']:,}",
            f"{r['synth']['seconds']['synth']:.1f}",
            f"{r['synth']['peak_rss_mb']:,.0f}",
            f"{r['parquet_mb']:,.0f}",
        ]
        for r in rows
        if "seconds" in r.get("synth", {})
    ]
    pandas = [r for r in rows if "seconds" in r.get("pandas_csv", {})]
    before = ""
    if pandas:
        big = pandas[-1]
        per_row = big["pandas_csv"]["peak_rss_mb"] * 2**20 / big["rows"]
        before = (
            f"\n\nBefore (the pandas path `remi train` used until now, same rows as CSV.gz, same run): "
            f"{big['pandas_csv']['peak_rss_mb']:,.0f} MB at {big['rows']:,} rows, ~{per_row:.0f} bytes per "
            f"interaction, so ~{per_row * 1e8 / 2**30:.0f} GB at 100M: not run at 100M, it does not fit this "
            "24 GB machine. (The previous results file recorded 3.28 s for 1M uniform-random rows on this path.)"
        )
    text = (
        "# Data preparation at 1M / 10M / 100M interactions\n\n"
        f"Goal: {GOAL}. Machine: {os.cpu_count()} CPUs; DuckDB memory limit {args.memory_gb:g} GB "
        "(`prep_memory_gb`). Data: `remi data synth --rows N --format parquet` (Taobao-shaped: N/100 users, "
        "N/25 items, Zipf popularity inside ~4,000-item topics), prepared with `--min-count 5`. Each step runs "
        "in its own process; peak RSS is that process's `ru_maxrss` (imports included: ~0.4 GB); seconds exclude "
        "the imports. `python -m benchmarks.data_prep`.\n\n"
        + md_table(
            ["rows", "path", "seconds", "peak RSS (MB)", "after 5-core: users / items / rows", "seconds by stage"],
            table,
        )
        + before
        + "\n\nSynthetic data generation (`remi data synth --rows N --format parquet`):\n\n"
        + md_table(["rows", "seconds", "peak RSS (MB)", "Parquet (MB)"], synth)
        + "\n"
    )
    save_results(args.results, args.name, out, text)


if __name__ == "__main__":
    main()
