"""Merging the per-interest top-N lists into one list per user.

Pure numpy so the evaluation protocol and the service share one implementation.
"""

from __future__ import annotations

import numpy as np


def merge_by_score(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global merge by score with de-duplication (the ComiRec/REMI protocol).

    Pools the K per-interest lists, keeps each item once at its best score, and returns the
    top-n, which equals the exact top-n by max_k <v_k, e_i> when each list is exact.

    Args:
        ids: (U, K, N) item ids, -1 for "no result".
        scores: (U, K, N) matching scores.
        n: how many to return.
    Returns:
        ids (U, n) (-1 where fewer than n distinct items exist), scores (U, n), and the interest
        (U, n) that produced each item (-1 for empty slots).
    """
    u, k, m = ids.shape
    flat_ids = ids.reshape(u, k * m)
    flat_scores = np.where(flat_ids < 0, -np.inf, scores.reshape(u, k * m)).astype(np.float64)
    interest = np.broadcast_to(np.repeat(np.arange(k), m), (u, k * m))
    # Sort by id, best score first inside an id; drop every repeat of an id.
    order = np.lexsort((-flat_scores, flat_ids), axis=-1)
    sorted_ids = np.take_along_axis(flat_ids, order, -1)
    dup = np.zeros_like(sorted_ids, dtype=bool)
    dup[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    sorted_scores = np.take_along_axis(flat_scores, order, -1)
    sorted_scores[dup] = -np.inf
    top = np.argsort(-sorted_scores, axis=-1, kind="stable")[:, :n]
    out_scores = np.take_along_axis(sorted_scores, top, -1)
    pick = np.take_along_axis(order, top, -1)
    out_ids = np.take_along_axis(flat_ids, pick, -1)
    out_interest = np.take_along_axis(interest, pick, -1)
    empty = ~np.isfinite(out_scores)
    out_ids = np.where(empty, -1, out_ids)
    out_interest = np.where(empty, -1, out_interest)
    if out_ids.shape[1] < n:  # fewer candidates than n in total
        pad = n - out_ids.shape[1]
        out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_interest = np.pad(out_interest, ((0, 0), (0, pad)), constant_values=-1)
    return out_ids, out_scores.astype(np.float32), out_interest
