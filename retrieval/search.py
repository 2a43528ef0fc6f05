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


class SharedExclusion:
    """Items no query of a call may get, whoever asks (the live blocklist): one row mask and one
    FAISS selector for every user, built once per list version, instead of a copy of the list in
    every user's exclusion set (which made a 1,000-id list cost +34-69% CPU per request: each
    user's set was re-sorted and merged, and blocked items high in a beam forced solo re-searches).

    On a graph or flat index the selector filters the blocked rows inside the walk, so they never
    take a place in the beam; per-user exclusions (seen items) are applied on top of it.
    """

    def __init__(self, indices: np.ndarray, n_rows: int) -> None:
        rows = ItemVocabulary.indices_to_rows(np.asarray(indices, dtype=np.int64))
        rows = rows[(rows >= 0) & (rows < n_rows)]
        self.n_rows = n_rows
        self.mask = np.zeros(n_rows, dtype=bool)  # True: blocked, by FAISS row
        self.mask[rows] = True
        self.mask.setflags(write=False)
        self.indices = ItemVocabulary.rows_to_indices(np.flatnonzero(self.mask))  # sorted item indices
        self.indices.setflags(write=False)
        # The selector reads this bitmap of allowed rows for as long as the object lives.
        self._allowed_bits = np.packbits(~self.mask, bitorder="little")

    def __len__(self) -> int:
        return len(self.indices)

    def selector(self) -> faiss.IDSelector:
        """A selector passing every row but the blocked ones (valid while this object lives)."""
        return faiss.IDSelectorBitmap(self.n_rows, faiss.swig_ptr(self._allowed_bits))


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
    shared: SharedExclusion | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n item indices per interest, none of them in the user's exclusion set.

    Args:
        index: FAISS index over the item vectors, by FAISS row.
        interest_vectors: (U, K, d) float32 interest vectors.
        n: results per interest.
        exclude: per user, item indices (1-based, the model's vocabulary) that must not appear.
        shared: items no user may get (the blocklist), applied with every user's own set.
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
    params_cls = selector_params(index)
    ids = np.full((u, n_interests, n), -1, dtype=np.int64)
    scores = np.full((u, n_interests, n), -np.inf, dtype=np.float32)
    blocked = shared if shared is not None and len(shared) else None
    for i in range(u):
        banned = sets[i] if sets else np.zeros(0, dtype=np.int64)
        if (len(banned) or blocked is not None) and params_cls is not None:
            found, found_scores = _search_with_selector(
                index, interest_vectors[i], n, banned, params_cls, shared=blocked
            )
        else:  # no selector on this index kind: the shared items join the user's set
            if blocked is not None:
                banned = np.union1d(banned, blocked.indices)
            found, found_scores = _search_over_fetching(index, interest_vectors[i], n, banned)
        ids[i], scores[i] = ties_by_item(found, found_scores)
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


def ties_by_item(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orders each (K, n) list by score, equal scores by item index, empty slots last."""
    if not (scores[:, 1:] == scores[:, :-1]).any():  # FAISS lists come sorted: only ties need work
        return ids, scores
    key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((key, -scores.astype(np.float64)), axis=-1)
    return np.take_along_axis(ids, order, -1), np.take_along_axis(scores, order, -1)


SelectorParams = Callable[..., faiss.SearchParameters]


def selector_params(index: faiss.Index) -> SelectorParams | None:
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
    index: faiss.Index,
    interest_vectors: np.ndarray,
    n: int,
    banned: np.ndarray,
    params_cls: SelectorParams,
    beam: int | None = None,
    shared: SharedExclusion | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(K, d) -> item indices (K, n): one user's interests in one FAISS call, its exclusions (and
    the ``shared`` ones) as a selector."""
    n_interests = interest_vectors.shape[0]
    top = max(1, min(n, index.ntotal))
    ids = np.full((n_interests, n), -1, dtype=np.int64)
    scores = np.full((n_interests, n), -np.inf, dtype=np.float32)
    queries = np.ascontiguousarray(interest_vectors, dtype=np.float32)
    banned_rows = ItemVocabulary.indices_to_rows(banned)
    rows = np.ascontiguousarray(banned_rows[banned_rows >= 0], dtype=np.int64)
    # FAISS selectors hold raw pointers to their parts: every part stays referenced here until
    # the search returns.
    own = faiss.IDSelectorBatch(rows) if len(rows) else None
    not_own = faiss.IDSelectorNot(own) if own is not None else None
    blocked = shared.selector() if shared is not None else None
    selector: faiss.IDSelector | None
    if not_own is not None and blocked is not None:
        selector = faiss.IDSelectorAnd(not_own, blocked)
    else:
        selector = not_own if not_own is not None else blocked
    if params_cls is SearchParametersHNSW:  # per-call parameters replace the index's own: keep its beam
        hnsw = cast(faiss.IndexHNSW, faiss.downcast_index(index))
        params = params_cls(sel=selector, efSearch=beam or hnsw.hnsw.efSearch)
    else:
        params = params_cls(sel=selector)
    found_scores, found = index.search(queries, top, params=params)
    ids[:, :top] = ItemVocabulary.rows_to_indices(found)
    scores[:, :top] = np.where(found >= 0, found_scores, -np.inf)
    return ids, scores


SLACK = 16  # search_batch's beam holds n + SLACK results, room for seen items near the interest


def needs_rerank(index: faiss.Index) -> bool:
    """True for a graph index over compressed vectors (fp16 / SQ8): its scores are approximate."""
    return isinstance(faiss.downcast_index(index), faiss.IndexHNSWSQ)


def rerank(
    rows: np.ndarray, scores: np.ndarray, item_vectors: np.ndarray, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, m) FAISS rows re-scored exactly against their (Q, d) query and re-sorted, best first.

    Compressed storage orders the beam by approximate scores; the float item table puts the
    right items first (a found item's exact score, not a better search). Empty rows (-1) stay last.
    """
    empty = rows < 0
    exact = np.einsum("qmd,qd->qm", item_vectors[np.where(empty, 0, rows)], queries)
    exact = np.where(empty, -np.inf, exact).astype(np.float32)
    order = np.argsort(-exact, axis=1, kind="stable")
    del scores  # replaced by the exact ones
    return np.take_along_axis(rows, order, 1), np.take_along_axis(exact, order, 1)


def graph_ef(index: faiss.Index) -> int | None:
    """The HNSW beam width of a graph index (any storage: flat, SQ, fp16), None for other kinds."""
    concrete = faiss.downcast_index(index)
    if isinstance(concrete, faiss.IndexHNSW):
        return int(concrete.hnsw.efSearch)
    return None


def search_batch(
    index: faiss.Index,
    queries: np.ndarray,
    owner: np.ndarray,
    n: int,
    exclude: Sequence[Sequence[int] | np.ndarray],
    item_vectors: np.ndarray | None = None,
    shared: SharedExclusion | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n item indices of every query row, none in its owner's exclusion set: one FAISS call for all.

    Args:
        index: FAISS index over the item vectors, by FAISS row.
        queries: (Q, d) float32 query vectors of all users of a micro-batch (e.g. their leader interests).
        owner: (Q,) which user (position in ``exclude``) each query belongs to.
        n: results per query.
        exclude: per user, item indices that must not appear.
        item_vectors: the float item table by FAISS row; given, the beam is re-ranked with the
            exact scores before the top n are taken (for fp16 / SQ8 storage, :func:`rerank`).
        shared: items no row may get (the blocklist): the selector of the one FAISS call, so
            they are dropped inside the walk and never crowd a user's beam.
    Returns:
        item indices (Q, n), -1 where fewer exist, and their scores; ties by item index, as
        :func:`search_excluding`.

    Each row's answer depends on its own query, n and exclusions only, never on the other users of
    the batch. On an HNSW index every row is walked with the beam ``max(efSearch, n + SLACK)``,
    and FAISS's traversal at a fixed beam depends neither on the selector (it filters results,
    not the walk) nor on the depth asked up to the beam: one call at depth = beam without a
    selector returns the top-beam of the same walk, and dropping a user's excluded items from it
    leaves exactly what the selector search with that beam returns whenever at least n remain
    (SLACK leaves room for a few seen items near the interest: without it nearly every row of a
    trained model would need the second search). The rare row that loses more is searched again
    alone, with its selector and the same beam. The shared exclusion is the same for every row, so
    it is the shared call's own selector, and the argument holds for the rest (a user's seen items).
    Other index kinds are searched user by user (:func:`search_excluding`).
    """
    if len(queries) == 0:
        return _no_results(0, n)
    ef = graph_ef(index)
    if ef is None:  # no selector-free equivalent: per user, as before
        return _search_per_user(index, queries, owner, n, exclude, shared)
    beam = max(ef, n + SLACK)
    blocked = shared if shared is not None and len(shared) else None
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    found_ids, found_scores = _walk_beam(index, queries, beam, blocked, item_vectors)
    sets = [np.unique(np.asarray(e, dtype=np.int64)) for e in exclude]
    drop = (found_ids < 0) | _owned_by(found_ids, owner, sets)
    ids, scores, kept = _first_allowed(found_ids, found_scores, drop, n)
    depth = found_ids.shape[1]
    for row in np.flatnonzero((kept < n) & (depth < index.ntotal)):
        # too many excluded items among the top of the beam: the selector search, alone
        ids[row], scores[row] = _search_row_alone(
            index, queries[row], n, sets[int(owner[row])], beam, blocked, item_vectors
        )
    _order_ties(ids, scores)
    return ids, scores


def _no_results(q: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(q, n) item indices (-1: none) and scores (-inf), to be filled."""
    return np.full((q, n), -1, dtype=np.int64), np.full((q, n), -np.inf, dtype=np.float32)


def _search_per_user(
    index: faiss.Index,
    queries: np.ndarray,
    owner: np.ndarray,
    n: int,
    exclude: Sequence[Sequence[int] | np.ndarray],
    shared: SharedExclusion | None,
) -> tuple[np.ndarray, np.ndarray]:
    """search_batch's answer on an index without a graph: each user's rows in a call of their own."""
    ids, scores = _no_results(len(queries), n)
    for user in np.unique(owner):
        rows = np.flatnonzero(owner == user)
        found, found_scores = search_excluding(index, queries[rows][None], n, [exclude[user]], shared)
        ids[rows], scores[rows] = found[0], found_scores[0]
    return ids, scores


def _walk_beam(
    index: faiss.Index,
    queries: np.ndarray,
    beam: int,
    blocked: SharedExclusion | None,
    item_vectors: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every (Q, d) query row walked in one FAISS call with the given beam, at depth = beam (at most
    the catalogue), the shared exclusion as its selector: item indices (-1: none) and scores, best
    first (re-ranked with the exact ``item_vectors`` when given)."""
    depth = max(1, min(beam, index.ntotal))
    selector = blocked.selector() if blocked is not None else None  # referenced until the search returns
    params = (
        SearchParametersHNSW(efSearch=beam, sel=selector)
        if selector is not None
        else SearchParametersHNSW(efSearch=beam)
    )
    found_scores, found = index.search(queries, depth, params=params)
    del selector
    if item_vectors is not None:
        found, found_scores = rerank(found, found_scores, item_vectors, queries)
    return ItemVocabulary.rows_to_indices(found), np.where(found >= 0, found_scores, -np.inf).astype(np.float32)


def _owned_by(found_ids: np.ndarray, owner: np.ndarray, sets: Sequence[np.ndarray]) -> np.ndarray:
    """(Q, m) bool: the found items in their row owner's exclusion set (``sets``: sorted, unique).

    One sorted array of (user, item) keys, looked up for all results at once."""
    stride = np.int64(max([int(s.max()) for s in sets if len(s)] + [int(found_ids.max()), 0]) + 2)
    banned_keys = np.concatenate([u * stride + s for u, s in enumerate(sets)] + [np.zeros(0, dtype=np.int64)])
    banned_keys.sort()
    keys = owner.astype(np.int64)[:, None] * stride + found_ids
    return _isin_sorted(keys, banned_keys)


def _first_allowed(
    found_ids: np.ndarray, found_scores: np.ndarray, drop: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's first n results not dropped, in order (-1 padded), and how many it kept in all."""
    ids, scores = _no_results(len(found_ids), n)
    kept = (~drop).sum(axis=1)
    order = np.argsort(drop, axis=1, kind="stable")[:, :n]  # allowed results first, in order
    take_ids = np.take_along_axis(found_ids, order, 1)
    take_scores = np.take_along_axis(found_scores, order, 1)
    empty = np.take_along_axis(drop, order, 1)
    width = take_ids.shape[1]
    ids[:, :width] = np.where(empty, -1, take_ids)
    scores[:, :width] = np.where(empty, -np.inf, take_scores)
    return ids, scores, kept


def _search_row_alone(
    index: faiss.Index,
    query: np.ndarray,
    n: int,
    banned: np.ndarray,
    beam: int,
    blocked: SharedExclusion | None,
    item_vectors: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One (d,) query row's top n: the selector search with the shared call's beam, its own
    ``banned`` items and the shared ones excluded (re-ranked with the exact ``item_vectors`` when given)."""
    one, one_scores = _search_with_selector(index, query[None], n, banned, SearchParametersHNSW, beam, shared=blocked)
    if item_vectors is None:
        return one[0], one_scores[0]
    rows, exact = rerank(ItemVocabulary.results_to_rows(one), one_scores, item_vectors, query[None])
    return ItemVocabulary.rows_to_indices(rows[0]), exact[0]


def _order_ties(ids: np.ndarray, scores: np.ndarray) -> None:
    """In place, as search_excluding: equal scores by item index, in the rows that hold a tie."""
    ties = (scores[:, 1:] == scores[:, :-1]) & np.isfinite(scores[:, 1:])
    for row in np.flatnonzero(ties.any(axis=1)):
        tied_ids, tied_scores = ties_by_item(ids[row][None], scores[row][None])
        ids[row], scores[row] = tied_ids[0], tied_scores[0]


def _isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """np.isin for a sorted key array, by binary search (no per-call hashing or sort of ``values``)."""
    if not len(sorted_keys):
        return np.zeros(values.shape, dtype=bool)
    pos = np.searchsorted(sorted_keys, values)
    found: np.ndarray = sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == values
    return found
