"""Validation at catalogue scale: exact search vs the approximate index ``--eval-index`` uses
(docs/remi.md#a4-evaluation). One validation (interest vectors of the valid users, the index over
all items, search, merge, metrics) timed with each search on the same model, and what it gives up:
the approximate recall@50 metric beside the exact one, and the overlap of the merged top-50 lists
(the share of the exact top-50 the approximate search also returns).

The model: ComiRec-SA (d=64, K=4, L=20) whose item table holds planted topics (items are noisy
copies of one of ``--topics`` centres), users' histories and held-out items drawn from two of
their topics; the tower's weights are its random initialisation. A trained model is not needed to
time search, and this geometry gives non-trivial recall to give up; a trained table is typically
more clustered (easier for an IVF index), isotropic noise harder.

    python -m benchmarks.eval_index --items 1000000 --users 10000

Writes benchmarks/results/eval_index.json and eval_index.md.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.harness import command, machine, md_table, parser, save_results, timed
from remi.contract import ItemVocabulary
from retrieval.merge import merge_by_score
from retrieval.search import search_interests
from training.data import EvalSet
from training.evaluate import evaluate, item_index, user_interest_vectors
from training.models import build_model


def planted_model_and_users(n_items: int, n_users: int, topics: int, seed: int = 0) -> tuple[Any, EvalSet]:
    """A model whose item vectors cluster by topic, and valid users whose items share topics."""
    rng = np.random.default_rng(seed)
    dim, seq_len = 64, 20
    torch.manual_seed(seed)
    model = build_model("comirec-sa", n_items, dim, 4, seq_len)
    topic_of = rng.integers(0, topics, n_items)
    centres = rng.standard_normal((topics, dim), dtype=np.float32)
    vectors = centres[topic_of] + 0.6 * rng.standard_normal((n_items, dim), dtype=np.float32)
    with torch.no_grad():
        model.item_vectors().copy_(torch.from_numpy(vectors * 0.2))
    by_topic = np.argsort(topic_of, kind="stable")
    starts = np.searchsorted(topic_of[by_topic], np.arange(topics + 1))
    first = ItemVocabulary.first_index()

    def draw(user_topics: np.ndarray, count: int) -> np.ndarray:
        t = user_topics[rng.integers(0, len(user_topics), count)]
        offset = (rng.random(count) * (starts[t + 1] - starts[t])).astype(np.int64)
        picked: np.ndarray = by_topic[starts[t] + offset] + first
        return picked

    history = np.zeros((n_users, seq_len), dtype=np.int64)
    mask = np.zeros((n_users, seq_len), dtype=bool)
    truth = []
    for u in range(n_users):
        user_topics = rng.integers(0, topics, 2)
        n = int(rng.integers(4, seq_len + 1))
        history[u, :n], mask[u, :n] = draw(user_topics, n), True
        truth.append(draw(user_topics, 3))
    return model, EvalSet(np.arange(n_users), history, mask, truth)


def top50(model: Any, data: EvalSet, search: str) -> np.ndarray:
    """The merged top-50 item indices per user with one search kind."""
    interest_vectors, _ = user_interest_vectors(model, data.history, data.mask)
    items = model.item_vectors().detach().numpy()
    rows, scores = search_interests(item_index(items, search), interest_vectors, 50)
    merged, _, _ = merge_by_score(ItemVocabulary.rows_to_indices(rows), scores, 50)
    return np.asarray(merged)


def main() -> None:
    ap = parser(__doc__, "eval_index")
    ap.add_argument("--items", type=int, default=1_000_000, help="catalogue size")
    ap.add_argument("--users", type=int, default=10_000, help="valid users")
    ap.add_argument("--topics", type=int, default=5_000, help="planted item topics")
    ap.add_argument("--search", nargs="+", default=["exact", "ivfpq"], help="search kinds (exact, ivfpq, hnsw)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, data = planted_model_and_users(args.items, args.users, args.topics)
    print(f"model and users ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    results: dict[str, dict[str, float]] = {}
    lists: dict[str, np.ndarray] = {}
    for search in args.search:
        with timed() as took:
            metrics, _, _ = evaluate(model, data, ns=(50,), search=search)
        seconds = took.wall_s
        lists[search] = top50(model, data, search)
        results[search] = {"seconds": round(seconds, 2), **metrics}
        print(search, results[search], flush=True)
    exact = lists.get("exact")
    for search, found in lists.items():
        if exact is not None:
            overlap = [
                len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (a >= 0).sum()) for a, b in zip(exact, found, strict=True)
            ]
            results[search]["top50_overlap_with_exact"] = float(np.mean(overlap))
    meta = {
        "items": args.items,
        "users": args.users,
        "topics": args.topics,
        "threads": torch.get_num_threads(),
        **machine(),
        "command": command(),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    base = results.get("exact", {})
    rows = [
        [
            search,
            f"{r['seconds']:.1f}",
            f"{r['recall@50']:.4f}",
            f"{r['recall@50'] - base['recall@50']:+.4f}" if base else "",
            f"{r.get('top50_overlap_with_exact', float('nan')):.3f}",
            f"{base['seconds'] / r['seconds']:.1f}x" if base else "",
        ]
        for search, r in results.items()
    ]
    text = (
        f"# One validation at {args.items:,} items: exact vs approximate search\n\n"
        f"`{meta['command']}` ({meta['seconds']} s, {meta['threads']} threads). {args.users:,} valid users x 4 "
        f"interests; ComiRec-SA with a planted-topic item table ({args.topics:,} topics) and random tower "
        f"weights. seconds: one call of training.evaluate.evaluate (interest vectors, index build, search, "
        f"merge, metrics); ivfpq is index/build.py's IVF-PQ with nlist = sqrt(items), nprobe 32 and exact "
        f"re-ranking of 4 x 50 candidates (training/evaluate.py item_index). overlap: share of the exact "
        f"merged top-50 that the approximate search also returns.\n\n"
        + md_table(["search", "seconds", "recall@50", "vs exact", "top-50 overlap", "speed-up"], rows)
    )
    save_results(args.results, args.name, {"meta": meta, "results": results}, text)


if __name__ == "__main__":
    main()
