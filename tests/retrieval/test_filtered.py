"""Filtered search (retrieval/filtered.py) against real FAISS indexes: exact, never leaks, never short."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval import filtered
from retrieval.filtered import (
    EXACT_FALLBACK_ROWS,
    GRAPH_EF_MAX,
    GRAPH_WIDEN,
    graph_beam,
    needed_beam,
    plan,
    search_exact,
    search_filtered,
)
from retrieval.search import exact_index

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


def test_a_starved_graph_walk_falls_back_to_exact(
    vectors: np.ndarray, hnsw: faiss.Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.5% allowed on a weak graph with the served beam: the selector search alone comes back
    short; the planned search (forced onto the graph by zero thresholds) redoes those rows exactly."""
    monkeypatch.setattr(filtered, "EXACT_FALLBACK_ROWS", 0)  # past the beam cap: the graph, not exact
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
    assert graph_beam(64, 50, 0.5) == 64 * GRAPH_WIDEN / 0.5 and graph_beam(64, 50, 0.01) == GRAPH_EF_MAX
    assert graph_beam(64, 50, 0.01, widen=False) == 64


def test_the_needed_beam_grows_smoothly_as_the_filter_tightens() -> None:
    shares = np.linspace(1.0, 0.01, 200)
    beams = [needed_beam(64, 50, float(s)) for s in shares]
    assert all(b1 <= b2 for b1, b2 in zip(beams, beams[1:], strict=False))  # tighter filter, wider beam
    assert needed_beam(64, 50, 0.99) <= 1.1 * 64  # a filter that drops little costs little
    assert needed_beam(64, 50, 0.25) == 64 * GRAPH_WIDEN / 0.25  # full widening from half the catalogue down
    assert needed_beam(16, 50, 0.5) == 50 * GRAPH_WIDEN / 0.5  # the beam is never under the depth asked


def test_the_planner_takes_the_cheaper_path_for_the_catalogue_size() -> None:
    """Half the items allowed: scoring 100k rows exactly is cheaper than a 512-wide walk, 1M rows is not."""
    graph = faiss.IndexHNSWFlat(8, 16)
    graph.hnsw.efSearch = 64
    assert plan(50_000, 100_000, graph) == "exact"
    assert plan(500_000, 1_000_000, graph) == "graph"
    assert plan(99_000, 100_000, graph) == "graph"  # a light filter: hardly wider than the served walk


def test_past_the_beam_cap_the_planner_goes_exact_while_the_allowed_set_is_affordable(hnsw: faiss.Index) -> None:
    # hnsw: efSearch 8, so the base beam is n = 50; the cap is reached below 50 * 4 / 2048 ~ 9.8% allowed
    assert plan(150_000, 1_000_000, hnsw) == "graph"  # 15%: the widened beam fits the cap
    assert plan(60_000, 1_000_000, hnsw) == "exact"  # 6%: it does not, and 60k rows are cheap to score
    big = EXACT_FALLBACK_ROWS + 1
    assert plan(big, 20 * big, hnsw) == "graph"  # 5% of a huge catalogue: the capped walk, not 200k+ rows


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


def test_the_service_default_calibration_is_the_planners() -> None:
    from service.config import ServiceSettings

    assert ServiceSettings.model_fields["filter_graph_slot_cost"].default == filtered.SLOT_COST
