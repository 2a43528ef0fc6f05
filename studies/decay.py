"""Why does REMI's validation curve decay, and which change fixes it?

Trains ComiRec-SA on amazon_beauty (fixed split file) with REMI variants side by side, same
seed and step budget, and records valid Recall@50 curves, test metrics and routing diagnostics.

    python -m studies.decay --steps 20000

Writes studies/results/decay.json, decay.md and decay.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.harness import SHARED_DATA, md_table
from studies.report import ROUTING_KEYS, TEST_KEYS, plot_curves
from studies.runner import Job, run_all

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# the authors' setting, undetached (explicit since `remi train`'s defaults are configs/default.json)
# no item-norm penalty, constant rate: the defaults before docs/results.md#the-default-for-unseen-data
PLAIN = {"emb_l2": 0.0, "lr_schedule": "constant"}
REMI = {"scheme": "remi", "beta": 1.0, "lam": 12800.0, "ihn_detach": False, **PLAIN}
VARIANTS: dict[str, dict[str, Any]] = {
    "sampled": {"scheme": "sampled"},
    "dnn (mean pool) sampled": {"scheme": "sampled", "model": "dnn"},
    "remi raw beta=1 (authors)": REMI,
    "ihn only beta=1": {"scheme": "ihn", "beta": 1.0, "ihn_detach": False, **PLAIN},
    "rr only": {"scheme": "rr", "lam": 12800.0, **PLAIN},
    "remi detached weights": {**REMI, "ihn_detach": True},
    "remi no accidental hits": {**REMI, "remove_accidental_hits": True},
    "remi standardized beta=1": {**REMI, "ihn_scores": "standardized"},
    "remi standardized beta=2": {**REMI, "ihn_scores": "standardized", "beta": 2.0},
    "remi cosine beta=5": {**REMI, "ihn_scores": "cosine", "beta": 5.0},
    "remi rr valid lam=10": {**REMI, "rr_norm": "valid", "lam": 10.0},
    "remi rr valid lam=1": {**REMI, "rr_norm": "valid", "lam": 1.0},
    "remi tuned (amazon_beauty.json)": {"config": CONFIGS / "amazon_beauty.json", "scheme": "remi"},
    "remi tuned + emb_l2 0.01": {"config": CONFIGS / "amazon_beauty.json", "scheme": "remi", "emb_l2": 0.01},
    "remi tuned + emb_l2 0.03": {"config": CONFIGS / "amazon_beauty.json", "scheme": "remi", "emb_l2": 0.03},
    "remi tuned + emb_l2 0.1": {"config": CONFIGS / "amazon_beauty.json", "scheme": "remi", "emb_l2": 0.1},
}


def plot_mechanism(results: list[dict[str, Any]], path: Path) -> None:
    """Spread of the negative logits and the effective number of negatives IHN weights sit on."""
    import matplotlib.pyplot as plt

    with_scores = [r for r in results if r.get("scores")]
    if not with_scores:
        return
    keys = [
        ("neg_logit_std", "std of negative logits"),
        ("ihn_effective_negatives", "IHN effective negatives (of 1280)"),
        ("item_norm", "mean item-embedding norm"),
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(15, 4.2))
    for ax, (key, label) in zip(axes, keys, strict=True):
        for r in with_scores:
            steps = [s for s, _ in r["scores"]]
            ax.plot(steps, [sc[key] for _, sc in r["scores"]], label=r["tags"]["variant"], linewidth=1.3)
        ax.set_xlabel("training step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20000, help="step budget of every run")
    ap.add_argument("--eval-every", type=int, default=1000, help="valid evaluation interval")
    ap.add_argument("--seed", type=int, default=2021, help="training seed")
    ap.add_argument("--parallel", type=int, default=2, help="runs side by side (1 thread each)")
    ap.add_argument("--only", nargs="*", help="run only these variant names")
    ap.add_argument("--runs", type=Path, default=Path("runs/decay"), help="where run folders go")
    ap.add_argument("--name", default="decay", help="base name of the result files")
    args = ap.parse_args()
    data = SHARED_DATA / "amazon_beauty"
    base = {
        "data": data / "interactions.csv.gz",
        "split_file": data / "split.csv.gz",
        "max_steps": args.steps,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "patience": 1000,
    }
    names = args.only or list(VARIANTS)
    jobs = [
        Job(
            f"{n.replace(' ', '_').replace('=', '')}_s{args.seed}_{args.steps}", {**base, **VARIANTS[n]}, {"variant": n}
        )
        for n in names
    ]
    results = run_all(jobs, args.runs, args.parallel)
    ok = [r for r in results if "result" in r]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(ok, indent=1, default=str))
    headers = [
        "variant",
        "best step",
        "valid R@50 best",
        "valid R@50 last",
        *[f"test {k}" for k in TEST_KEYS],
        *ROUTING_KEYS,
        "s/1k steps",
    ]
    rows = []
    for r in ok:
        res, curve = r["result"], r["curve"]
        rows.append(
            [
                r["tags"]["variant"],
                res["best_step"],
                max(v for _, v in curve),
                curve[-1][1],
                *[res["test"][k] for k in TEST_KEYS],
                *[res["routing"][k] for k in ROUTING_KEYS],
                res["seconds_per_1k_steps"],
            ]
        )
    (RESULTS / f"{args.name}.md").write_text(
        f"# REMI decay study: ComiRec-SA on amazon_beauty (split file), {args.steps} steps, seed {args.seed}\n\n"
        "Best checkpoint by valid Recall@50; test metrics of that checkpoint. lambda is per-user mean "
        "(authors' 100 summed = 12,800).\n\n" + md_table(headers, rows)
    )
    plot_mechanism(ok, RESULTS / f"{args.name}_mechanism.png")
    plot_curves(
        {r["tags"]["variant"]: r["curve"] for r in ok},
        RESULTS / f"{args.name}.png",
        f"ComiRec-SA on amazon_beauty: valid Recall@50, {args.steps} steps",
        ncols=2,
    )
    print((RESULTS / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
