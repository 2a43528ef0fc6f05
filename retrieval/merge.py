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
    u, n_interests, m = ids.shape
    interest = np.broadcast_to(np.repeat(np.arange(n_interests), m), (u, n_interests * m))
    return merge_flat(ids.reshape(u, n_interests * m), scores.reshape(u, n_interests * m), interest, n)


def merge_flat(
    ids: np.ndarray, scores: np.ndarray, interest: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The score merge over pooled candidates: (U, M) ids, scores and the interest of each -> top-n per user.

    Each item is kept once at its best score, equal scores ordered by item index; ``-1`` ids are
    empty slots. :func:`merge_by_score` is this over the K lists laid end to end; the engine calls
    it directly on leader-only searches whose items were re-scored against every interest
    (retrieval/dedup.py). Whole-batch numpy: two sorts per row, no per-item Python.
    """
    flat_ids = ids
    flat_scores = np.where(flat_ids < 0, -np.inf, scores).astype(np.float64)
    interest = np.broadcast_to(interest, flat_ids.shape)
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


def interest_weights(routing: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """How much of the history each interest stands for: (U, K, L), (U, L) -> (U, K) summing to 1.

    A history item belongs to the interest that routes the most weight to it; an interest's
    weight is its share of items, plus one pseudo-item each so no interest is starved to zero.
    """
    u, n_interests, _ = routing.shape
    owner = routing.argmax(1)  # (U, L)
    counts = np.ones((u, n_interests))
    for i in range(n_interests):
        counts[:, i] += ((owner == i) & mask).sum(1)
    weights: np.ndarray = counts / counts.sum(1, keepdims=True)
    return weights


def _largest_remainder(weights: np.ndarray, n: int) -> np.ndarray:
    raw = weights * n
    quota: np.ndarray = np.floor(raw).astype(int)
    short = n - quota.sum()
    if short > 0:
        quota[np.argsort(-(raw - quota), kind="stable")[:short]] += 1
    return quota


def merge_quota(
    ids: np.ndarray, scores: np.ndarray, weights: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user: interest j contributes about ``weights[j] * n`` of its own best items.

    Keeps minority interests visible (a user who is 20% into cameras sees ~20% cameras) where
    a global score merge lets the strongest interest take the whole list. Slots an interest
    cannot fill (too few distinct results) go to the best remaining candidates by score.

    Args: ids, scores (K, N) per-interest results best first (-1 = empty); weights (K,).
    Returns ids (n,), scores (n,), interest (n,), ordered by score; -1 / -inf / -1 pads.
    """
    n_interests, m = ids.shape
    quota = _largest_remainder(np.asarray(weights, dtype=float), n)
    taken: dict[int, tuple[float, int]] = {}
    cursor = np.zeros(n_interests, dtype=int)
    for i in np.argsort(-quota, kind="stable"):
        while quota[i] > 0 and cursor[i] < m:
            item, score = int(ids[i, cursor[i]]), float(scores[i, cursor[i]])
            cursor[i] += 1
            if item >= 0 and item not in taken:
                taken[item] = (score, int(i))
                quota[i] -= 1
    if len(taken) < n:  # unfilled quota: best leftovers by score
        rest = [(float(scores[i, j]), int(ids[i, j]), i) for i in range(n_interests) for j in range(cursor[i], m)]
        for score, item, i in sorted(rest, key=lambda t: -t[0]):
            if len(taken) >= n:
                break
            if item >= 0 and item not in taken:
                taken[item] = (score, int(i))
    return _finish(taken, n)


def merge_round_robin(ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One user: interests take turns (strongest top score first), each adding its next unseen item.

    The list order is the interleaving itself, so every interest shows up near the top.
    Same arguments and return shapes as :func:`merge_quota` (order is the turn order).
    """
    n_interests, m = ids.shape
    order = np.argsort(-scores[:, 0], kind="stable") if m else np.arange(n_interests)
    taken: dict[int, tuple[float, int]] = {}
    cursor = np.zeros(n_interests, dtype=int)
    while len(taken) < n and (cursor < m).any():
        for i in order:
            while cursor[i] < m:
                item, score = int(ids[i, cursor[i]]), float(scores[i, cursor[i]])
                cursor[i] += 1
                if item >= 0 and item not in taken:
                    taken[item] = (score, int(i))
                    break
            if len(taken) >= n:
                break
    return _finish(taken, n, keep_order=True)


def _finish(
    taken: dict[int, tuple[float, int]], n: int, keep_order: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = list(taken.items())
    if not keep_order:  # equal scores by item index, so the order never hangs on the visiting order
        items.sort(key=lambda kv: (-kv[1][0], kv[0]))
    out_ids = np.full(n, -1, dtype=np.int64)
    out_scores = np.full(n, -np.inf, dtype=np.float32)
    out_interest = np.full(n, -1, dtype=np.int64)
    for j, (item, (score, interest)) in enumerate(items[:n]):
        out_ids[j], out_scores[j], out_interest[j] = item, score, interest
    return out_ids, out_scores, out_interest


MERGES = ("score", "quota", "round_robin")


def merge(
    strategy: str, ids: np.ndarray, scores: np.ndarray, n: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched entry point: (U, K, N) per-interest results -> (U, n) ids, scores, interest."""
    if strategy == "score":
        return merge_by_score(ids, scores, n)
    if strategy not in MERGES:
        raise ValueError(f"unknown merge {strategy!r}; choose one of {', '.join(MERGES)}")
    rows = []
    for u in range(ids.shape[0]):
        if strategy == "quota":
            w = weights[u] if weights is not None else np.full(ids.shape[1], 1.0 / ids.shape[1])
            rows.append(merge_quota(ids[u], scores[u], w, n))
        else:
            rows.append(merge_round_robin(ids[u], scores[u], n))
    ids_out, scores_out, interest_out = (np.stack(parts) for parts in zip(*rows, strict=True))
    return ids_out, scores_out, interest_out
