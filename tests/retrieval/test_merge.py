import numpy as np

from retrieval.merge import MERGES, interest_weights, merge, merge_by_score, merge_quota, merge_round_robin


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


def _lists() -> tuple[np.ndarray, np.ndarray]:
    """Interest 0 is strong (high scores), interest 1 weak; item 5 appears in both."""
    ids = np.array([[1, 2, 3, 4, 5, 6], [5, 7, 8, 9, 10, 11]])
    scores = np.array([[0.99, 0.98, 0.97, 0.96, 0.95, 0.94], [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])
    return ids, scores


def test_score_merge_lets_the_strong_interest_take_the_list_but_quota_keeps_the_weak_one() -> None:
    ids, scores = _lists()
    by_score, _, who = merge("score", ids[None], scores[None], 4)
    assert set(who[0].tolist()) == {0}
    out, sc, interest = merge_quota(ids, scores, np.array([0.5, 0.5]), 4)
    assert interest.tolist().count(1) == 2 and interest.tolist().count(0) == 2
    assert (np.diff(sc) <= 0).all()  # returned in score order
    assert len(set(out.tolist())) == 4


def test_quota_follows_the_weights_and_fills_unused_slots_by_score() -> None:
    ids, scores = _lists()
    _, _, interest = merge_quota(ids, scores, np.array([0.75, 0.25]), 4)
    assert sorted(interest.tolist()) == [0, 0, 0, 1]
    short_ids = np.array([[1, 2, -1, -1], [7, 8, 9, 10]])
    out, _, interest = merge_quota(short_ids, np.ones((2, 4)), np.array([0.9, 0.1]), 4)
    assert sorted(out.tolist()) == [1, 2, 7, 8] and sorted(interest.tolist()) == [0, 0, 1, 1]


def test_round_robin_interleaves_and_skips_duplicates() -> None:
    ids, scores = _lists()
    out, _, interest = merge_round_robin(ids, scores, 6)
    assert out.tolist() == [1, 5, 2, 7, 3, 8]
    assert interest.tolist() == [0, 1, 0, 1, 0, 1]


def test_every_strategy_pads_when_candidates_run_out() -> None:
    ids = np.array([[[3, -1], [3, -1]]])
    for strategy in MERGES:
        out, sc, interest = merge(strategy, ids, np.array([[[1.0, 0.0], [0.5, 0.0]]]), 3, np.array([[0.5, 0.5]]))
        assert out.tolist() == [[3, -1, -1]] and interest[0, 1:].tolist() == [-1, -1], strategy


def test_interest_weights_count_the_history_items_each_interest_owns() -> None:
    routing = np.array([[[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.9, 0.0]]])  # position 3 is padding
    mask = np.array([[True, True, True, False]])
    w = interest_weights(routing, mask)
    assert np.allclose(w, [[3 / 5, 2 / 5]])


def test_quota_and_round_robin_do_not_order_equal_scores_by_visiting_order() -> None:
    """Equal scores are ordered by item index, whichever interest reached them first (B.5)."""
    ids = np.array([[[5, 6], [2, 3]]])
    scores = np.ones((1, 2, 2))
    out, _, _ = merge("quota", ids, scores, 3, np.array([[0.7, 0.3]]))
    assert out[0].tolist() == [2, 5, 6]
