"""How many interests a trained model needs per user: the same checkpoint evaluated with fewer.

A model trained with all K interests (``--adaptive-interests off``) is scored on the test users
with each rule of docs/remi.md A.13 applied at evaluation only (``log2``, ``log3``, ``log4``: the
first max(1, min(K, ceil(log_b n))) interests of a user with n history items; the others retrieve
nothing). Recall@50 against interests searched per user, per checkpoint: what adaptive interests
cost before any training with the rule (a model trained with its rule, ``comirec-sa-causal-log2``
in the quality study, can only do better at the same count).

    python -m studies.adaptive_posthoc runs/quality/amazon_beauty_comirec-sa-causal_remi-default_s202*_20000

Writes studies/results/<name>.json and .md (--name defaults to adaptive_posthoc).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.harness import md_table, parser, save_results

STUDY_RESULTS = Path(__file__).resolve().parent / "results"
RULES = ("off", "log2", "log3", "log4")


def score(run: Path) -> dict[str, dict[str, float]]:
    from training.evaluate import evaluate
    from training.prepare import prepare
    from training.runs import load_run

    cfg, model = load_run(run)
    prep = prepare(cfg)
    out = {}
    for rule in RULES:
        model.adaptive = rule
        metrics, _, lists = evaluate(model, prep.test)
        out[rule] = {
            "recall@50": metrics["recall@50"],
            "ndcg@50": metrics["ndcg@50"],
            "interests_searched": lists["interests_searched"],
        }
        print(run.name, rule, {k: round(v, 4) for k, v in out[rule].items()}, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, "adaptive_posthoc", STUDY_RESULTS)
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of models trained with all K interests")
    args = ap.parse_args(argv)
    per_run = {str(run): score(run) for run in args.runs}
    rows = []
    for rule in RULES:
        recall = [r[rule]["recall@50"] for r in per_run.values()]
        searched = [r[rule]["interests_searched"] for r in per_run.values()]
        change = [r[rule]["recall@50"] / r["off"]["recall@50"] - 1 for r in per_run.values()]
        fewer = [1 - r[rule]["interests_searched"] / r["off"]["interests_searched"] for r in per_run.values()]
        rows.append([
            rule,
            f"{statistics.mean(recall):.4f}",
            f"{statistics.mean(searched):.2f}",
            f"{100 * statistics.mean(fewer):.1f}%",
            f"{100 * statistics.mean(change):+.2f}%",
        ])  # fmt: skip
    table = md_table(["rule at evaluation", "test R@50", "interests searched", "fewer searches", "R@50 vs all K"], rows)
    text = f"# Adaptive interests applied to all-K checkpoints ({len(per_run)} runs)\n\n{table}\n"
    save_results(args.results, args.name, {"runs": per_run}, text)


if __name__ == "__main__":
    main()
