"""How the default for unseen data is chosen, and what it costs on each dataset (leave-one-dataset-out).

    python -m studies.default_choice CAND=RESULTS.json [CAND=RESULTS.json ...]

The default for unseen data (docs/results.md#the-default-for-unseen-data). Each candidate default is
one ``studies.default_decay`` result: the same settings trained on the four shared datasets (one
seed, 20k steps, early stopping off). For each
held-out dataset the candidate is picked by the other three only: the highest mean, over those
three, of its best-checkpoint valid Recall@50 relative to the best candidate on that dataset (so
no dataset's scale dominates), among the candidates that do not decay there (valid at the budget
>= 0.95 of the peak on each of the three: the goal the default must meet). The held-out
dataset's test Recall@50 with that pick is then set beside (a) the best candidate chosen on the
held-out dataset's own valid users, and (b) its own tuned setting ``configs/<dataset>.json``
(the seed-2021 remi run of studies/results/quality.json).
The decay criterion (valid at the budget / peak >= 0.95) is reported per candidate and dataset.

Writes studies/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean
from typing import Any

from benchmarks.harness import md_table, save_results

RESULTS = Path(__file__).parent / "results"
DECAY_GOAL = 0.95


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="+", metavar="NAME=RESULTS.json",
                    help="a candidate's name and its studies.default_decay JSON (one row per dataset)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=2021, help="the seed whose rows are compared")
    ap.add_argument("--quality", type=Path, default=RESULTS / "quality.json",
                    help="quality benchmark JSON holding each dataset's own tuned (scheme remi) run")  # fmt: skip
    ap.add_argument("--name", default="default_choice", help="results file stem")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    return ap


def load_candidates(specs: list[str], seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """{candidate: {dataset: default_decay row}} for the rows of ``seed``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        rows = json.loads(Path(path).read_text())["rows"]
        out[name] = {r["dataset"]: r for r in rows if "error" not in r and r.get("seed", seed) == seed}
    return out


def own_tuned(path: Path, seed: int) -> dict[str, float]:
    """Test Recall@50 of each dataset's tuned config (comirec-sa, scheme remi) at ``seed``."""
    if not path.is_file():
        return {}
    runs = json.loads(path.read_text())["runs"]
    return {
        r["tags"]["dataset"]: r["result"]["test"]["recall@50"]
        for r in runs
        if r["tags"]["scheme"] == "remi" and r["tags"]["model"] == "comirec-sa" and r["tags"]["seed"] == seed
    }


def choose(cands: dict[str, dict[str, dict[str, Any]]], tuning: list[str]) -> tuple[str, dict[str, float]]:
    """The candidate with the best mean relative valid Recall@50 over ``tuning`` among those that
    keep >= DECAY_GOAL of their peak at the budget on every tuning dataset (the default must not
    decay; all candidates compete when none qualifies), and every candidate's score."""
    best_on = {ds: max(c[ds]["peak_valid_recall@50"] for c in cands.values()) for ds in tuning}
    scores = {name: mean(c[ds]["peak_valid_recall@50"] / best_on[ds] for ds in tuning) for name, c in cands.items()}
    steady = [name for name, c in cands.items() if all(c[ds]["end_over_peak"] >= DECAY_GOAL for ds in tuning)]
    return max(steady or list(cands), key=lambda name: scores[name]), scores


def leave_one_out(cands: dict[str, dict[str, dict[str, Any]]], tuned: dict[str, float]) -> list[dict[str, Any]]:
    datasets = sorted(set.intersection(*(set(c) for c in cands.values())))
    rows = []
    for held in datasets:
        pick, scores = choose(cands, [ds for ds in datasets if ds != held])
        own, _ = choose(cands, [held])
        test = cands[pick][held]["test_recall@50"]
        own_test = cands[own][held]["test_recall@50"]
        rows.append({"held_out": held, "pick": pick, "pick_score": scores[pick],
                     "test_recall@50": test, "decay_ratio": cands[pick][held]["end_over_peak"],
                     "own_pick": own, "own_pick_test_recall@50": own_test,
                     "vs_own_pick": test / own_test - 1,
                     "tuned_test_recall@50": tuned.get(held),
                     "vs_tuned": test / tuned[held] - 1 if held in tuned else None})  # fmt: skip
    return rows


def report(cands: dict[str, dict[str, dict[str, Any]]], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    datasets = sorted(set.intersection(*(set(c) for c in cands.values())))
    shipped, _ = choose(cands, datasets)
    grid = [
        [name]
        + [
            f"{c[ds]['peak_valid_recall@50']:.4f} / {c[ds]['end_over_peak']:.3f}"
            f"{'' if c[ds]['end_over_peak'] >= DECAY_GOAL else ' ✗'} / {c[ds]['test_recall@50']:.4f}"
            for ds in datasets
        ]
        for name, c in cands.items()
    ]
    lodo = [
        [r["held_out"], r["pick"], f"{r['test_recall@50']:.4f}", f"{r['decay_ratio']:.3f}", r["own_pick"],
         f"{r['own_pick_test_recall@50']:.4f}", f"{100 * r['vs_own_pick']:+.1f}%",
         "" if r["tuned_test_recall@50"] is None else f"{r['tuned_test_recall@50']:.4f}",
         "" if r["vs_tuned"] is None else f"{100 * r['vs_tuned']:+.1f}%"]
        for r in rows
    ]  # fmt: skip
    return "\n".join(
        [
            "# Choosing the default for unseen data: leave one dataset out (`python -m studies.default_choice`)",
            "",
            f"Candidates: each trained on the four shared datasets with `studies.default_decay` (seed {args.seed}, "
            "20k steps, valid every 1k, early stopping off, one thread per run, two side by side). "
            "Cell: peak valid R@50 / valid at the budget over peak (✗: below 0.95, decay left) / test R@50 of the "
            "best checkpoint.",
            "",
            md_table(["candidate", *datasets], grid),
            "",
            f"Chosen by the same rule on all four datasets (what ships as configs/default.json): **{shipped}**.",
            "",
            "Leave one dataset out: the pick is the candidate with the best mean relative peak valid R@50 on the "
            f"other three among those keeping >= {DECAY_GOAL} of their peak at the budget on each of them; "
            "'own pick' is the best candidate by the held-out dataset's own valid users; 'tuned' is "
            f"its own `configs/<dataset>.json` (Optuna on its valid users, no emb_l2; seed {args.seed} run of the "
            "quality benchmark, early stopping on).",
            "",
            md_table(
                [
                    "held out",
                    "pick (from the other 3)",
                    "test R@50",
                    "budget / peak",
                    "own pick",
                    "own pick test R@50",
                    "pick vs own pick",
                    "tuned test R@50",
                    "pick vs tuned",
                ],
                lodo,
            ),  # fmt: skip
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    cands = load_candidates(args.candidates, args.seed)
    rows = leave_one_out(cands, own_tuned(args.quality, args.seed))
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "candidates": {n: {ds: {k: v for k, v in r.items() if k != "curve"} for ds, r in c.items()}
                             for n, c in cands.items()},
              "leave_one_out": rows}  # fmt: skip
    save_results(args.results, args.name, result, report(cands, rows, args))


if __name__ == "__main__":
    main()
