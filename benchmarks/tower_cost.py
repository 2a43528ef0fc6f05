"""What one user costs the service, per backbone: the ONNX user tower's CPU time, the interests it
hands to the index (one search each) and the time of those searches.

The quality table (docs/results.md) puts this beside each model's recall: a model that wins on
recall but doubles serving compute is not a free default (at most 2x the current default:
docs/results.md#against-sasrec-self-attention-encoders-and-adaptive-interests-in-progress). Weights
do not change the cost, so each backbone is built with random weights at the catalogue's shape
(items, d, L, K), exported exactly as ``remi export`` does, and timed under onnxruntime with one
thread (the service's default), interleaved round by round so a noisy
machine slows every model alike; the figure reported is the median round.

Interests searched per user come from a history-length sample: with ``--histories DATA`` the
last L items of every user of a shared dataset, else uniform lengths 1..L. The searches run on
the index kind ``remi reindex`` picks for the catalogue size (index.build.choose_kind, default
parameters) over random unit-variance item vectors, top 50 per active interest.

    python -m benchmarks.tower_cost --items 12101 --histories ../shared/data/amazon_beauty/interactions.csv.gz

Writes benchmarks/results/tower_cost.{json,md}.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import flags, machine, md_table, parser, save_results
from index.build import build_faiss, choose_kind, resolve_params
from remi.artifacts import UserTower, pad_histories
from remi.contract import ItemVocabulary
from training.export import export_onnx
from training.models import EncoderSpec, MultiInterestModel, active_interests, build_model

# label -> (backbone, encoder blocks, adaptive rule): the rows of the quality table
BACKBONES: dict[str, tuple[str, int, str]] = {
    "comirec-sa": ("comirec-sa", 0, "off"),
    "comirec-sa-adaptive": ("comirec-sa", 0, "log2"),
    "comirec-sa-tf": ("comirec-sa", 2, "off"),
    "sasrec": ("sasrec", 2, "off"),
    "dnn": ("dnn", 0, "off"),
}


def history_lengths(path: Path | None, seq_len: int, users: int, seed: int) -> np.ndarray:
    """Per-user history lengths capped at L: from a dataset's users, else uniform 1..L."""
    rng = np.random.default_rng(seed)
    if path is None:
        return rng.integers(1, seq_len + 1, users)
    import pandas as pd

    counts = pd.read_csv(path, usecols=["user_id"])["user_id"].value_counts().to_numpy()
    lengths: np.ndarray = np.minimum(rng.choice(counts, users), seq_len)
    return lengths


def build(label: str, n_items: int, dim: int, seq_len: int, interests: int) -> MultiInterestModel:
    backbone, blocks, rule = BACKBONES[label]
    encoder = EncoderSpec(blocks=blocks) if blocks else None
    model = build_model(backbone, n_items, dim, interests, seq_len, encoder=encoder)
    model.adaptive = rule
    return model.eval()


def time_round(tower: UserTower, batches: list[tuple[np.ndarray, np.ndarray]], index: Any) -> tuple[float, float]:
    """Seconds per user of the tower and of the searches of its active interests, over one pass."""
    tower_s = search_s = 0.0
    users = 0
    for ids, mask in batches:
        t0 = time.perf_counter()
        vectors, _, active = tower.run_with_mask(ids, mask)
        t1 = time.perf_counter()
        index.search(np.ascontiguousarray(vectors[active], dtype=np.float32), 50)
        search_s += time.perf_counter() - t1
        tower_s += t1 - t0
        users += len(ids)
    return tower_s / users, search_s / users


def main() -> None:
    ap = parser(__doc__, "tower_cost")
    ap.add_argument("--items", type=int, default=12_101, help="catalogue size (default: amazon_beauty's)")
    ap.add_argument("--dim", type=int, default=64, help="embedding size d")
    ap.add_argument("--seq-len", type=int, default=20, help="history length L")
    ap.add_argument("--interests", type=int, default=4, help="K of the multi-interest backbones")
    ap.add_argument("--histories", type=Path, help="interactions file whose users' lengths are sampled")
    ap.add_argument("--users", type=int, default=2048, help="users per timing round")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes to time")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds per model and batch size")
    ap.add_argument("--models", nargs="+", default=list(BACKBONES), help=f"of: {', '.join(BACKBONES)}")
    args = ap.parse_args()

    torch.manual_seed(0)
    lengths = history_lengths(args.histories, args.seq_len, args.users, seed=0)
    rng = np.random.default_rng(1)
    items = ItemVocabulary.index_range(args.items)
    histories = [rng.integers(items.start, items.stop, int(n)) for n in lengths]
    ids, mask = pad_histories(histories, args.seq_len)
    towers: dict[str, UserTower] = {}
    searched: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.models:
            model = build(label, args.items, args.dim, args.seq_len, args.interests)
            path = Path(tmp) / f"{label}.onnx"
            export_onnx(model, path)
            towers[label] = UserTower(path, threads=1)
            rule = BACKBONES[label][2]
            searched[label] = float(
                active_interests(torch.from_numpy(mask), model.n_interests, rule).sum(1).double().mean()
            )
        kind = choose_kind(args.items)
        index = build_faiss(
            np.random.default_rng(2).standard_normal((args.items, args.dim)).astype(np.float32),
            kind,
            resolve_params(kind, args.items, args.dim),
        )
        timings: dict[str, dict[int, list[float]]] = {label: {b: [] for b in args.batch} for label in towers}
        search_t: dict[str, dict[int, list[float]]] = {label: {b: [] for b in args.batch} for label in towers}
        for b in args.batch:
            batches = [(ids[i : i + b], mask[i : i + b]) for i in range(0, len(ids), b)]
            for tower in towers.values():  # warm-up
                time_round(tower, batches[: max(1, len(batches) // 8)], index)
            for _ in range(args.rounds):
                for label, tower in towers.items():
                    tower_s, search_s = time_round(tower, batches, index)
                    timings[label][b].append(tower_s)
                    search_t[label][b].append(search_s)

    base = "comirec-sa" if "comirec-sa" in towers else next(iter(towers))
    rows: list[list[Any]] = []
    summary: list[dict[str, Any]] = []

    def total(label: str, b: int) -> float:
        return float(statistics.median(np.add(timings[label][b], search_t[label][b]))) * 1e3

    for label in towers:
        med = {b: statistics.median(timings[label][b]) * 1e3 for b in args.batch}
        search = {b: statistics.median(search_t[label][b]) * 1e3 for b in args.batch}
        ratio = {b: total(label, b) / total(base, b) for b in args.batch}
        summary.append(
            {
                "model": label,
                "onnx_ms_per_user": med,
                "search_ms_per_user": search,
                "total_ratio_to_" + base: ratio,
                "interests_searched": searched[label],
            }
        )
        rows.append(
            [
                label,
                *[f"{med[b]:.3f}" for b in args.batch],
                *[f"{search[b]:.3f}" for b in args.batch],
                *[f"{ratio[b]:.2f}x" for b in args.batch],
                searched[label],
            ]
        )
    headers = [
        "model",
        *[f"ONNX ms/user (batch {b})" for b in args.batch],
        *[f"search ms/user (batch {b})" for b in args.batch],
        *[f"tower + search vs {base} (batch {b})" for b in args.batch],
        "interests searched / user",
    ]
    source = args.histories.parent.name if args.histories else f"uniform 1..{args.seq_len}"
    text = (
        f"# User tower cost per backbone ({args.items} items, d {args.dim}, L {args.seq_len}, K {args.interests})\n\n"
        f"onnxruntime, 1 intra-op thread, median of {args.rounds} interleaved rounds over {args.users} users "
        f"(history lengths: {source}); random weights at the catalogue's shape (cost does not depend on them). "
        f"Searches: top 50 per active interest on the `{choose_kind(args.items)}` index `remi reindex` picks "
        "for this catalogue (default parameters, random item vectors). Interests searched per user: what the "
        "service sends to the index (one search each).\n\n" + md_table(headers, rows)
    )
    payload = {"args": flags(args), "machine": machine(), "results": summary}
    save_results(args.results, args.name, payload, text)


if __name__ == "__main__":
    main()
