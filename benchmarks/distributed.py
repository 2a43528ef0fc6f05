"""Distributed training throughput: steps/s with 1 process vs N processes (torchrun + DDP).

Same data, model and *global* batch; N processes each compute 1/N of the batch and all-reduce
the gradients (gloo on CPU). Threads are split so the runs use the same cores: 1 process gets
all of them, N processes get cores / N each.

``--nodes`` adds a row of 2 "nodes" on this machine: two torchrun launchers (1 process each) that
meet at a c10d rendezvous on 127.0.0.1, as on real nodes. Same machine, so it shows what the
multi-node launch path costs (the rendezvous at start-up; the steps then all-reduce over the
same loopback gloo), not how training scales across machines.

    python -m benchmarks.distributed --nprocs 1 2 --nodes --steps 600

Writes benchmarks/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.harness import SHARED_DATA, machine, md_table, parser, save_results
from loadtest.server import free_port
from remi.contract import RUN_METRICS


def train_args(data: Path, split: Path | None, steps: int, threads: int, out: Path) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out), "--scheme", "remi", "--beta", "1.0", "--lam", "12800",
            "--no-ihn-detach", "--emb-l2", "0", "--lr-schedule", "constant", "--max-steps", str(steps),
            "--eval-every", str(steps), "--no-progress", "--threads", str(threads)]  # fmt: skip
    return args + (["--split-file", str(split)] if split else [])


def run(data: Path, split: Path | None, nproc: int, steps: int, threads: int, out: Path) -> dict[str, Any]:
    """``remi train --nproc N`` on this machine."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "cli", *train_args(data, split, steps, threads, out), "--nproc", str(nproc)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return result_row(out, "1 machine", nproc, threads, time.perf_counter() - started)


def run_two_nodes(data: Path, split: Path | None, steps: int, threads: int, out: Path) -> dict[str, Any]:
    """Two torchrun launchers of 1 process each, meeting at a c10d rendezvous on 127.0.0.1."""
    endpoint, run_id = f"127.0.0.1:{free_port()}", f"bench-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", run_id,
           "-m", "cli", *train_args(data, split, steps, threads, out)]  # fmt: skip
    started = time.perf_counter()
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for node in nodes:
        _, stderr = node.communicate()
        if node.returncode:
            raise RuntimeError(f"a node failed: {stderr[-2000:]}")
    return result_row(out, "2 nodes, c10d on localhost", 2, threads, time.perf_counter() - started)


def result_row(out: Path, layout: str, nproc: int, threads: int, wall: float) -> dict[str, Any]:
    metrics = json.loads((out / RUN_METRICS).read_text())
    return {
        "layout": layout,
        "processes": nproc,
        "threads_per_process": threads,
        "steps": metrics["steps"],
        "train_seconds": metrics["train_seconds"],
        "steps_per_s": round(metrics["steps"] / metrics["train_seconds"], 1),
        "wall_seconds": round(wall, 1),
        "valid_recall@50": round(metrics["valid"]["recall@50"], 4),
    }


def main() -> None:
    ap = parser(__doc__, "distributed")
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    ap.add_argument("--steps", type=int, default=600, help="training steps per run (global batch 128)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores to split between processes")
    ap.add_argument("--nodes", action="store_true", help="add 2 nodes x 1 process on localhost (c10d rendezvous)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over all layouts, in turn; the table shows the best")
    ap.add_argument("--report", type=Path, help="only re-render the Markdown from this JSON of an earlier run")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        write_results(saved["meta"], saved["runs"], args.results, args.name)
        return
    data_dir = SHARED_DATA / args.dataset
    data, split = data_dir / "interactions.csv.gz", data_dir / "split.csv.gz"
    split_file = split if split.is_file() else None
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):  # layouts in turn, so a disturbance hits all of them alike
            for n in args.nprocs:
                runs.append(run(data, split_file, n, args.steps, max(1, args.cores // n), Path(tmp) / f"n{n}-{round_}"))
                print(json.dumps(runs[-1]), flush=True)
            if args.nodes:
                runs.append(
                    run_two_nodes(data, split_file, args.steps, max(1, args.cores // 2), Path(tmp) / f"nodes-{round_}")
                )
                print(json.dumps(runs[-1]), flush=True)
    load = f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1-minute averages)"
    meta = {**machine(), "cores": args.cores, "dataset": args.dataset, "args": vars(args), "load": load}
    write_results(meta, runs, args.results, args.name)


def best_rounds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per layout (first-seen order): its fastest round, with every round's figures beside it.

    The machine is shared and a disturbance only ever slows a run down, so the fastest round is
    the closest to what the layout costs; all rounds stay in the JSON and the table.
    """
    rows = []
    for key in dict.fromkeys((r["layout"], r["processes"]) for r in runs):
        same = [r for r in runs if (r["layout"], r["processes"]) == key]
        best = max(same, key=lambda r: r["steps_per_s"])
        rows.append({**best, "rounds_steps_per_s": [r["steps_per_s"] for r in same],
                     "rounds_wall_seconds": [r["wall_seconds"] for r in same]})  # fmt: skip
    base = rows[0]["steps_per_s"]
    for row in rows:
        row["speedup"] = round(row["steps_per_s"] / base, 2)
    return rows


def write_results(meta: dict[str, Any], runs: list[dict[str, Any]], folder: Path, name: str) -> None:
    rows = best_rounds(runs)
    table = md_table(
        ["layout", "processes", "threads each", "steps", "train s", "steps/s", "speedup", "wall s", "valid R@50",
         "steps/s by round", "wall s by round"],
        [[r["layout"], r["processes"], r["threads_per_process"], r["steps"], f"{r['train_seconds']:.1f}",
          f"{r['steps_per_s']:.0f}", f"{r['speedup']:.2f}", f"{r['wall_seconds']:.1f}", f"{r['valid_recall@50']:.4f}",
          " / ".join(f"{v:.0f}" for v in r["rounds_steps_per_s"]),
          " / ".join(f"{v:.1f}" for v in r["rounds_wall_seconds"])]
         for r in rows],
    )  # fmt: skip
    rounds = len(rows[0]["rounds_steps_per_s"])
    text = (
        f"# Distributed training throughput (`python -m benchmarks.distributed`)\n\n"
        f"ComiRec-SA + REMI on {meta['dataset']}, global batch 128, {meta['cores']} cores split between the "
        f"processes, gloo all-reduce on CPU. {rounds} round(s), the layouts in turn in each; a row is the layout's "
        f"fastest round (the machine is shared: other jobs only ever slow a run down); every round is listed. "
        f"Machine load: {meta.get('load', 'not recorded')}. "
        f"`train s` counts the training steps only; `wall s` is the whole command "
        f'(start-up, data preparation, rendezvous, evaluation). The 2-node row runs both "nodes" on this machine '
        f"(two torchrun launchers meeting at a c10d rendezvous on 127.0.0.1): it shows the cost of the multi-node "
        f"launch path against `--nproc 2`, not scaling across machines.\n\n{table}"
    )
    save_results(folder, name, {"meta": meta, "rows": rows, "runs": runs}, text)


if __name__ == "__main__":
    main()
