import numpy as np

from index.merge import merge_by_score


def test_merge_keeps_each_item_once_at_its_best_score() -> None:
    ids = np.array([[[10, 11, 12], [11, 13, 10]]])
    scores = np.array([[[0.9, 0.5, 0.1], [0.95, 0.4, 0.3]]])
    out, sc, interest = merge_by_score(ids, scores, 4)
    assert out.tolist() == [[11, 10, 13, 12]]
    assert np.allclose(sc, [[0.95, 0.9, 0.4, 0.1]])
    assert interest.tolist() == [[1, 0, 1, 0]]


def test_merge_equals_exact_top_n_by_max_interest_score() -> None:
    rng = np.random.default_rng(0)
    items, users, k, n = rng.normal(size=(200, 8)), 5, 3, 20
    interests = rng.normal(size=(users, k, 8))
    full = interests @ items.T  # (U, K, I)
    top = np.argsort(-full, -1)[:, :, :n]
    merged, _, _ = merge_by_score(top, np.take_along_axis(full, top, -1), n)
    exact = np.argsort(-full.max(1), -1)[:, :n]
    assert np.array_equal(merged, exact)


def test_missing_results_are_skipped_and_padded() -> None:
    ids = np.array([[[3, -1], [-1, -1]]])
    out, sc, interest = merge_by_score(ids, np.array([[[1.0, 0.0], [0.0, 0.0]]]), 3)
    assert out.tolist() == [[3, -1, -1]] and interest.tolist() == [[0, -1, -1]]
