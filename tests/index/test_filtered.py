"""Filtered search (index/filtered.py) against real FAISS indexes: exact, never leaks, never short."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index.filtered import GRAPH_EF_MAX, graph_beam, plan, search_exact, search_filtered
from index.search import exact_index

N, D = 3000, 16


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def hnsw(vectors: np.ndarray) -> faiss.Index:
    """A deliberately weak graph (M = 4, ef = 8): a selective filter starves its walk."""
    index = faiss.IndexHNSWFlat(D, 4, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 16
    index.add(vectors)
    index.hnsw.efSearch = 8
    return index


def brute_force(vectors: np.ndarray, queries: np.ndarray, n: int, allowed: np.ndarray) -> list[list[int]]:
    """Top-n item indices among allowed rows by a plain sort (ties by item index)."""
    rows = np.flatnonzero(allowed)
    out = []
    for q in queries:
        scores = vectors[rows] @ q
        order = np.lexsort((rows, -scores.astype(np.float64)))[:n]
        out.append([int(r) + 1 for r in rows[order]])
    return out


def test_exact_path_is_the_brute_force_answer(vectors: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    queries = rng.normal(size=(5, D)).astype(np.float32)
    for share in (0.9, 0.3, 0.01):  # both the gather and the mask-the-full-product branches
        allowed = rng.random(N) < share
        ids, scores = search_exact(vectors, queries, 20, allowed)
        assert [[int(i) for i in row if i >= 0] for row in ids] == brute_force(vectors, queries, 20, allowed)
        assert np.all(np.diff(scores, axis=1)[np.isfinite(scores[:, 1:])] <= 0)


@pytest.mark.parametrize("index_kind", ["hnsw", "flat"])
def test_random_filters_never_leak_and_always_fill_min_k_allowed(
    index_kind: str, vectors: np.ndarray, hnsw: faiss.Index
) -> None:
    """Property over seeded random masks, sizes and k, on every path: no disallowed item, no
    duplicate, and min(k, allowed) results per query row."""
    index = hnsw if index_kind == "hnsw" else exact_index(vectors)
    rng = np.random.default_rng(2)
    for _ in range(60):
        share = float(rng.choice([0.9, 0.5, 0.1, 0.02, 0.005, 0.001, 0.0]))
        allowed = rng.random(N) < share
        k = int(rng.integers(1, 80))
        queries = rng.normal(size=(3, D)).astype(np.float32)
        for path in ("plan", "exact"):
            ids, _, taken = search_filtered(index, vectors, queries, k, allowed, path, exact_max_rows=50)
            for row in ids:
                found = row[row >= 0]
                assert allowed[found - 1].all(), (share, k, taken)
                assert len(set(found.tolist())) == len(found)
                assert len(found) == min(k, int(allowed.sum())), (share, k, taken)


def test_a_starved_graph_walk_falls_back_to_exact(vectors: np.ndarray, hnsw: faiss.Index) -> None:
    """0.5% allowed on a weak graph with the served beam: the selector search alone comes back
    short; the planned search (forced onto the graph by zero thresholds) redoes those rows exactly."""
    rng = np.random.default_rng(3)
    allowed = rng.random(N) < 0.005
    queries = rng.normal(size=(8, D)).astype(np.float32)
    graph_ids, _, _ = search_filtered(hnsw, vectors, queries, 10, allowed, "graph", widen=False)
    assert ((graph_ids >= 0).sum(axis=1) < min(10, allowed.sum())).any()  # the premise: the walk is short
    ids, _, taken = search_filtered(
        hnsw, vectors, queries, 10, allowed, exact_max_rows=0, exact_max_share=0.0, widen=False
    )
    assert taken == "graph+exact"
    assert [[int(i) for i in row if i >= 0] for row in ids] == brute_force(vectors, queries, 10, allowed)


def test_the_graph_beam_widens_with_the_filter_up_to_a_cap() -> None:
    assert graph_beam(64, 50, 1.0) == 64 and graph_beam(64, 100, 1.0) == 100
    assert graph_beam(64, 50, 0.5) == 128 and graph_beam(64, 50, 0.01) == GRAPH_EF_MAX
    assert graph_beam(64, 50, 0.01, widen=False) == 64


def test_the_planner_searches_small_allowed_sets_exactly_and_large_ones_on_the_graph(hnsw: faiss.Index) -> None:
    assert plan(100, 1_000_000, hnsw) == "exact"  # few rows
    assert plan(15_000, 1_000_000, hnsw) == "exact"  # 1.5%: below the share
    assert plan(100_000, 1_000_000, hnsw) == "graph"
    assert plan(100_000, 1_000_000, hnsw, exact_max_rows=200_000) == "exact"


def test_an_index_without_selector_support_is_searched_exactly(vectors: np.ndarray) -> None:
    wrapped = faiss.index_factory(D, "IVF8,PQ4x4,RFlat", faiss.METRIC_INNER_PRODUCT)  # as index/build.py's ivfpq
    wrapped.train(vectors)
    wrapped.add(vectors)
    allowed = np.ones(N, dtype=bool)
    assert plan(N, N, wrapped) == "exact"
    queries = vectors[:2]
    ids, _, taken = search_filtered(wrapped, vectors, queries, 5, allowed)
    assert taken == "exact" and [int(i) for i in ids[:, 0]] == [1, 2]  # each query's own item first
