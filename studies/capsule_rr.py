"""Does RR reach the routing of the capsule backbones (ComiRec-DR, MIND)?
(docs/remi.md#a10-rr-and-ihn-on-the-capsule-backbones)

Trains each capsule backbone on amazon_beauty (fixed split file) with three schemes, same seed
and step budget: `sampled`; `ihn` with configs/default.json's settings, which is exactly what
`remi` trained before RR's gradient reached the capsule routing (docs/remi.md A.10: RR was a
constant, so the two runs take the same steps); and `remi` with configs/default.json, RR now
acting on the last routing update. Reports test metrics, the routing diagnostics and the list
metrics (coverage, diversity, top interest share; recomputed from the checkpoint for a run
trained before they existed).

    python -m studies.capsule_rr --steps 8000

Writes studies/results/capsule_rr.json and capsule_rr.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.harness import SHARED_DATA, md_table
from studies.report import LIST_KEYS, ROUTING_KEYS
from studies.runner import Job, run_all

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "studies" / "results"
DEFAULT = ROOT / "configs" / "default.json"
SCHEMES: dict[str, dict[str, Any]] = {
    "sampled": {"scheme": "sampled"},
    "remi before (= ihn, RR constant)": {"config": DEFAULT, "scheme": "ihn"},
    "remi (RR on the last routing update)": {"config": DEFAULT, "scheme": "remi"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--models", nargs="+", default=["comirec-dr", "mind"], help="backbones")
    ap.add_argument("--steps", type=int, default=8000, help="step budget")
    ap.add_argument("--seed", type=int, default=2021, help="training seed")
    ap.add_argument("--parallel", type=int, default=2, help="runs side by side (1 thread each)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "capsule_rr", help="where run folders go")
    args = ap.parse_args()

    data = SHARED_DATA / args.dataset
    base = {"data": data / "interactions.csv.gz", "max_steps": args.steps, "seed": args.seed}
    if (data / "split.csv.gz").is_file():
        base["split_file"] = data / "split.csv.gz"
    jobs = [
        Job(
            f"{args.dataset}_{model}_{i}_s{args.seed}_{args.steps}",
            {**base, **flags, "model": model},
            {"model": model, "scheme": label},
        )
        for model in args.models
        for i, (label, flags) in enumerate(SCHEMES.items())
    ]
    results = [r for r in run_all(jobs, args.runs, args.parallel) if "result" in r]
    rows = []
    for r in results:
        res = r["result"]
        if "lists" not in res:
            from training.runs import evaluate_run

            res["lists"] = evaluate_run(args.runs / r["name"])["lists"]
        rows.append(
            [
                r["tags"]["model"],
                r["tags"]["scheme"],
                res["test"]["recall@50"],
                res["test"]["hr@50"],
                res["valid"]["recall@50"],
                *[res["routing"][k] for k in ROUTING_KEYS],
                *[res["lists"][k] for k in LIST_KEYS],
                res["best_step"],
            ]
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "capsule_rr.json").write_text(json.dumps(results, indent=1, default=str))
    headers = ["model", "scheme", "test recall@50", "test hr@50", "valid recall@50", *ROUTING_KEYS, *LIST_KEYS]
    headers.append("best step")
    text = (
        f"# RR on the capsule backbones ({args.dataset}, fixed split, {args.steps} steps, seed {args.seed})\n\n"
        "`remi` = configs/default.json (beta 0.05 detached IHN, lambda 20,000). Before RR's gradient reached "
        "the capsule routing it was a constant, so `remi` trained exactly as `ihn` with the same settings "
        "(the middle row). Routing diagnostics on the test users (docs/remi.md A.5).\n\n" + md_table(headers, rows)
    )
    (RESULTS / "capsule_rr.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
