"""Searching K interest vectors per user in one FAISS call, with exact exclusion of seen items."""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np


def exact_index(item_vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over (I, d) item vectors; FAISS row r is item index r + 1."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def search_interests(index: faiss.Index, interests: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n rows for every interest of every user: (U, K, d) -> ids (U, K, n), scores (U, K, n).

    All U*K queries go in one call so FAISS parallelises over them. Missing results are -1.
    """
    u, k, d = interests.shape
    queries = np.ascontiguousarray(interests.reshape(u * k, d), dtype=np.float32)
    scores, ids = index.search(queries, max(1, min(n, index.ntotal)))
    if ids.shape[1] < n:
        ids = np.pad(ids, ((0, 0), (0, n - ids.shape[1])), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, n - scores.shape[1])), constant_values=-np.inf)
    ids, scores = ids[:, :n], scores[:, :n]
    return ids.reshape(u, k, n), scores.reshape(u, k, n)


def search_excluding(
    index: faiss.Index,
    interests: np.ndarray,
    n: int,
    exclude: Sequence[Sequence[int] | np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n item indices per interest, none of them in the user's exclusion set.

    Args:
        index: FAISS index whose row r is item index r + 1.
        interests: (U, K, d) float32 interest vectors.
        n: results per interest.
        exclude: per user, item indices (1-based, the model's vocabulary) that must not appear.
    Returns:
        item indices (U, K, n), -1 where fewer results exist, and their scores (U, K, n).

    Exact by over-fetching: an excluded item can only displace results, so asking for
    n + |exclusion set| and filtering always leaves the best n allowed items the index returns.
    One FAISS call for all users keeps the batch path cheap.
    """
    u, k, _ = interests.shape
    sets = [np.unique(np.asarray(e, dtype=np.int64)) for e in exclude] if exclude is not None else []
    if exclude is not None and len(sets) != u:
        raise ValueError(f"{len(sets)} exclusion sets for {u} users")
    width = max((len(s) for s in sets), default=0)
    selector_params = _selector_params(index)
    if width and selector_params is not None and u <= 8:
        return _search_with_selectors(index, interests, n, sets, selector_params)
    rows, scores = search_interests(index, interests, n + width)
    ids = np.where(rows >= 0, rows + 1, -1)
    scores = np.where(rows >= 0, scores, -np.inf)
    if width:
        table = np.full((u, width), -2, dtype=np.int64)  # -2 never matches an id or the -1 filler
        for i, s in enumerate(sets):
            table[i, : len(s)] = s
        banned = (ids[:, :, :, None] == table[:, None, None, :]).any(-1)
        ids = np.where(banned, -1, ids)
        scores = np.where(banned, -np.inf, scores)
        # Stable compaction: allowed results keep their order, the banned slots move to the end.
        order = np.argsort(ids < 0, axis=-1, kind="stable")[:, :, :n]
        ids = np.take_along_axis(ids, order, -1)
        scores = np.take_along_axis(scores, order, -1)
    return ids[:, :, :n], scores[:, :, :n].astype(np.float32)


def _selector_params(index: faiss.Index) -> type | None:
    """The search-parameter class that takes an ID selector for this index, if it has one.

    Graph and flat indexes filter excluded ids during the search itself, so they need no
    over-fetch (which would widen the HNSW beam to n + |exclusions| and cost ~30% per request).
    """
    concrete = faiss.downcast_index(index)
    if isinstance(concrete, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW
    if isinstance(concrete, faiss.IndexFlat):
        return faiss.SearchParameters
    return None


def _search_with_selectors(
    index: faiss.Index, interests: np.ndarray, n: int, sets: list[np.ndarray], params_cls: type
) -> tuple[np.ndarray, np.ndarray]:
    """One FAISS call per user (its K interests together) with its exclusions as a selector."""
    u, k, d = interests.shape
    top = max(1, min(n, index.ntotal))
    ids = np.full((u, k, n), -1, dtype=np.int64)
    scores = np.full((u, k, n), -np.inf, dtype=np.float32)
    concrete = faiss.downcast_index(index)
    for i, banned in enumerate(sets):
        queries = np.ascontiguousarray(interests[i], dtype=np.float32)
        if len(banned):
            rows = np.ascontiguousarray(banned[banned > 0] - 1, dtype=np.int64)
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(rows))
            if params_cls is faiss.SearchParametersHNSW:
                params = params_cls(sel=selector, efSearch=concrete.hnsw.efSearch)
            else:
                params = params_cls(sel=selector)
            found_scores, found = index.search(queries, top, params=params)
        else:
            found_scores, found = index.search(queries, top)
        ids[i, :, :top] = np.where(found >= 0, found + 1, -1)
        scores[i, :, :top] = np.where(found >= 0, found_scores, -np.inf)
    return ids, scores
