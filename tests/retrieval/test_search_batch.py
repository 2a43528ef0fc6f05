"""One FAISS call per micro-batch (retrieval/search.py search_batch): every row is its solo answer."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from index.build import build_faiss, build_index_folder, recall_at
from retrieval.merge import merge_by_score, merge_flat
from retrieval.search import SLACK, SharedExclusion, exact_index, rerank, search_batch, search_excluding


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 16))
    return (centres[rng.integers(0, 40, 6000)] + 0.3 * rng.standard_normal((6000, 16))).astype(np.float32)


@pytest.fixture(scope="module")
def hnsw(items: np.ndarray) -> faiss.Index:
    return build_faiss(items, "hnsw", {"m": 16, "ef_construction": 80, "ef_search": 64, "storage": "flat"})


def users(items: np.ndarray, n_users: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_users, 4, items.shape[1])).astype(np.float32)
    exclude = []
    for u in range(n_users):
        near = np.argsort(-(items @ vectors[u, 0]))[: int(rng.integers(0, 80))] + 1  # items it would find
        exclude.append(np.concatenate([near, rng.integers(1, len(items) + 1, int(rng.integers(0, 40)))]))
    return vectors, exclude


@pytest.mark.parametrize("n", [1, 10, 50, 100])
def test_batch_search_equals_per_request_search(hnsw: faiss.Index, items: np.ndarray, n: int) -> None:
    hnsw.hnsw.efSearch = max(64, n + SLACK)  # the same beam as search_batch's
    vectors, exclude = users(items, 30, seed=n)
    alone = np.stack([search_excluding(hnsw, vectors[u : u + 1], n, [exclude[u]])[0][0] for u in range(30)])
    owner = np.repeat(np.arange(30), 4)
    ids, scores = search_batch(hnsw, vectors.reshape(120, -1), owner, n, exclude)
    assert np.array_equal(ids.reshape(30, 4, n), alone)
    for row, user in enumerate(owner):
        assert not np.isin(ids[row][ids[row] >= 0], exclude[user]).any()


def test_batch_search_of_a_subset_of_interests_matches_too(hnsw: faiss.Index, items: np.ndarray) -> None:
    hnsw.hnsw.efSearch = 50 + SLACK
    vectors, exclude = users(items, 12, seed=7)
    keep = np.random.default_rng(3).random((12, 4)) < 0.5
    keep[:, 0] = True
    user, interest = np.nonzero(keep)
    ids, _ = search_batch(hnsw, vectors[user, interest], user, 50, exclude)
    for row, (u, k) in enumerate(zip(user, interest, strict=True)):
        solo = search_excluding(hnsw, vectors[u : u + 1], 50, [exclude[u]])[0][0, k]
        assert np.array_equal(ids[row], solo)


@pytest.mark.parametrize("ef", [16, 48])
def test_with_a_small_beam_a_row_still_answers_as_it_does_alone(hnsw: faiss.Index, items: np.ndarray, ef: int) -> None:
    hnsw.hnsw.efSearch = ef  # below n + SLACK: rows with many seen items near them are searched again
    vectors, exclude = users(items, 20, seed=ef)
    owner = np.repeat(np.arange(20), 4)
    ids, scores = search_batch(hnsw, vectors.reshape(80, -1), owner, 50, exclude)
    for u in range(20):
        alone, alone_scores = search_batch(hnsw, vectors[u], np.zeros(4, dtype=np.int64), 50, [exclude[u]])
        assert np.array_equal(ids[owner == u], alone) and np.array_equal(scores[owner == u], alone_scores)
        assert not np.isin(ids[owner == u], exclude[u]).any()
        assert ((ids[owner == u] >= 0).sum(1) == 50).all()


def test_batch_search_on_a_flat_index_falls_back_to_per_user_calls(items: np.ndarray) -> None:
    flat = exact_index(items)
    vectors, exclude = users(items, 5, seed=11)
    ids, _ = search_batch(flat, vectors.reshape(20, -1), np.repeat(np.arange(5), 4), 20, exclude)
    assert np.array_equal(ids.reshape(5, 4, 20), search_excluding(flat, vectors, 20, exclude)[0])


def test_score_merge_of_pooled_lists_equals_the_per_interest_merge_on_random_inputs() -> None:
    rng = np.random.default_rng(4)
    for trial in range(50):
        u, k, m = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 30))
        ids = rng.integers(-1, 25, (u, k, m))  # many repeats and empty slots
        scores = np.round(rng.standard_normal((u, k, m)), 1).astype(np.float32)  # many ties
        n = int(rng.integers(1, 40))
        want = merge_by_score(ids, scores, n)
        interest = np.broadcast_to(np.repeat(np.arange(k), m), (u, k * m))
        got = merge_flat(ids.reshape(u, -1), scores.reshape(u, -1), interest, n)
        for a, b in zip(want, got, strict=True):
            assert np.array_equal(a, b), trial


@pytest.mark.parametrize("storage", ["sq8", "fp16"])
def test_compact_storage_with_exact_reranking_passes_the_recall_gate(storage: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    items = rng.standard_normal((6000, 16)).astype(np.float32)
    queries = (items[rng.choice(6000, 200)] + 0.3 * rng.standard_normal((200, 16))).astype(np.float32)
    out = tmp_path / storage
    out.mkdir()
    params = {"m": 16, "ef_construction": 80, "storage": storage}
    manifest = build_index_folder(items, out, "hnsw", "v" * 16, queries, params, min_recall=0.95)
    assert manifest.recall_at_50 is not None and manifest.recall_at_50 >= 0.95
    assert manifest.params["storage"] == storage
    index = faiss.read_index(str(out / "index.faiss"))
    index.hnsw.efSearch = manifest.params["ef_search"]
    assert recall_at(index, items, queries, 50) >= 0.95


def test_reranked_compact_search_returns_exact_scores_in_order(items: np.ndarray) -> None:
    sq8 = build_faiss(items, "hnsw", {"m": 16, "ef_construction": 80, "ef_search": 64, "storage": "sq8"})
    vectors, exclude = users(items, 6, seed=9)
    ids, scores = search_batch(sq8, vectors.reshape(24, -1), np.repeat(np.arange(6), 4), 50, exclude, items)
    for row in range(24):
        got = ids[row][ids[row] >= 0]
        exact = items[got - 1] @ vectors.reshape(24, -1)[row]
        assert np.allclose(scores[row][: len(got)], exact, atol=1e-4)
        assert (np.diff(scores[row][: len(got)]) <= 1e-6).all()
    rows, sc = rerank(np.array([[3, -1, 0]]), np.zeros((1, 3), np.float32), items, items[:1])
    assert rows[0, -1] == -1 and sc[0, -1] == -np.inf


def test_a_gate_on_merged_answers_measures_the_users_lists_and_needs_no_larger_beam(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    items = rng.standard_normal((5000, 16)).astype(np.float32)
    queries = rng.standard_normal((100 * 4, 16)).astype(np.float32)  # 100 users, K = 4 in a row
    built = {}
    for group in (1, 4):
        out = tmp_path / str(group)
        out.mkdir()
        params = {"m": 8, "ef_construction": 40}
        built[group] = build_index_folder(items, out, "hnsw", "v" * 16, queries, params, 0.95, answers_of=group)
    assert built[4].recall_source == "answers" and built[1].recall_source == "interests"
    assert built[4].params["ef_search"] <= built[1].params["ef_search"]
    index = faiss.read_index(str(tmp_path / "4" / "index.faiss"))
    index.hnsw.efSearch = built[4].params["ef_search"]
    assert recall_at(index, items, queries, 50, group=4) >= 0.95


def blocked_near(items: np.ndarray, vectors: np.ndarray, seed: int) -> np.ndarray:
    """A blocklist that bites: the top 30 of every user's second interest, plus 300 random items."""
    rng = np.random.default_rng(seed)
    near = [np.argsort(-(items @ vectors[u, 1]))[:30] + 1 for u in range(len(vectors))]
    return np.unique(np.concatenate([*near, rng.integers(1, len(items) + 1, 300)]))


@pytest.mark.parametrize("n", [10, 50])
@pytest.mark.parametrize("ef", [16, 64])
def test_a_shared_exclusion_answers_as_a_copy_of_it_in_every_users_set(
    hnsw: faiss.Index, items: np.ndarray, n: int, ef: int
) -> None:
    """The blocklist as one selector for the whole call gives each row exactly its solo answer
    with the blocked items in its own exclusion set: none blocked, none seen, n items each."""
    vectors, exclude = users(items, 20, seed=n + ef)
    blocked = blocked_near(items, vectors, seed=ef)
    shared = SharedExclusion(blocked, len(items))
    assert len(shared) == len(blocked) and shared.mask.sum() == len(blocked)
    owner = np.repeat(np.arange(20), 4)
    hnsw.hnsw.efSearch = ef
    ids, scores = search_batch(hnsw, vectors.reshape(80, -1), owner, n, exclude, shared=shared)
    hnsw.hnsw.efSearch = max(ef, n + SLACK)  # the solo reference walks search_batch's beam
    for u in range(20):
        got = ids[owner == u]
        assert not np.isin(got, blocked).any() and not np.isin(got, exclude[u]).any()
        assert ((got >= 0).sum(1) == n).all()
        alone, alone_scores = search_excluding(hnsw, vectors[u : u + 1], n, [np.union1d(exclude[u], blocked)])
        assert np.array_equal(got, alone[0]) and np.array_equal(scores[owner == u], alone_scores[0])


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_a_shared_exclusion_on_other_index_kinds_equals_the_union_of_sets(items: np.ndarray, kind: str) -> None:
    """Flat takes the shared selector with the user's own; IVF-PQ (no selector) the union by over-fetch."""
    if kind == "flat":
        index = exact_index(items)
    else:
        index = faiss.index_factory(items.shape[1], "IVF16,PQ4x4,RFlat", faiss.METRIC_INNER_PRODUCT)
        index.train(items)
        index.add(items)
    vectors, exclude = users(items, 6, seed=21)
    blocked = blocked_near(items, vectors, seed=22)
    shared = SharedExclusion(blocked, len(items))
    ids, scores = search_excluding(index, vectors, 40, exclude, shared)
    want, want_scores = search_excluding(index, vectors, 40, [np.union1d(e, blocked) for e in exclude])
    assert np.array_equal(ids, want) and np.allclose(scores, want_scores)
    assert not np.isin(ids, blocked).any() and ((ids >= 0).sum(-1) == 40).all()
    owner = np.repeat(np.arange(6), 4)
    batch_ids, _ = search_batch(index, vectors.reshape(24, -1), owner, 40, exclude, shared=shared)
    assert np.array_equal(batch_ids.reshape(6, 4, 40), want)


def test_an_empty_shared_exclusion_changes_nothing(hnsw: faiss.Index, items: np.ndarray) -> None:
    hnsw.hnsw.efSearch = 64
    vectors, exclude = users(items, 8, seed=31)
    owner = np.repeat(np.arange(8), 4)
    plain = search_batch(hnsw, vectors.reshape(32, -1), owner, 50, exclude)
    empty = SharedExclusion(np.zeros(0, dtype=np.int64), len(items))
    with_empty = search_batch(hnsw, vectors.reshape(32, -1), owner, 50, exclude, shared=empty)
    assert all(np.array_equal(a, b) for a, b in zip(plain, with_empty, strict=True))
