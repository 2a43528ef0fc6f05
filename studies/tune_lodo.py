"""Leave one dataset out over the ``remi tune`` studies: how far a setting chosen without a dataset
falls from that dataset's own tuned setting.

    python -m studies.tune_lodo DATASET=TUNE_DIR [DATASET=TUNE_DIR ...]

The default for unseen data (docs/results.md#the-default-for-unseen-data). The studies start from
the same points: trial 0 is the base config (the shipped default) and the sampler's start-up trials
are drawn from the same seed, so the first
points are identical on every dataset and each was scored on every dataset. For each held-out
dataset, the setting is picked among those common points by the other datasets only (the highest
mean, over them, of its valid Recall@50 relative to the best common point there, so no dataset's
scale dominates). Its valid Recall@50 on the held-out dataset is then set beside the held-out
dataset's own best trial (its tuned setting, from all its trials, TPE's included), as is the
shipped default's. Scores are the trials' best-checkpoint valid Recall@50 at the study's budget.

Writes studies/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean
from typing import Any

import pandas as pd

from benchmarks.harness import md_table, run_and_save

RESULTS = Path(__file__).parent / "results"
PARAMS = ("params_beta", "params_lam", "params_lr", "params_emb_l2")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="+", metavar="DATASET=TUNE_DIR",
                    help="a dataset's name and the --out folder of its remi tune (trials.csv)")  # fmt: skip
    ap.add_argument("--name", default="tune_lodo", help="results file stem")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for <name>.{json,md}")
    return ap


def point(row: pd.Series) -> tuple[float, ...]:
    """A trial's setting, rounded so the same draw on two datasets compares equal."""
    return tuple(float(f"{row[p]:.6g}") for p in PARAMS)


def run(args: argparse.Namespace) -> dict[str, Any]:
    trials = {}
    for spec in args.studies:
        name, folder = spec.split("=", 1)
        frame = pd.read_csv(Path(folder) / "trials.csv")
        trials[name] = frame[frame["state"] == "COMPLETE"] if "state" in frame else frame
    scores = {name: {point(r): float(r["value"]) for _, r in f.iterrows()} for name, f in trials.items()}
    common = sorted(set.intersection(*(set(s) for s in scores.values())))
    if not common:
        raise SystemExit("the studies share no setting: they must start from the same base and sampler seed")
    default = point(trials[next(iter(trials))].sort_values("number").iloc[0])  # trial 0 = the base config
    best_common = {name: max(s[p] for p in common) for name, s in scores.items()}
    rows = []
    for held in scores:
        others = [n for n in scores if n != held]
        pick = max(common, key=lambda p: mean(scores[n][p] / best_common[n] for n in others))
        own_best = max(scores[held].values())
        rows.append(
            {
                "held_out": held,
                "pick": dict(zip(PARAMS, pick, strict=True)),
                "pick_valid": scores[held][pick],
                "own_best_valid": own_best,
                "pick_vs_own": scores[held][pick] / own_best - 1,
                "default_valid": scores[held].get(default),
                "default_vs_own": scores[held][default] / own_best - 1 if default in scores[held] else None,
            }
        )
    return {"datasets": list(scores), "common_points": len(common), "default": default, "rows": rows}


def report(result: dict[str, Any]) -> str:
    def fmt(p: dict[str, float]) -> str:
        beta, lam, lr, emb_l2 = (p[k] for k in PARAMS)
        return f"β {beta:.3g}, λ {lam:.3g}, lr {lr:.2g}, emb_l2 {emb_l2:.2g}"

    rows = [
        [
            r["held_out"],
            fmt(r["pick"]),
            r["pick_valid"],
            r["own_best_valid"],
            f"{r['pick_vs_own']:+.1%}",
            r["default_valid"],
            f"{r['default_vs_own']:+.1%}",
        ]
        for r in result["rows"]
    ]
    head = (
        "# Leave one dataset out over the remi tune studies (`python -m studies.tune_lodo ...`)\n\n"
        f"{result['common_points']} settings were scored on all of {', '.join(result['datasets'])} (the "
        "shipped default and the sampler's shared start-up draws). Per held-out dataset: the setting the "
        "other datasets pick among them, and the shipped default, against the held-out dataset's own best "
        "trial. Valid Recall@50 of the best checkpoint at the study's step budget.\n\n"
    )
    headers = ["held out", "pick of the other datasets", "its valid R@50", "own tuned valid R@50",
               "pick vs own", "shipped default valid R@50", "default vs own"]  # fmt: skip
    return head + md_table(headers, rows)


if __name__ == "__main__":
    run_and_save(parser(), run, report)
