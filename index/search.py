"""Searching K interest vectors per user in one FAISS call, with exact exclusion of seen items.

FAISS works in rows, callers in item indices: results are converted on the way out and
exclusions on the way in, both by :class:`remi.contract.ItemVocabulary`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import faiss
import numpy as np

from remi.contract import ItemVocabulary

# faiss's own type stubs lack the HNSW search parameters (faiss/__init__.pyi); typed here once.
SearchParametersHNSW: Callable[..., faiss.SearchParameters] = vars(faiss)["SearchParametersHNSW"]


def apply_search_params(index: faiss.Index, kind: str, params: dict[str, Any]) -> None:
    """Search-time knobs are not all stored in the file; set them after every build or load."""
    if kind == "hnsw":
        cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivfpq":
        if params["refine"]:
            refine = cast(faiss.IndexRefine, faiss.downcast_index(index))
            refine.k_factor = float(params["refine"])
            faiss.extract_index_ivf(refine.base_index).nprobe = int(params["nprobe"])
        else:
            faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])


def exact_index(item_vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over (I, d) item vectors, by FAISS row."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def search_interests(index: faiss.Index, interest_vectors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n FAISS rows for every interest of every user: (U, K, d) -> rows (U, K, n), scores (U, K, n).

    All U*K queries go in one call so FAISS parallelises over them. Missing results are -1.
    """
    u, n_interests, d = interest_vectors.shape
    queries = np.ascontiguousarray(interest_vectors.reshape(u * n_interests, d), dtype=np.float32)
    scores, rows = index.search(queries, max(1, min(n, index.ntotal)))
    if rows.shape[1] < n:
        rows = np.pad(rows, ((0, 0), (0, n - rows.shape[1])), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, n - scores.shape[1])), constant_values=-np.inf)
    rows, scores = rows[:, :n], scores[:, :n]
    return rows.reshape(u, n_interests, n), scores.reshape(u, n_interests, n)


def search_excluding(
    index: faiss.Index,
    interest_vectors: np.ndarray,
    n: int,
    exclude: Sequence[Sequence[int] | np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n item indices per interest, none of them in the user's exclusion set.

    Args:
        index: FAISS index over the item vectors, by FAISS row.
        interest_vectors: (U, K, d) float32 interest vectors.
        n: results per interest.
        exclude: per user, item indices (1-based, the model's vocabulary) that must not appear.
    Returns:
        item indices (U, K, n), -1 where fewer results exist, and their scores (U, K, n); each
        list best first, equal scores by item index.

    A user's lists never depend on the other users of the call: each user's K interests are one
    FAISS call of their own, at depth n, with only that user's exclusions. A shared call would
    not do: its depth (n + the widest exclusion set) changes the HNSW beam (ef = max(efSearch,
    depth)) and IVF-refine's candidate pool, and a flat index switches from per-pair SIMD to BLAS
    (other rounding) beyond 20 queries, so the same request could get another list beside others.
    With one FAISS thread the per-user calls cost only the Python call overhead (~10 us each).
    """
    u, n_interests = interest_vectors.shape[:2]
    sets = [np.unique(np.asarray(e, dtype=np.int64)) for e in exclude] if exclude is not None else []
    if exclude is not None and len(sets) != u:
        raise ValueError(f"{len(sets)} exclusion sets for {u} users")
    selector_params = _selector_params(index)
    ids = np.full((u, n_interests, n), -1, dtype=np.int64)
    scores = np.full((u, n_interests, n), -np.inf, dtype=np.float32)
    for i in range(u):
        banned = sets[i] if sets else np.zeros(0, dtype=np.int64)
        if len(banned) and selector_params is not None:
            found, found_scores = _search_with_selector(index, interest_vectors[i], n, banned, selector_params)
        else:
            found, found_scores = _search_over_fetching(index, interest_vectors[i], n, banned)
        ids[i], scores[i] = _ties_by_item(found, found_scores)
    return ids, scores


def _search_over_fetching(
    index: faiss.Index, interest_vectors: np.ndarray, n: int, banned: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(K, d) -> item indices (K, n): exact by over-fetching n + |banned| (a banned item only displaces results)."""
    rows, scores = search_interests(index, interest_vectors[None], n + len(banned))
    ids = ItemVocabulary.rows_to_indices(rows[0])
    scores = np.where(rows[0] >= 0, scores[0], -np.inf)
    if len(banned):
        drop = np.isin(ids, banned)
        ids = np.where(drop, -1, ids)
        scores = np.where(drop, -np.inf, scores)
        # Stable compaction: allowed results keep their order, the banned slots move to the end.
        order = np.argsort(ids < 0, axis=-1, kind="stable")
        ids = np.take_along_axis(ids, order, -1)
        scores = np.take_along_axis(scores, order, -1)
    return ids[:, :n], scores[:, :n].astype(np.float32)


def _ties_by_item(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orders each (K, n) list by score, equal scores by item index, empty slots last."""
    if not (scores[:, 1:] == scores[:, :-1]).any():  # FAISS lists come sorted: only ties need work
        return ids, scores
    key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key, -scores.astype(np.float64)), axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(scores, order, -1)


SelectorParams = Callable[..., faiss.SearchParameters]


def _selector_params(index: faiss.Index) -> SelectorParams | None:
    """The search-parameter class that takes an ID selector for this index, if it has one.

    Graph and flat indexes filter excluded ids during the search itself, so they need no
    over-fetch (which would widen the HNSW beam to n + |exclusions| and cost ~30% per request).
    """
    concrete = faiss.downcast_index(index)
    if isinstance(concrete, faiss.IndexHNSW):
        return SearchParametersHNSW
    if isinstance(concrete, faiss.IndexFlat):
        return faiss.SearchParameters
    return None


def _search_with_selector(
    index: faiss.Index, interest_vectors: np.ndarray, n: int, banned: np.ndarray, params_cls: SelectorParams
) -> tuple[np.ndarray, np.ndarray]:
    """(K, d) -> item indices (K, n): one user's interests in one FAISS call, its exclusions as a selector."""
    n_interests = interest_vectors.shape[0]
    top = max(1, min(n, index.ntotal))
    ids = np.full((n_interests, n), -1, dtype=np.int64)
    scores = np.full((n_interests, n), -np.inf, dtype=np.float32)
    queries = np.ascontiguousarray(interest_vectors, dtype=np.float32)
    banned_rows = ItemVocabulary.indices_to_rows(banned)
    rows = np.ascontiguousarray(banned_rows[banned_rows >= 0], dtype=np.int64)
    selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(rows))
    if params_cls is SearchParametersHNSW:  # per-call parameters replace the index's own: keep its beam
        hnsw = cast(faiss.IndexHNSW, faiss.downcast_index(index))
        params = params_cls(sel=selector, efSearch=hnsw.hnsw.efSearch)
    else:
        params = params_cls(sel=selector)
    found_scores, found = index.search(queries, top, params=params)
    ids[:, :top] = ItemVocabulary.rows_to_indices(found)
    scores[:, :top] = np.where(found >= 0, found_scores, -np.inf)
    return ids, scores
