"""Quality of ``--optimizer sparse-adam`` and ``rowwise-adagrad`` against dense Adam on a real
dataset, same steps and seed.

A fixed step budget (not trained to convergence): every optimiser trains the same config for the
same steps; the best valid checkpoint of each is scored on the test users. rowwise-adagrad's
table learning rate (``item_lr``) is not the tuned config's Adam ``lr``: ``--item-lrs`` runs it at
each given value (one row each; the choice among them is made on valid recall, not test).

    python -m studies.sparse_optimizer_quality --steps 12000 --item-lrs 0.01 0.03 0.05 0.1

Writes studies/results/sparse_optimizer_quality.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.harness import SHARED_DATA, md_table
from training.config import TrainConfig, load_config
from training.prepare import prepare
from training.trainer import train

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--steps", type=int, default=5000, help="training steps of each run")
    ap.add_argument("--config", type=Path, default=None, help="settings file (default: configs/DATASET.json)")
    ap.add_argument("--item-lrs", type=float, nargs="+", default=[None], help="rowwise-adagrad item_lr values")
    args = ap.parse_args()
    data_dir = SHARED_DATA / args.dataset
    split = data_dir / "split.csv.gz"
    config = args.config or CONFIGS / f"{args.dataset}.json"
    base = load_config(
        config if config.is_file() else CONFIGS / "default.json",
        data=str(data_dir / "interactions.csv.gz"),
        split_file=str(split) if split.is_file() else None,
        max_steps=args.steps,
        eval_every=max(1, min(1000, args.steps // 5)),
        progress_seconds=0,
    )
    prep = prepare(base)
    results, rows = {}, []
    runs: list[tuple[str, dict[str, float]]] = [("adam", {}), ("sparse-adam", {})]
    runs += [("rowwise-adagrad", {"item_lr": lr} if lr else {}) for lr in args.item_lrs]
    for name, extra in runs:
        cfg = TrainConfig(**{**base.model_dump(), "optimizer": name, **extra})  # validated, as the CLI would
        label = name if name != "rowwise-adagrad" else f"{name} (item_lr {cfg.table_lr:g})"
        with tempfile.TemporaryDirectory() as tmp:
            result = train(cfg, Path(tmp) / "run", prepared=prep, show_progress=False)
        assert result is not None
        results[label] = result.to_dict()
        print(label, result.valid["recall@50"], result.test["recall@50"], flush=True)
        rows.append(
            [
                label,
                result.best_step,
                result.valid["recall@50"],
                result.test["recall@20"],
                result.test["recall@50"],
                result.test["ndcg@50"],
                result.routing["effective_items"],
                1000 / result.seconds_per_1k_steps,
            ]  # fmt: skip
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sparse_optimizer_quality.json").write_text(json.dumps(results, indent=2))
    text = (
        f"# adam vs sparse-adam vs rowwise-adagrad on {args.dataset}: {base.scheme}, {args.steps} steps, "
        f"seed {base.seed}\n\n"
        f"Settings: `{config.name if config.is_file() else 'default.json'}`; same seed, a fixed step budget "
        f"(patience {base.patience} evaluations every {base.eval_every} steps); test metrics of the best valid "
        f"checkpoint. steps/s of the whole run on the shared 2-core machine. rowwise-adagrad: the item "
        f"table by row-wise Adagrad at item_lr, the rest by Adam at the config's lr.\n\n"
        + md_table(
            [
                "optimizer",
                "best step",
                "valid R@50",
                "test R@20",
                "test R@50",
                "test NDCG@50",
                "effective items",
                "steps/s",
            ],  # fmt: skip
            rows,
        )
    )
    (RESULTS / "sparse_optimizer_quality.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
