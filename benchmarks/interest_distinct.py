"""Interests that stay distinct (issue 12 §3): how much of remi's Recall@50 gain survives when a
user's K interests are kept apart?

With the tuned RR, ComiRec-SA's interests of a user become near-copies (mean pairwise cosine
~0.93): RR's minimum is a uniform routing row, the same row for every interest. This benchmark
trains, on one dataset with the same split, seed and step budget, `sampled`, `remi` with
configs/default.json, `remi` with the tuned configs/<dataset>.json, and the tuned `remi` with each
option of docs/remi.md A.11 at a few strengths:

- `rr_scope = mean`: RR on the interests' average routing row (the history as a whole must be
  used, each interest may draw on part of it);
- `interest_div`: penalty on the positive pairwise cosine of a user's interests (above
  `interest_div_margin`);
- both together.

Reports test Recall@50, the share of tuned remi's gain over `sampled` kept, the routing
diagnostics (interest similarity: mean pairwise cosine of a user's interests) and the list
metrics (coverage@50, diversity@50, top interest share), and plots interest similarity against
test Recall@50, one series per option. The goal: >= 95% of the gain kept at similarity <= 0.6.

    python -m benchmarks.interest_distinct --dataset amazon_beauty --steps 8000

Writes benchmarks/results/interest_distinct_<dataset>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.report import LIST_KEYS, md_table  # noqa: E402
from benchmarks.runner import SHARED_DATA, Job, run_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIGS = ROOT / "configs"
GAIN_KEPT_GOAL, SIMILARITY_GOAL = 0.95, 0.6


def series(dataset: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Series label -> point label -> `remi train` flags. Options start from the tuned config."""
    tuned = {"config": CONFIGS / f"{dataset}.json", "scheme": "remi"}
    return {
        "reference": {
            "sampled": {"scheme": "sampled"},
            "remi default": {"config": CONFIGS / "default.json", "scheme": "remi"},
            "remi tuned": tuned,
        },
        "rr_scope=mean": {
            "mean": {**tuned, "rr_scope": "mean"},
        },
        "interest_div": {f"div={w:g}": {**tuned, "interest_div": w} for w in (1.0, 3.0, 10.0)},
        "interest_div, margin 0.5": {
            "div=10 m=0.5": {**tuned, "interest_div": 10.0, "interest_div_margin": 0.5},
        },
        "rr_scope=mean + interest_div": {
            f"mean div={w:g}": {**tuned, "rr_scope": "mean", "interest_div": w} for w in (1.0, 3.0)
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--steps", type=int, default=8000, help="step budget of every run")
    ap.add_argument("--seed", type=int, default=2021, help="training seed")
    ap.add_argument("--points", nargs="+", help="only these point labels (default: all)")
    ap.add_argument("--parallel", type=int, default=2, help="runs side by side (1 thread each)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "interest_distinct", help="where run folders go")
    args = ap.parse_args()

    data = SHARED_DATA / args.dataset
    base: dict[str, Any] = {"data": data / "interactions.csv.gz", "max_steps": args.steps, "seed": args.seed}
    if (data / "split.csv.gz").is_file():
        base["split_file"] = data / "split.csv.gz"
    jobs = [
        Job(
            f"{args.dataset}_{point}_s{args.seed}_{args.steps}",
            {**base, **flags},
            {"series": name, "point": point},
        )
        for name, points in series(args.dataset).items()
        for point, flags in points.items()
        if not args.points or point in args.points
    ]
    results = [r for r in run_all(jobs, args.runs, args.parallel) if "result" in r]
    report(results, args)


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    by_point = {r["tags"]["point"]: r["result"] for r in results}
    base = by_point.get("sampled", {}).get("test", {}).get("recall@50", float("nan"))
    top = by_point.get("remi tuned", {}).get("test", {}).get("recall@50", float("nan"))
    rows, points = [], []
    for r in results:
        res = r["result"]
        recall, similarity = res["test"]["recall@50"], res["routing"]["interest_similarity"]
        kept = (recall - base) / (top - base) if top != base else float("nan")
        meets = kept >= GAIN_KEPT_GOAL and similarity <= SIMILARITY_GOAL
        points.append({"series": r["tags"]["series"], "point": r["tags"]["point"], "x": similarity, "y": recall})
        rows.append(
            [
                r["tags"]["series"],
                r["tags"]["point"],
                recall,
                kept,
                res["valid"]["recall@50"],
                similarity,
                res["routing"]["effective_items"],
                *[res["lists"][k] for k in LIST_KEYS],
                res["best_step"],
                "yes" if meets else "no",
            ]
        )
    headers = ["series", "point", "test recall@50", "gain kept", "valid recall@50", "interest similarity"]
    headers += ["effective items", *LIST_KEYS, "best step", "meets goal"]
    stem = f"interest_distinct_{args.dataset}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    text = (
        f"# Interests that stay distinct ({args.dataset}, {args.steps} steps, seed {args.seed}, ComiRec-SA)\n\n"
        "Options of docs/remi.md A.11 on top of the tuned `configs/"
        f"{args.dataset}.json`. Gain kept = (R@50 - sampled) / (tuned remi - sampled), test users; "
        f"goal: >= {GAIN_KEPT_GOAL:.0%} kept at interest similarity <= {SIMILARITY_GOAL} "
        "(mean pairwise cosine of a user's interests, test users).\n\n" + md_table(headers, rows)
    )
    (RESULTS / f"{stem}.md").write_text(text)
    plot(points, base, top, RESULTS / f"{stem}.png", f"{args.dataset}, {args.steps} steps, seed {args.seed}")
    print(text)


def plot(points: list[dict[str, Any]], base: float, top: float, path: Path, title: str) -> None:
    """Interest similarity (x) against test Recall@50 (y), one series per option."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = iter("os^Dv<>P")
    for name in dict.fromkeys(p["series"] for p in points):
        group = sorted((p for p in points if p["series"] == name), key=lambda p: p["x"])
        if name == "reference":
            for p in group:
                ax.scatter(p["x"], p["y"], marker="*", s=160, zorder=3)
                ax.annotate(p["point"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
            continue
        ax.plot([p["x"] for p in group], [p["y"] for p in group], marker=next(markers), label=name)
        for p in group:
            ax.annotate(p["point"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, -10), fontsize=7)
    goal = base + GAIN_KEPT_GOAL * (top - base)
    ax.axhline(goal, color="grey", linestyle="--", linewidth=1, label=f"{GAIN_KEPT_GOAL:.0%} of tuned remi's gain")
    ax.axvline(SIMILARITY_GOAL, color="grey", linestyle=":", linewidth=1, label=f"similarity {SIMILARITY_GOAL}")
    ax.set_xlabel("interest similarity (mean pairwise cosine, test users)")
    ax.set_ylabel("test Recall@50")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
