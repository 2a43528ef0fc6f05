"""Filtered search: the top-n allowed items per query, planned by how many items the filter allows.

A request filter (and the request's excluded items) leaves an allowed set of FAISS rows, given
as a bool mask. Two ways to search it, as the filterable vector databases do:

* ``graph``: the index itself with an ID selector (a bitmap of the allowed rows) that FAISS
  applies during the search (HNSW and flat indexes; the exclusion machinery of retrieval/search.py),
  its beam widened by 1 / selectivity (:func:`graph_beam`). Fast while many items pass; a graph
  walk loses recall, and can come back short, when few do: most of the nodes it visits are then
  filtered out.
* ``exact``: score the allowed rows exactly (one matrix product over those rows of the float
  item table) and take the top n. Its cost grows with the allowed count, and it is exact.

:func:`plan` picks ``exact`` when the allowed count is at most :data:`EXACT_MAX_ROWS` or the
allowed share at most :data:`EXACT_MAX_SHARE`; otherwise ``graph`` when the beam the walk needs
(:func:`needed_beam`) fits under :data:`GRAPH_EF_MAX`, else ``exact`` again while the allowed set
is at most :data:`EXACT_FALLBACK_ROWS` rows (a few ms per user), and only beyond that the graph
at the capped beam (bounded latency, lower recall). Measured in benchmarks/filtered_search.py,
docs/results.md "Filtered search". A graph answer with fewer than ``min(n, allowed)`` results in
any list is redone exactly, so a caller always gets every allowed item it asked for
(``graph+exact`` in the returned path). Index kinds without selector support (IVF-PQ) always
take the exact path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import faiss
import numpy as np

from remi.contract import ItemVocabulary
from retrieval.search import SearchParametersHNSW, graph_ef, needs_rerank, rerank, selector_params, ties_by_item

Path = Literal["graph", "exact", "graph+exact"]

# The planner's thresholds (benchmarks/filtered_search.py, docs/results.md "Filtered search"):
# below either, the exact product over the allowed rows is both exact and no slower than the walk.
EXACT_MAX_ROWS = 20_000
EXACT_MAX_SHARE = 0.02
GATHER_MAX_SHARE = 0.25  # the exact path gathers the allowed rows below this share, else scores all rows and masks
# A filtered walk keeps the allowed nodes among those it visits, so its top n are the unfiltered
# ranks up to ~n / share, which a beam reaches less well than the top n: widening by 1 / share
# alone left recall@50 at 0.87 at 50% allowed (100k clustered items, M = 16, efSearch 64);
# GRAPH_WIDEN / share reaches 0.97 there (beam 512, 0.76 ms per query).
GRAPH_WIDEN = 4.0
GRAPH_EF_MAX = 2048  # the widest filtered walk (~3 ms per query at 1M items, M = 16)
EXACT_FALLBACK_ROWS = 200_000  # past the cap, exact up to this many allowed rows (~20 ms per user at d = 64)
# The planner's cost model, in units of one exact row score per query (~7.5 ns at d = 64 with
# BLAS): a walk's beam slot (one expanded node, its unvisited neighbours scored by random access)
# costs ~SLOT_COST row scores at M = 16 (1.8 us), growing as sqrt(M / 16) (M = 48 measured 1.8x
# the M = 16 walk at one beam, benchmarks/results/search_kinds.md); gathering an allowed row out of
# the table costs ~GATHER_COST row scores (per query of a user's four). So at 100k items a 50%
# filter is cheaper exactly (full product 0.75 ms per query against a 512-wide walk's 0.92) and
# at 1M items on the graph (7.5 ms against 0.92).
SLOT_COST = 240.0
GATHER_COST = 3.0


def needed_beam(index_ef: int, n: int, share: float) -> int:
    """The HNSW beam a walk filtered to ``share`` of the items needs, uncapped.

    ``max(efSearch, n)`` without a filter; the widening grows from 1 / share for a filter that
    drops almost nothing (exclude_items alone) to GRAPH_WIDEN / share at half the catalogue and
    below, so a light filter does not pay for a deep one.
    """
    base = max(index_ef, n)
    if share >= 1.0:
        return base
    if share <= 0.0:
        return GRAPH_EF_MAX * 1024  # nothing allowed: beyond any cap
    depth = 1.0 + (GRAPH_WIDEN - 1.0) * min(1.0, 2.0 * (1.0 - share))
    return max(base, math.ceil(base * depth / share))


def graph_beam(index_ef: int, n: int, share: float, widen: bool = True) -> int:
    """The beam of a filtered walk: :func:`needed_beam` up to GRAPH_EF_MAX (``widen=False``: the served beam)."""
    if not widen:
        return max(index_ef, n)
    return max(max(index_ef, n), min(GRAPH_EF_MAX, needed_beam(index_ef, n, share)))


def plan(
    n_allowed: int,
    n_total: int,
    index: faiss.Index | None = None,
    exact_max_rows: int = EXACT_MAX_ROWS,
    exact_max_share: float = EXACT_MAX_SHARE,
    n: int = 50,
    slot_cost: float = SLOT_COST,
    gathered: bool = False,
) -> Literal["graph", "exact"]:
    """Which path serves a query whose filter allows ``n_allowed`` of ``n_total`` items (module doc).

    ``slot_cost`` calibrates the cost model to a machine (0: the graph whenever the beam fits);
    ``gathered``: the allowed rows are already copied out (a cached filter), so exact pays no gather.
    """
    if index is not None and selector_params(index) is None:
        return "exact"
    if n_allowed <= exact_max_rows or n_allowed <= exact_max_share * n_total:
        return "exact"
    ef = graph_ef(index) if index is not None else None
    if ef is None or index is None:  # a flat index: the selector scans every row anyway
        return "graph"
    beam = needed_beam(ef, n, n_allowed / max(1, n_total))
    if beam > GRAPH_EF_MAX:  # the walk cannot reach the recall: exact while affordable
        return "exact" if n_allowed <= EXACT_FALLBACK_ROWS else "graph"
    graph: Any = cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw  # nb_neighbors: not in faiss's stubs
    m = int(graph.nb_neighbors(1))  # M (level 0 has 2M)
    slot = slot_cost * math.sqrt(max(1, m) / 16)
    return "graph" if beam * slot < exact_cost(n_allowed, n_total, gathered) else "exact"


def exact_cost(n_allowed: int, n_total: int, gathered: bool = False) -> float:
    """The exact path's cost per query in row scores (the planner's cost model)."""
    if n_allowed <= GATHER_MAX_SHARE * n_total:
        return n_allowed * (1.0 if gathered else 1.0 + GATHER_COST)
    return float(n_total)


@dataclass(frozen=True)
class Gathered:
    """Rows of the item table copied out once, for a filter that many requests repeat
    (retrieval/filter_cache.py): the exact path then scores them without copying them again, and
    masks what a request drops on top of the filter (its seen items, exclude_items, the blocklist)."""

    rows: np.ndarray  # sorted FAISS rows
    table: np.ndarray  # (len(rows), d) float32, read-only

    @classmethod
    def of(cls, item_vectors: np.ndarray, rows: np.ndarray) -> Gathered:
        table = np.ascontiguousarray(item_vectors[rows], dtype=np.float32)
        table.setflags(write=False)
        rows = np.asarray(rows, dtype=np.int64)
        rows.setflags(write=False)
        return cls(rows, table)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.table.nbytes)


def search_exact(
    item_vectors: np.ndarray,
    queries: np.ndarray,
    n: int,
    allowed: np.ndarray,
    gathered: Gathered | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, d) queries -> top-n item indices (Q, n) among the allowed rows, by exact inner product.

    -1 / -inf pad the lists when fewer than n rows are allowed; equal scores by item index.
    ``gathered``: rows already copied out, a superset of the allowed ones (a cached filter's).
    """
    q = len(queries)
    ids = np.full((q, n), -1, dtype=np.int64)
    scores = np.full((q, n), -np.inf, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if gathered is not None:
        keep = allowed[gathered.rows]
        n_keep = int(np.count_nonzero(keep))
        if not n_keep or not q:
            return ids, scores
        rows = gathered.rows
        candidate_scores = queries @ gathered.table.T  # (Q, G)
        if n_keep < len(rows):
            candidate_scores[:, ~keep] = -np.inf  # dropped by this request: never among the top n_keep
    else:
        rows = np.flatnonzero(allowed)
        n_keep = len(rows)
        if not n_keep or not q:
            return ids, scores
        if len(rows) <= GATHER_MAX_SHARE * len(allowed):
            candidate_scores = queries @ np.asarray(item_vectors[rows], dtype=np.float32).T  # (Q, A)
        else:  # most rows pass: one product over the whole table is cheaper than the gather
            full = queries @ np.asarray(item_vectors, dtype=np.float32).T
            candidate_scores = full[:, rows]
    top = min(n, n_keep)
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
    retrieval/search.py does.
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
    slot_cost: float = SLOT_COST,
    gathered: Gathered | None = None,
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
        widen: widen the HNSW beam (:func:`graph_beam`); off only to measure.
        slot_cost: the planner's cost of one beam slot in exact row scores (:func:`plan`).
        gathered: the allowed rows' table already copied out, a superset of ``allowed`` (a
            cached filter's, retrieval/filter_cache.py): the exact path scores it in place.
    Returns:
        ids (Q, n) with -1 where fewer than n rows are allowed, scores, and the path taken. Every
        list holds ``min(n, allowed.sum())`` items: a short graph answer is redone exactly.
    """
    n_allowed = int(np.count_nonzero(allowed))
    chosen = (
        plan(n_allowed, len(allowed), index, exact_max_rows, exact_max_share, n, slot_cost, gathered is not None)
        if path == "plan"
        else path
    )
    if chosen == "exact" or n_allowed == 0:
        ids, scores = search_exact(item_vectors, queries, n, allowed, gathered)
        return ids, scores, "exact"
    ids, scores = search_graph(
        index, queries, n, allowed, np.asarray(item_vectors, dtype=np.float32) if needs_rerank(index) else None, widen
    )
    if path == "graph":
        return ids, scores, "graph"
    want = min(n, n_allowed)
    short = np.flatnonzero((ids >= 0).sum(axis=1) < want)
    if len(short):  # the walk ran out of allowed nodes: those rows exactly
        ids[short], scores[short] = search_exact(item_vectors, queries[short], n, allowed, gathered)
        return ids, scores, "graph+exact"
    return ids, scores, "graph"
