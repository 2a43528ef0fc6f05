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
