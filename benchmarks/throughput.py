"""Training throughput: steps/s of `sampled` and `remi` side by side in one process.

Same model, data and threads; blocks of steps alternate between the schemes so machine noise
hits both alike. Default setting is the reference one: ComiRec-SA on amazon_beauty, d=64, K=4,
L=20, batch 128, 1,280 negatives.

    python benchmarks/throughput.py --threads 2

Writes benchmarks/results/throughput.json and throughput.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from statistics import median

import torch

from benchmarks.report import md_table
from benchmarks.runner import SHARED_DATA
from training.config import TrainConfig
from training.data import TrainSampler
from training.models import build_model
from training.prepare import prepare
from training.scheme import TrainBatch, TrainingScheme

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--models", nargs="+", default=["comirec-sa"], help="backbones to time")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--block", type=int, default=300, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5, help="alternating blocks per scheme")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = SHARED_DATA / args.dataset
    split = data_dir / "split.csv.gz"
    base = TrainConfig(data=str(data_dir / "interactions.csv.gz"), split_file=str(split) if split.is_file() else None)
    prep = prepare(base)
    rows, out = [], []
    for model_name in args.models:
        schemes = {
            "sampled": base.model_copy(update={"model": model_name, "scheme": "sampled"}),
            "remi": base.model_copy(update={"model": model_name, "scheme": "remi", "beta": 1.0}),
        }
        states = {}
        for name, cfg in schemes.items():
            torch.manual_seed(0)
            model = build_model(model_name, prep.data.n_items, cfg.dim, cfg.interests, cfg.seq_len)
            optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
            states[name] = (cfg, model, optim, TrainSampler(prep.data, prep.split.train, cfg.seq_len, seed=0))
        rates: dict[str, list[float]] = {name: [] for name in schemes}
        for rnd in range(args.rounds + 1):  # round 0 warms up
            vocab = prep.data.vocabulary
            for name, (cfg, model, optim, sampler) in states.items():
                t = time.perf_counter()
                for _ in range(args.block):
                    hist, mask, target = sampler.sample(cfg.batch_size)
                    negatives = torch.randint(vocab.first_index(), vocab.index_stop(), (cfg.negatives,))
                    batch = TrainBatch(torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(target))
                    loss = TrainingScheme.from_config(cfg).step_loss(model, batch, negatives, step=1).total
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                if rnd:
                    rates[name].append(args.block / (time.perf_counter() - t))
        med = {k: median(v) for k, v in rates.items()}
        out.append(
            {"model": model_name, "steps_per_s": med, "all": rates, "remi_overhead": med["sampled"] / med["remi"] - 1}
        )
        rows.append(
            [
                model_name,
                med["sampled"],
                med["remi"],
                f"{100 * (med['sampled'] / med['remi'] - 1):+.1f}%",
                1000 / med["sampled"],
                1000 / med["remi"],
            ]
        )
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "dataset": args.dataset,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "batch": base.batch_size,
        "negatives": base.negatives,
        "d": base.dim,
        "K": base.interests,
        "L": base.seq_len,
    }
    (RESULTS / "throughput.json").write_text(json.dumps({"meta": meta, "results": out}, indent=2))
    text = (
        f"# Training throughput on {args.dataset}, {args.threads} threads, batch {base.batch_size}, "
        f"{base.negatives} negatives, d={base.dim}, K={base.interests}, L={base.seq_len}\n\n"
        f"Median of {args.rounds} alternating blocks of {args.block} steps.\n\n"
        + md_table(
            ["model", "sampled steps/s", "remi steps/s", "remi time overhead", "sampled s/1k", "remi s/1k"], rows
        )
    )
    (RESULTS / "throughput.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
