"""Ranking metrics of offline evaluation (docs/remi.md A.4): Recall, NDCG, HitRate at N. Pure numpy."""

from __future__ import annotations

import numpy as np


def ranking_metrics(
    recommended: np.ndarray, truth: list[np.ndarray], ns: tuple[int, ...] = (20, 50)
) -> dict[str, float]:
    """Recall, NDCG and HitRate at each N, averaged over users (users with 0 hits included).

    Recall@N = |R ∩ T| / |T| with |T| counting duplicate ground-truth events (the ComiRec
    definition, so numbers compare with the reference scripts); hits count distinct
    recommended items. HitRate@N = 1[any hit]. NDCG@N is computed on the ranked list,
    DCG = sum over ranks r with R[r] in T of 1/log2(r + 2), and IDCG over min(|distinct T|, N)
    ranks: a ranked list holds each item once, so a perfect list scores exactly 1.

    Args:
        recommended: (U, >= max(ns)) item ids in rank order; -1 marks an empty slot.
        truth: U arrays of ground-truth item ids.
    """
    n_max = max(ns)
    if recommended.shape[1] < n_max:
        raise ValueError(f"need at least {n_max} recommendations per user, got {recommended.shape[1]}")
    discounts = 1.0 / np.log2(np.arange(n_max) + 2.0)
    ideal = np.concatenate(([0.0], np.cumsum(discounts)))
    sums = {f"{m}@{n}": 0.0 for n in ns for m in ("recall", "ndcg", "hr")}
    for rec, t in zip(recommended[:, :n_max], truth, strict=True):
        hit = np.isin(rec, t) & (rec >= 0)
        n_truth, n_distinct = len(t), len(np.unique(t))
        for n in ns:
            h = hit[:n]
            n_hits = int(h.sum())
            sums[f"recall@{n}"] += n_hits / n_truth
            sums[f"hr@{n}"] += float(n_hits > 0)
            if n_hits:
                sums[f"ndcg@{n}"] += float(discounts[:n][h].sum() / ideal[min(n_distinct, n)])
    users = max(len(truth), 1)
    return {name: total / users for name, total in sums.items()}


def catalogue_coverage(recommended: np.ndarray, n_items: int, n: int = 50) -> float:
    """Share of the catalogue that appears in at least one user's top n (docs/remi.md A.4).

    A model that sends every user to the same popular items covers little of the catalogue, what
    ever its recall; K interests per user are meant to reach further.

    Args:
        recommended: (U, >= n) item ids in rank order; -1 marks an empty slot.
        n_items: catalogue size (the denominator).
    """
    top = recommended[:, :n]
    return float(len(np.unique(top[top >= 0])) / max(n_items, 1))


def intra_list_diversity(recommended: np.ndarray, item_vectors: np.ndarray, n: int = 50, chunk: int = 1024) -> float:
    """Mean pairwise cosine distance 1 - cos(e_i, e_j) of the items of a user's top n, then over users.

    Measured with the model's own item embeddings. Users with fewer than 2 items in their list do
    not count; NaN when no user has 2.

    Args:
        recommended: (U, >= n) rows of ``item_vectors`` in rank order; -1 marks an empty slot.
        item_vectors: (I, d) item embeddings.
    """
    norms = np.linalg.norm(item_vectors, axis=-1, keepdims=True)
    unit = (item_vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    total, users = 0.0, 0
    for start in range(0, len(recommended), chunk):
        rows = recommended[start : start + chunk, :n]
        valid = rows >= 0  # (C, n)
        vecs = unit[np.where(valid, rows, 0)] * valid[..., None]  # (C, n, d), zero on empty slots
        count = valid.sum(-1).astype(np.float64)  # (C,)
        summed = vecs.sum(1).astype(np.float64)  # (C, d): sum over pairs i != j of cos = |sum|^2 - n
        self_sim = (vecs.astype(np.float64) ** 2).sum((1, 2))  # n, or less where a vector is zero
        pairs = count * (count - 1)
        keep = count >= 2
        mean_cos = ((summed**2).sum(-1) - self_sim)[keep] / pairs[keep]
        total += float((1.0 - mean_cos).sum())
        users += int(keep.sum())
    return total / users if users else float("nan")
