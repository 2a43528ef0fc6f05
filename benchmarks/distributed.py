"""Distributed training throughput: steps/s with 1 process vs N processes (torchrun + DDP).

Same data, model and *global* batch; N processes each compute 1/N of the batch and all-reduce
the gradients (gloo on CPU). Threads are split so the runs use the same cores: 1 process gets
all of them, N processes get cores / N each.

    python -m benchmarks.distributed --nprocs 1 2 --steps 600

Writes benchmarks/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.report import md_table
from benchmarks.runner import SHARED_DATA
from remi.contract import RUN_METRICS

RESULTS = Path(__file__).parent / "results"


def run(data: Path, split: Path | None, nproc: int, steps: int, threads: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cli", "train", "--data", str(data), "--out", str(out), "--scheme", "remi",
           "--max-steps", str(steps), "--eval-every", str(steps), "--no-progress", "--nproc", str(nproc),
           "--threads", str(threads)]  # fmt: skip
    if split:
        cmd += ["--split-file", str(split)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    metrics = json.loads((out / RUN_METRICS).read_text())
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"],
        "steps_per_s": round(metrics["steps"] / metrics["train_seconds"], 1),
        "valid_recall@50": round(metrics["valid"]["recall@50"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    ap.add_argument("--steps", type=int, default=600, help="training steps per run (global batch 128)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to split between processes")
    args = ap.parse_args()
    data_dir = SHARED_DATA / args.dataset
    split = data_dir / "split.csv.gz"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.nprocs:
            row = run(data_dir / "interactions.csv.gz", split if split.is_file() else None, n, args.steps,
                      max(1, args.cores // n), Path(tmp) / f"n{n}")  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["steps_per_s"]
    for row in rows:
        row["speedup"] = round(row["steps_per_s"] / base, 2)
    RESULTS.mkdir(exist_ok=True)
    meta = {"machine": platform.machine(), "cores": args.cores, "dataset": args.dataset, "args": vars(args)}
    (RESULTS / "distributed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = md_table(
        ["processes", "threads each", "steps", "train s", "steps/s", "speedup", "valid R@50"],
        [[r["processes"], r["threads_per_process"], r["steps"], f"{r['train_seconds']:.1f}", f"{r['steps_per_s']:.0f}",
          f"{r['speedup']:.2f}", f"{r['valid_recall@50']:.4f}"] for r in rows],
    )  # fmt: skip
    text = (
        f"# Distributed training throughput (`python -m benchmarks.distributed`)\n\n"
        f"ComiRec-SA + REMI on {args.dataset}, global batch 128, {args.cores} cores split between the processes, "
        f"gloo all-reduce on CPU.\n\n{table}"
    )
    (RESULTS / "distributed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
