"""Training throughput: steps/s of `sampled` and `remi` side by side in one process.

Same model, data and threads; blocks of steps alternate between the variants so machine noise
hits both alike. Default setting is the reference one: ComiRec-SA on amazon_beauty, d=64, K=4,
L=20, batch 128, 1,280 negatives, dense Adam. Variants:

    sampled       plain sampled softmax
    remi          beta 1, undetached raw-score weights, RR lambda 12,800 (the authors' setting)
    remi-default  the shipped configs/default.json (beta 0.05, detached weights, lambda 20,000)

``--before`` adds `remi-before` and `remi-default-before`: the same settings with the plain
autograd IHN and RR of training/loss_reference.py, i.e. the code before their gradients were
written out (docs/remi.md#b3-ihn-interest-aware-hard-negatives), timed in the same run.

    python -m benchmarks.throughput                  # 1 thread and torch's default
    python -m benchmarks.throughput --threads 2 1 --before

Writes benchmarks/results/throughput.json and throughput.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import median
from typing import Any

import torch

import training.scheme
from benchmarks.harness import SHARED_DATA, machine, md_table, parser, save_results
from training import loss_reference
from training.config import TrainConfig, load_config
from training.data import TrainSampler
from training.models import build_model
from training.prepare import prepare
from training.scheme import TrainBatch, TrainingScheme

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.json"
BEFORE = "-before"


def variant_configs(base: TrainConfig, model_name: str, before: bool) -> dict[str, TrainConfig]:
    """The timed settings, `sampled` first (the reference of every overhead)."""
    shipped = load_config(DEFAULT_CONFIG).model_dump(
        include={"scheme", "beta", "lam", "ihn_detach", "ihn_scores", "emb_l2"}
    )
    configs = {
        "sampled": base.model_copy(update={"model": model_name, "scheme": "sampled", "emb_l2": 0.0}),
        "remi": base.model_copy(  # set in full: the defaults are configs/default.json's
            update={
                "model": model_name,
                "scheme": "remi",
                "beta": 1.0,
                "lam": 12800.0,
                "ihn_detach": False,
                "emb_l2": 0.0,
                "lr_schedule": "constant",
            }
        ),
        "remi-default": base.model_copy(update={"model": model_name, **shipped}),
    }
    if before:
        configs |= {name + BEFORE: configs[name] for name in ("remi", "remi-default")}
    return configs


@contextlib.contextmanager
def loss_code(variant: str) -> Iterator[None]:
    """The scheme's IHN and RR functions for a variant: the plain autograd form (before the
    closed-form gradients) for `-before`."""
    if not variant.endswith(BEFORE):
        yield
        return
    # the names training/scheme.py imported from training/losses.py, swapped for the old code (not its exports)
    saved = training.scheme.ihn_loss, training.scheme.routing_regularization  # type: ignore[attr-defined]
    training.scheme.ihn_loss = loss_reference.ihn_loss  # type: ignore[attr-defined]
    training.scheme.routing_regularization = loss_reference.routing_regularization  # type: ignore[attr-defined]
    try:
        yield
    finally:
        training.scheme.ihn_loss, training.scheme.routing_regularization = saved  # type: ignore[attr-defined]


def measure(
    prep: Any, base: TrainConfig, model_name: str, threads: int, block: int, rounds: int, before: bool
) -> dict[str, Any]:
    torch.set_num_threads(threads)
    configs = variant_configs(base, model_name, before)
    states = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        model = build_model(model_name, prep.data.n_items, cfg.dim, cfg.interests, cfg.seq_len)
        optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
        sampler = TrainSampler(prep.data, prep.split.train, cfg.seq_len, seed=0)
        states[name] = (cfg, model, optim, sampler, TrainingScheme.from_config(cfg))
    rates: dict[str, list[float]] = {name: [] for name in configs}
    vocab = prep.data.vocabulary
    for rnd in range(rounds + 1):  # round 0 warms up
        for name, (cfg, model, optim, sampler, scheme) in states.items():
            with loss_code(name):
                t = time.perf_counter()
                for _ in range(block):
                    hist, mask, target = sampler.sample(cfg.batch_size)
                    negatives = torch.randint(vocab.first_index(), vocab.index_stop(), (cfg.negatives,))
                    batch = TrainBatch(torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(target))
                    loss = scheme.step_loss(model, batch, negatives, step=1).total
                    optim.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
                    optim.step()
                if rnd:
                    rates[name].append(block / (time.perf_counter() - t))
    med = {k: median(v) for k, v in rates.items()}
    overhead = {k: med["sampled"] / v - 1 for k, v in med.items() if k != "sampled"}
    return {
        "model": model_name,
        "threads": threads,
        "steps_per_s": med,
        "all": rates,
        "overhead": overhead,
        "remi_overhead": overhead["remi"],
        "settings": {k: cfg.model_dump(include={"scheme", "beta", "lam", "ihn_detach"}) for k, cfg in configs.items()},
    }


def main() -> None:
    ap = parser(__doc__, "throughput")
    ap.add_argument("--dataset", default="amazon_beauty", help="folder of ../shared/data")
    ap.add_argument("--models", nargs="+", default=["comirec-sa"], help="backbones to time")
    ap.add_argument(
        "--threads", type=int, nargs="+", default=None, help="torch intra-op threads (default: 1 and torch's)"
    )
    ap.add_argument("--block", type=int, default=300, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=5, help="alternating blocks per variant")
    ap.add_argument(
        "--before", action="store_true", help="also time the plain autograd IHN/RR (training/loss_reference.py)"
    )
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    thread_settings = args.threads or sorted({1, default_threads})
    data_dir = SHARED_DATA / args.dataset
    split = data_dir / "split.csv.gz"
    base = TrainConfig(data=str(data_dir / "interactions.csv.gz"), split_file=str(split) if split.is_file() else None)
    prep = prepare(base)
    out, rows = [], []
    for threads in thread_settings:
        for model_name in args.models:
            r = measure(prep, base, model_name, threads, args.block, args.rounds, args.before)
            out.append(r)
            med = r["steps_per_s"]
            print(f"{model_name}, {threads} threads: {med}", flush=True)
            for name, rate in med.items():
                over = r["overhead"].get(name)
                shown = "" if over is None else f"{100 * over:+.1f}%"
                rows.append(
                    [
                        model_name,
                        threads,
                        name,
                        f"{rate:.0f}",
                        f"{1000 / rate:.2f}",
                        f"**{shown}**" if name in ("remi", "remi-default") else shown,
                    ]
                )
    settings = out[0]["settings"]
    meta = {
        "dataset": args.dataset,
        "threads": thread_settings,
        "default_threads": default_threads,
        **machine(),
        "torch": torch.__version__,
        "batch": base.batch_size,
        "negatives": base.negatives,
        "d": base.dim,
        "K": base.interests,
        "L": base.seq_len,
        "block": args.block,
        "rounds": args.rounds,
        "settings": settings,
    }
    default = settings["remi-default"]
    text = (
        f"# Training throughput on {args.dataset}: sampled vs remi\n\n"
        f"Batch {base.batch_size}, {base.negatives} negatives, d={base.dim}, K={base.interests}, L={base.seq_len}, "
        f"dense Adam. `remi`: beta 1, undetached weights, lambda 12800 (authors' RR); `remi-default`: "
        f"configs/default.json (beta {default['beta']:g}, {'detached' if default['ihn_detach'] else 'undetached'} "
        f"weights, lambda {default['lam']:g})"
        + ("; `-before`: the same with the plain autograd IHN/RR (training/loss_reference.py)" if args.before else "")
        + f". Median of {args.rounds} alternating blocks of {args.block} steps per variant, all variants in one "
        f"process; default threads here: {default_threads}. Overhead = sampled steps/s / variant steps/s - 1 "
        f"(the goal: <= 10% at the default threads).\n\n"
        + md_table(["model", "threads", "variant", "steps/s", "ms/step", "overhead vs sampled"], rows)
    )
    save_results(args.results, args.name, {"meta": meta, "results": out}, text)


if __name__ == "__main__":
    main()
