"""Training steps/s by catalogue size: dense Adam vs ``--optimizer sparse-adam`` vs
``--optimizer rowwise-adagrad`` (docs/results.md#large-catalogues---optimizer-rowwise-adagrad).

The model and the scheme's loss on random batches of the default shapes (ComiRec-SA, batch 128,
L = 20, 1,280 shared negatives, d = 64, K = 4; histories of random length, uniform items) over
synthetic catalogues of each size: no data preparation, so only the step is timed. For each size
and thread setting, blocks of steps alternate between the optimisers so machine noise hits
all alike (as benchmarks/throughput.py); the median block rate is reported. Also the bytes of
optimiser state (Adam's and SparseAdam's exp_avg/exp_avg_sq, row-wise Adagrad's row sums), of the
item table's gradient, and the peak RSS of a fresh process training that size with that
optimiser (model, optimiser, a few steps; measured apart, one process each).

    python -m benchmarks.sparse_optimizer                     # 12k, 120k, 1M, 4M items

Writes benchmarks/results/sparse_optimizer.json and sparse_optimizer.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch

from benchmarks.harness import command, machine, md_table, parser, save_results
from remi.contract import ItemVocabulary
from training.config import OptimizerName, TrainConfig
from training.models import MultiInterestModel, build_model
from training.optimizers import Optimizers, build_optimizers, uses_sparse_items
from training.scheme import TrainBatch, TrainingScheme

OPTIMIZERS: tuple[OptimizerName, ...] = ("adam", "sparse-adam", "rowwise-adagrad")


def random_batches(n_items: int, cfg: TrainConfig, count: int, seed: int = 0) -> list[tuple[TrainBatch, torch.Tensor]]:
    """``count`` batches of the config's shapes: right-padded histories of length 1..L, targets, negatives."""
    gen = torch.Generator().manual_seed(seed)
    items = ItemVocabulary.index_range(n_items)
    low, high = items.start, items.stop
    out = []
    for _ in range(count):
        lengths = torch.randint(1, cfg.seq_len + 1, (cfg.batch_size, 1), generator=gen)
        mask = torch.arange(cfg.seq_len).unsqueeze(0) < lengths
        history = torch.randint(low, high, (cfg.batch_size, cfg.seq_len), generator=gen)
        history = history.masked_fill(~mask, ItemVocabulary.PADDING)
        target = torch.randint(low, high, (cfg.batch_size,), generator=gen)
        negatives = torch.randint(low, high, (cfg.negatives,), generator=gen)
        out.append((TrainBatch(history, mask, target), negatives))
    return out


class Runner:
    """One optimiser's model, optimiser and step, on a shared list of batches."""

    def __init__(self, n_items: int, cfg: TrainConfig):
        torch.manual_seed(0)
        self.cfg, self.scheme = cfg, TrainingScheme.from_config(cfg)
        self.model: MultiInterestModel = build_model(
            cfg.model, n_items, cfg.dim, cfg.interests, cfg.seq_len, uses_sparse_items(cfg)
        )
        self.optim: Optimizers = build_optimizers(self.model, cfg)
        self.grad_bytes = 0

    def steps(self, batches: list[tuple[TrainBatch, torch.Tensor]], start: int, count: int) -> float:
        """Runs ``count`` steps; returns steps/s."""
        t = time.perf_counter()
        for i in range(start, start + count):
            batch, negatives = batches[i % len(batches)]
            loss = self.scheme.step_loss(self.model, batch, negatives, step=i).total
            self.optim.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward has no annotations
            self.optim.step()
        rate = count / (time.perf_counter() - t)
        grad = self.model.item_emb.weight.grad
        if grad is not None:
            if grad.is_sparse:
                grad = grad.coalesce()  # what SparseAdam works on: one row per distinct item
                self.grad_bytes = sum(t.numel() * t.element_size() for t in (grad.indices(), grad.values()))
            else:
                self.grad_bytes = grad.numel() * grad.element_size()
        return rate


def block_steps(n_items: int) -> int:
    """Steps per timed block: about a second of dense Adam at each size on 2 cores."""
    return 100 if n_items <= 20_000 else 40 if n_items <= 200_000 else 8 if n_items <= 2_000_000 else 3


def measure(n_items: int, threads: int, rounds: int, cfg: TrainConfig) -> dict[str, Any]:
    torch.set_num_threads(threads)
    runners = {name: Runner(n_items, cfg.model_copy(update={"optimizer": name})) for name in OPTIMIZERS}
    batches = random_batches(n_items, cfg, 32)
    block = block_steps(n_items)
    rates: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    for rnd in range(rounds + 1):  # round 0 warms up (and allocates the optimiser state)
        for name, runner in runners.items():
            rate = runner.steps(batches, rnd * block, block)
            if rnd:
                rates[name].append(rate)
    med = {name: median(values) for name, values in rates.items()}
    state = {name: r.optim.state_bytes() for name, r in runners.items()}
    grads = {name: r.grad_bytes for name, r in runners.items()}
    del runners  # before the next size allocates its own
    return {
        "items": n_items,
        "threads": threads,
        "block_steps": block,
        "steps_per_s": med,
        "all": rates,
        "optimizer_state_bytes": state,
        "item_grad_bytes": grads,
        "item_table_bytes": ItemVocabulary.table_size_for(n_items) * cfg.dim * 4,
    }


def peak_rss_probe(n_items: int, optimizer: OptimizerName, cfg: TrainConfig) -> None:
    """In a fresh process: build, train a few steps, print the peak RSS in bytes.

    VmHWM of /proc/self/status, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a
    probe started by a large parent would report the parent's peak.
    """
    runner = Runner(n_items, cfg.model_copy(update={"optimizer": optimizer}))
    runner.steps(random_batches(n_items, cfg, 4), 0, 4)
    status = Path("/proc/self/status").read_text()
    print(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024)


def peak_rss(n_items: int, optimizer: str, scheme: str) -> int:
    """Peak RSS of a fresh process training ``n_items`` items with ``optimizer`` (see peak_rss_probe)."""
    probe = [sys.executable, "-m", "benchmarks.sparse_optimizer", "--rss-probe", optimizer, "--items", str(n_items)]
    done = subprocess.run([*probe, "--scheme", scheme], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def main() -> None:
    ap = parser(__doc__, "sparse_optimizer")
    ap.add_argument(
        "--items", type=int, nargs="+", default=[12_000, 120_000, 1_000_000, 4_000_000], help="catalogue sizes"
    )
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread settings (default: 1 and torch's)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed blocks per optimiser")
    ap.add_argument("--scheme", default="sampled", help="training scheme (the loss's terms)")
    ap.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)  # internal: one peak-RSS process
    args = ap.parse_args()
    cfg = TrainConfig(scheme=args.scheme)
    if args.rss_probe:
        peak_rss_probe(args.items[0], args.rss_probe, cfg)
        return
    default_threads = torch.get_num_threads()
    thread_settings = args.threads or sorted({1, default_threads})
    results = []
    t0 = time.perf_counter()
    for threads in thread_settings:
        for n_items in args.items:
            results.append(measure(n_items, threads, args.rounds, cfg))
            rates, seconds = results[-1]["steps_per_s"], time.perf_counter() - t0
            print(f"{n_items} items, {threads} threads: {rates} ({seconds:.0f} s)", flush=True)
    rss = {n: {name: peak_rss(n, name, args.scheme) for name in OPTIMIZERS} for n in args.items}
    for r in results:
        r["peak_rss_bytes"] = rss[r["items"]]
    print(f"peak RSS: {rss} ({time.perf_counter() - t0:.0f} s)", flush=True)
    meta = {
        **machine(),
        "torch": torch.__version__,
        "default_threads": default_threads,
        "model": cfg.model,
        "scheme": cfg.scheme,
        "batch": cfg.batch_size,
        "negatives": cfg.negatives,
        "d": cfg.dim,
        "K": cfg.interests,
        "L": cfg.seq_len,
        "rounds": args.rounds,
        "command": command(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    save_results(args.results, args.name, {"meta": meta, "results": results}, report(results, meta, min(args.items)))


def report(results: list[dict[str, Any]], meta: dict[str, Any], smallest_items: int) -> str:
    """The Markdown table: steps/s, shares of the smallest catalogue's, state, gradient, peak RSS."""
    rows = []
    for r in results:
        base = next(x for x in results if x["threads"] == r["threads"] and x["items"] == smallest_items)
        sps, base_sps = r["steps_per_s"], base["steps_per_s"]
        best_base = max(base_sps.values())  # the best optimiser at the smallest size (today's dense Adam)
        state, grad, rss = r["optimizer_state_bytes"], r["item_grad_bytes"], r["peak_rss_bytes"]
        rows.append(
            [
                f"{r['items']:,}",
                r["threads"],
                *(f"{sps[name]:.1f}" for name in OPTIMIZERS),
                f"{sps['sparse-adam'] / sps['adam']:.2f}x",
                f"{100 * sps['adam'] / base_sps['adam']:.0f}%",
                f"{100 * sps['sparse-adam'] / base_sps['sparse-adam']:.0f}%",
                f"{100 * sps['sparse-adam'] / base_sps['adam']:.0f}%",
                f"{100 * sps['rowwise-adagrad'] / base_sps['rowwise-adagrad']:.0f}%",
                f"**{100 * sps['rowwise-adagrad'] / best_base:.0f}%**",
                *(mib(state[name]) for name in OPTIMIZERS),
                *(mib(grad[name]) for name in OPTIMIZERS),
                *(mib(rss[name]) for name in OPTIMIZERS),
            ]
        )
    small = f"{smallest_items:,}"
    return (
        f"# Training steps/s by catalogue size: adam vs sparse-adam vs rowwise-adagrad\n\n"
        f"`{meta['command']}` ({meta['seconds']} s).\n\n"
        f"{meta['model']}, scheme {meta['scheme']}, batch {meta['batch']}, {meta['negatives']} negatives, "
        f"d={meta['d']}, K={meta['K']}, L={meta['L']}; random batches (no data preparation). Median of "
        f"{meta['rounds']} alternating blocks per optimiser; torch {meta['torch']}, default threads "
        f"{meta['default_threads']}. 'of {small}' is the steps/s as a share of the same optimiser's at "
        f"{small} items; 'sparse of adam at {small}' is sparse-adam's steps/s as a share of dense "
        f"Adam's at {small} items (today's training there); 'rowwise of best at {small}' is "
        f"rowwise-adagrad's as a share of the fastest optimiser at {small} items and the same threads "
        f"(the goal: >= 70% at 4M). State: the optimisers' state tensors (Adam and SparseAdam: "
        f"two table-sized moments; rowwise-adagrad: one float per row, plus dense Adam's on the tower). "
        f"Item grad: the item table's gradient after a step (dense: the whole table; sparse: the "
        f"coalesced batch rows). Peak RSS: a fresh process building the model and optimiser and "
        f"training 4 steps at that size (thread-independent).\n\n"
        + md_table(
            [
                "items",
                "threads",
                "adam steps/s",
                "sparse-adam steps/s",
                "rowwise-adagrad steps/s",
                "sparse/adam",
                f"adam of {small}",
                f"sparse of {small}",
                f"sparse of adam at {small}",
                f"rowwise of {small}",
                f"rowwise of best at {small}",
                "adam state MiB",
                "sparse state MiB",
                "rowwise state MiB",
                "adam item grad MiB",
                "sparse item grad MiB",
                "rowwise item grad MiB",
                "adam peak RSS MiB",
                "sparse peak RSS MiB",
                "rowwise peak RSS MiB",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
