"""Which of a user's K interest vectors need a search of their own.

Trained multi-interest towers often return near-copies (mean pairwise cosine 0.92-0.94 on
amazon_beauty and yelp; docs/remi.md A.11, docs/operations.md "Serving cost of a trained model"):
searching each of them costs K index searches for lists that are mostly the same. Here every
user's interests are grouped greedily, heaviest first: an interest whose cosine with an earlier
*leader* reaches ``cosine`` joins that leader's group and is not searched; only leaders are.
Interests whose routing weight is below ``min_weight`` are skipped outright (the heaviest
interest never is).

The caller searches the leaders only and then scores the found items against *all* K interests
(:func:`rescore`), so each item gets its true score max_k <v_k, e_i> and the interest that gives
it: the merged list differs from searching all K only by items that no leader's search found.
``benchmarks/serving_dedup.py`` measures that overlap against the threshold on a trained model.
"""

from __future__ import annotations

import numpy as np

OFF = 1.0  # a cosine threshold of 1.0 groups only exact copies: effectively no dedup


def leaders(vectors: np.ndarray, weights: np.ndarray, cosine: float, min_weight: float = 0.0) -> np.ndarray:
    """(U, K, d) interests and (U, K) weights -> (U, K) bool: which interests to search.

    Greedy, heaviest first (ties by interest number): an interest is a leader unless its cosine
    with an already chosen leader of the same user is >= ``cosine``; interests lighter than
    ``min_weight`` are never leaders, except each user's heaviest one. ``cosine`` > 1 keeps every
    interest (no grouping); ``min_weight`` 0 skips none.
    """
    u, k, _ = vectors.shape
    if k == 1:
        return np.ones((u, 1), dtype=bool)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    cos = np.einsum("ukd,ujd->ukj", unit, unit)  # (U, K, K)
    order = np.argsort(-weights, axis=1, kind="stable")  # heaviest first
    chosen = np.zeros((u, k), dtype=bool)
    rows = np.arange(u)
    for step in range(k):
        cand = order[:, step]  # (U,) the interest considered at this step, per user
        if step == 0:
            chosen[rows, cand] = True
            continue
        near = (cos[rows, cand] >= cosine) & chosen  # (U, K): leaders it is a near-copy of
        heavy = weights[rows, cand] >= min_weight
        chosen[rows, cand] = heavy & ~near.any(axis=1)
    return chosen


def rescore(
    candidates: np.ndarray, item_vectors: np.ndarray, interests: np.ndarray, active: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of found items against every interest of their user.

    Args:
        candidates: (U, M) FAISS rows, -1 for an empty slot.
        item_vectors: (I, d) float32 item table by FAISS row.
        interests: (U, K, d) the users' interest vectors.
        active: (U, K) bool, the interests each user has (all when None); the others score nothing.
    Returns:
        (U, M) float32 best score max_k <v_k, e_i> (-inf for empty slots) and the (U, M) interest
        that gives it (-1 for empty slots).
    """
    empty = candidates < 0
    vecs = item_vectors[np.where(empty, 0, candidates)]  # (U, M, d)
    all_scores = np.einsum("umd,ukd->umk", vecs, interests.astype(np.float32, copy=False))
    if active is not None:
        all_scores = np.where(active[:, None, :], all_scores, -np.inf)
    best = all_scores.argmax(-1)
    scores = np.take_along_axis(all_scores, best[..., None], -1)[..., 0].astype(np.float32)
    return np.where(empty, -np.inf, scores).astype(np.float32), np.where(empty, -1, best)
