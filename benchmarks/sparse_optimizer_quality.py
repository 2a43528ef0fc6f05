"""Quality of ``--optimizer sparse-adam`` against dense Adam on a real dataset, same steps and seed.

A fixed step budget (not trained to convergence): both optimisers train the same config for the
same steps; the best valid checkpoint of each is scored on the test users.

    python -m benchmarks.sparse_optimizer_quality --steps 5000

Writes benchmarks/results/sparse_optimizer_quality.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.report import md_table
from benchmarks.runner import SHARED_DATA
from training.config import TrainConfig
from training.prepare import prepare
from training.trainer import train

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--steps", type=int, default=5000, help="training steps of each run")
    ap.add_argument("--scheme", default="remi", help="training scheme")
    args = ap.parse_args()
    data_dir = SHARED_DATA / args.dataset
    split = data_dir / "split.csv.gz"
    base = TrainConfig(
        data=str(data_dir / "interactions.csv.gz"),
        split_file=str(split) if split.is_file() else None,
        scheme=args.scheme,
        max_steps=args.steps,
        eval_every=max(1, args.steps // 5),
        progress_seconds=0,
    )
    prep = prepare(base)
    results, rows = {}, []
    for name in ("adam", "sparse-adam"):
        cfg = base.model_copy(update={"optimizer": name})
        with tempfile.TemporaryDirectory() as tmp:
            result = train(cfg, Path(tmp) / "run", prepared=prep, show_progress=False)
        assert result is not None
        results[name] = result.to_dict()
        rows.append(
            [name, result.best_step, result.valid["recall@50"], result.test["recall@20"], result.test["recall@50"],
             result.test["ndcg@50"], result.routing["effective_items"], 1000 / result.seconds_per_1k_steps]  # fmt: skip
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sparse_optimizer_quality.json").write_text(json.dumps(results, indent=2))
    text = (
        f"# adam vs sparse-adam on {args.dataset}: {args.scheme}, {args.steps} steps, seed {base.seed}\n\n"
        f"Same config and seed, a fixed step budget (not to convergence); best valid checkpoint.\n\n"
        + md_table(
            ["optimizer", "best step", "valid R@50", "test R@20", "test R@50", "test NDCG@50",
             "effective items", "steps/s"],  # fmt: skip
            rows,
        )
    )
    (RESULTS / "sparse_optimizer_quality.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
