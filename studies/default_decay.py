"""Does the default model still decay? `remi train` with no scheme flags, to the end of its budget.

    python -m studies.default_decay --steps 20000

The goal (docs/results.md#the-default-for-unseen-data): with the shipped defaults
(configs/default.json = TrainConfig's defaults), the validation Recall@50 at the end of the step
budget should be within 5% of its peak on every
shared dataset (no decay left). Each dataset gets one `remi train --data D` with only the budget,
the seed and early stopping switched off (patience larger than the run), so the curve is read
to its end; amazon_beauty uses its fixed user split. Reports peak valid Recall@50 and its step,
the value at the budget, their ratio, and the test metrics of the best checkpoint (what
`remi train` keeps). Writes studies/results/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.harness import SHARED_DATA, md_table, save_results
from studies.report import plot_curves
from studies.runner import Job, run_all

RESULTS = Path(__file__).parent / "results"
DATASETS = ("amazon_beauty", "yelp_2019", "movielens_100k", "gowalla_1k")
DECAY_GOAL = 0.95  # value at the budget / peak


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), help="folders of ../shared/data")
    ap.add_argument("--steps", type=int, default=20_000, help="step budget of every run")
    ap.add_argument("--eval-every", type=int, default=1000, help="valid evaluation interval")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2021], help="training seeds (a run each)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="training settings on top of the defaults (e.g. emb_l2=0.1), for every dataset")  # fmt: skip
    ap.add_argument("--parallel", type=int, default=2, help="runs side by side (1 thread each)")
    ap.add_argument("--runs", type=Path, default=Path("runs/default_decay"), help="where run folders go")
    ap.add_argument("--name", default="default_decay", help="results file stem")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    return ap


def jobs(args: argparse.Namespace) -> list[Job]:
    out = []
    for ds, seed in ((ds, seed) for ds in args.datasets for seed in args.seeds):
        data = SHARED_DATA / ds
        flags: dict[str, Any] = {"data": data / "interactions.csv.gz", "max_steps": args.steps,
                                 "eval_every": args.eval_every, "seed": seed,
                                 "patience": args.steps // args.eval_every + 1}  # fmt: skip
        if (data / "split.csv.gz").is_file():
            flags["split_file"] = data / "split.csv.gz"
        extra = dict(item.split("=", 1) for item in args.set)
        suffix = "".join(f"_{key}={value}" for key, value in extra.items())
        out.append(Job(f"{ds}_default{suffix}_s{seed}_{args.steps}", flags | extra, {"dataset": ds, "seed": seed}))
    return out


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if "error" in r:
            rows.append({"dataset": r["tags"]["dataset"], "error": r["error"]})
            continue
        curve = r["curve"]
        peak_step, peak = max(curve, key=lambda point: (point[1], -point[0]))
        end_step, end = curve[-1]
        test = r["result"]["test"]
        rows.append({"dataset": r["tags"]["dataset"], "seed": r["tags"]["seed"],
                     "peak_valid_recall@50": peak, "peak_step": peak_step,
                     "end_valid_recall@50": end, "end_step": end_step, "end_over_peak": end / peak if peak else 0.0,
                     "test_recall@50": test["recall@50"], "test_hr@50": test["hr@50"],
                     "curve": curve})  # fmt: skip
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    table = [
        [
            r["dataset"],
            r.get("seed", ""),
            f"{r['peak_valid_recall@50']:.4f}",
            r["peak_step"],
            f"{r['end_valid_recall@50']:.4f}",
            r["end_step"],
            f"**{r['end_over_peak']:.3f}**",
            "yes" if r["end_over_peak"] >= DECAY_GOAL else "**no**",
            f"{r['test_recall@50']:.4f}",
            f"{r['test_hr@50']:.4f}",
        ]  # fmt: skip
        for r in rows
        if "error" not in r
    ]
    head = ["dataset", "seed", "peak valid R@50", "at step", "valid R@50 at the budget", "step", "budget / peak",
            f">= {DECAY_GOAL}", "test R@50 (best ckpt)", "test HR@50"]  # fmt: skip
    failed = [f"- {r['dataset']}: failed: {r['error']}" for r in rows if "error" in r]
    return "\n".join(
        [
            f"# The default model to the end of its budget (`python -m studies.default_decay --steps {args.steps}"
            f"{' --set ' + ' '.join(args.set) if args.set else ''}`)",
            "",
            f"`remi train --data D` with the shipped defaults (configs/default.json)"
            f"{''.join(f', --{item.replace(chr(95), chr(45)).replace(chr(61), chr(32))}' for item in args.set)}, "
            f"seeds {', '.join(map(str, args.seeds))}, {args.steps:,} "
            f"steps, valid every {args.eval_every:,}, early stopping off; amazon_beauty on its fixed split. "
            "Two runs side by side with one thread each.",
            "",
            md_table(head, table),
            *failed,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    rows = summarise(run_all(jobs(args), args.runs, args.parallel))
    args.results.mkdir(parents=True, exist_ok=True)
    curves = {f"{r['dataset']} s{r['seed']}": r["curve"] for r in rows if "error" not in r}
    plot_curves(curves, args.results / f"{args.name}.png", "valid Recall@50 with the defaults")
    save_results(args.results, args.name, {"args": vars(args), "rows": rows}, report(rows, args))


if __name__ == "__main__":
    main()
