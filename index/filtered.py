"""Filtered search: the top-n allowed items per query, planned by how many items the filter allows.

A request filter (and the request's excluded items) leaves an allowed set of FAISS rows, given
as a bool mask. Two ways to search it, as the filterable vector databases do:

* ``graph``: the index itself with an ID selector (a bitmap of the allowed rows) that FAISS
  applies during the search (HNSW and flat indexes; the exclusion machinery of index/search.py),
  its beam widened by 1 / selectivity (:func:`graph_beam`). Fast while many items pass; a graph
  walk loses recall, and can come back short, when few do: most of the nodes it visits are then
  filtered out.
* ``exact``: score the allowed rows exactly (one matrix product over those rows of the float
  item table) and take the top n. Its cost grows with the allowed count, and it is exact.

:func:`plan` picks ``exact`` when the allowed count is at most :data:`EXACT_MAX_ROWS` or the
allowed share at most :data:`EXACT_MAX_SHARE` (measured in benchmarks/filtered_search.py,
docs/results.md "Filtered search"), else ``graph``. A graph answer with fewer than
``min(n, allowed)`` results in any list is redone exactly, so a caller always gets every allowed
item it asked for (``graph+exact`` in the returned path). Index kinds without selector support
(IVF-PQ) always take the exact path.
"""

from __future__ import annotations

import math
from typing import Literal, cast

import faiss
import numpy as np

from index.search import SearchParametersHNSW, needs_rerank, rerank, selector_params, ties_by_item
from remi.contract import ItemVocabulary

Path = Literal["graph", "exact", "graph+exact"]

# The planner's thresholds (benchmarks/filtered_search.py, docs/results.md "Filtered search"):
# below either, the exact product over the allowed rows is both exact and no slower than the walk.
EXACT_MAX_ROWS = 20_000
EXACT_MAX_SHARE = 0.02
GATHER_MAX_SHARE = 0.25  # the exact path gathers the allowed rows below this share, else scores all rows and masks
# The graph path widens the HNSW beam by 1 / selectivity (a walk keeps ~efSearch allowed nodes in
# its beam, as without a filter) up to this width: at 10% allowed, 0.45 -> 0.91 recall@50 for
# 0.1 -> 0.66 ms per query on a clustered 20k-item table (M = 16), far below the exact product.
GRAPH_EF_MAX = 1024


def plan(
    n_allowed: int,
    n_total: int,
    index: faiss.Index | None = None,
    exact_max_rows: int = EXACT_MAX_ROWS,
    exact_max_share: float = EXACT_MAX_SHARE,
) -> Literal["graph", "exact"]:
    """``exact`` for small allowed sets (or an index without selector support), else ``graph``."""
    if index is not None and selector_params(index) is None:
        return "exact"
    if n_allowed <= exact_max_rows or n_allowed <= exact_max_share * n_total:
        return "exact"
    return "graph"


def search_exact(
    item_vectors: np.ndarray, queries: np.ndarray, n: int, allowed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, d) queries -> top-n item indices (Q, n) among the allowed rows, by exact inner product.

    -1 / -inf pad the lists when fewer than n rows are allowed; equal scores by item index.
    """
    q = len(queries)
    ids = np.full((q, n), -1, dtype=np.int64)
    scores = np.full((q, n), -np.inf, dtype=np.float32)
    rows = np.flatnonzero(allowed)
    if not len(rows) or not q:
        return ids, scores
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(rows) <= GATHER_MAX_SHARE * len(allowed):
        candidate_scores = queries @ np.asarray(item_vectors[rows], dtype=np.float32).T  # (Q, A)
    else:  # most rows pass: one product over the whole table is cheaper than the gather
        full = queries @ np.asarray(item_vectors, dtype=np.float32).T
        candidate_scores = full[:, rows]
    top = min(n, len(rows))
    if top < len(rows):
        part = np.argpartition(-candidate_scores, top - 1, axis=1)[:, :top]
    else:
        part = np.broadcast_to(np.arange(len(rows)), (q, len(rows)))
    part_scores = np.take_along_axis(candidate_scores, part, 1)
    part_ids = ItemVocabulary.rows_to_indices(rows[part])
    order = np.lexsort((part_ids, -part_scores.astype(np.float64)), axis=-1)
    ids[:, :top] = np.take_along_axis(part_ids, order, 1)
    scores[:, :top] = np.take_along_axis(part_scores, order, 1)
    return ids, scores


def graph_beam(index_ef: int, n: int, share: float, widen: bool = True) -> int:
    """The HNSW beam of a filtered walk: ``max(efSearch, n)``, widened by 1 / share up to GRAPH_EF_MAX."""
    beam = max(index_ef, n)
    if widen and share > 0:
        beam = max(beam, min(GRAPH_EF_MAX, math.ceil(beam / share)))
    return beam


def search_graph(
    index: faiss.Index,
    queries: np.ndarray,
    n: int,
    allowed: np.ndarray,
    item_vectors: np.ndarray | None = None,
    widen: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, d) -> top-n item indices among the allowed rows, the index searched with a bitmap selector.

    On HNSW the beam is :func:`graph_beam` (``widen=False``: the served ``max(efSearch, n)``);
    ``item_vectors`` (for fp16 / SQ8 storage) re-rank the found rows with exact scores, as
    index/search.py does.
    """
    params_cls = selector_params(index)
    if params_cls is None:
        raise ValueError("this index kind takes no ID selector: use the exact path")
    q = len(queries)
    top = max(1, min(n, index.ntotal))
    bitmap = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
    if params_cls is SearchParametersHNSW:
        hnsw = cast(faiss.IndexHNSW, faiss.downcast_index(index))
        share = float(np.count_nonzero(allowed)) / max(1, len(allowed))
        params = params_cls(sel=selector, efSearch=graph_beam(int(hnsw.hnsw.efSearch), n, share, widen))
    else:
        params = params_cls(sel=selector)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    found_scores, found = index.search(queries, top, params=params)
    del bitmap  # the selector read it during the search; kept alive until here
    if item_vectors is not None:
        found, found_scores = rerank(found, found_scores, item_vectors, queries)
    ids = np.full((q, n), -1, dtype=np.int64)
    scores = np.full((q, n), -np.inf, dtype=np.float32)
    ids[:, :top] = ItemVocabulary.rows_to_indices(found)
    scores[:, :top] = np.where(found >= 0, found_scores, -np.inf)
    return ties_by_item(ids, scores)


def search_filtered(
    index: faiss.Index,
    item_vectors: np.ndarray,
    queries: np.ndarray,
    n: int,
    allowed: np.ndarray,
    path: Literal["plan", "graph", "exact"] = "plan",
    exact_max_rows: int = EXACT_MAX_ROWS,
    exact_max_share: float = EXACT_MAX_SHARE,
    widen: bool = True,
) -> tuple[np.ndarray, np.ndarray, Path]:
    """Top-n allowed item indices (Q, n) and scores per query row, and the path that produced them.

    Args:
        index: FAISS index over ``item_vectors``, by FAISS row.
        item_vectors: (I, d) float item table by FAISS row (the exact path's, and re-ranking's).
        queries: (Q, d) query vectors (one user's interests, say).
        n: results per query.
        allowed: (I,) bool by FAISS row: the rows a result may be (filter, minus exclusions).
        path: ``plan`` to let :func:`plan` choose; ``graph`` / ``exact`` to force one (benchmarks).
        exact_max_rows, exact_max_share: the planner's thresholds (:func:`plan`).
        widen: widen the HNSW beam by 1 / selectivity (:func:`graph_beam`); off only to measure.
    Returns:
        ids (Q, n) with -1 where fewer than n rows are allowed, scores, and the path taken. Every
        list holds ``min(n, allowed.sum())`` items: a short graph answer is redone exactly.
    """
    n_allowed = int(np.count_nonzero(allowed))
    chosen = plan(n_allowed, len(allowed), index, exact_max_rows, exact_max_share) if path == "plan" else path
    if chosen == "exact" or n_allowed == 0:
        ids, scores = search_exact(item_vectors, queries, n, allowed)
        return ids, scores, "exact"
    ids, scores = search_graph(
        index, queries, n, allowed, np.asarray(item_vectors, dtype=np.float32) if needs_rerank(index) else None, widen
    )
    if path == "graph":
        return ids, scores, "graph"
    want = min(n, n_allowed)
    short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
    if len(short):  # the walk ran out of allowed nodes: those rows exactly
        ids[short], scores[short] = search_exact(item_vectors, queries[short], n, allowed)
        return ids, scores, "graph+exact"
    return ids, scores, "graph"
