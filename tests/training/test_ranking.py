import math

import numpy as np
import pytest

from training.ranking import catalogue_coverage, intra_list_diversity, ranking_metrics


def test_recall_hitrate_and_ndcg_on_a_ranked_list() -> None:
    rec = np.array([[5, 1, 7, 2]])
    truth = [np.array([1, 2, 9])]
    m = ranking_metrics(rec, truth, ns=(2, 4))
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@4"] == pytest.approx(2 / 3)
    assert m["hr@2"] == 1.0
    # hits at ranks 1 and 3 (0-based); IDCG over min(|T|, N) ranks
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    idcg4 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg4)


def test_order_matters_for_ndcg_but_not_for_recall() -> None:
    truth = [np.array([3])]
    first = ranking_metrics(np.array([[3, 1, 2]]), truth, ns=(3,))
    last = ranking_metrics(np.array([[1, 2, 3]]), truth, ns=(3,))
    assert first["recall@3"] == last["recall@3"] == 1.0
    assert first["ndcg@3"] == 1.0 and last["ndcg@3"] == pytest.approx(0.5)


def test_duplicate_ground_truth_counts_in_recall_denominator_only() -> None:
    rec = np.array([[4, 8]])
    truth = [np.array([4, 4, 6])]  # item 4 twice: |T| = 3, two distinct
    m = ranking_metrics(rec, truth, ns=(2,))
    assert m["recall@2"] == pytest.approx(1 / 3)  # one distinct hit / three events (ComiRec definition)
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))  # IDCG over the 2 distinct items


def test_users_without_hits_count_as_zero_and_empty_slots_never_hit() -> None:
    rec = np.array([[1, -1], [2, 3]])
    truth = [np.array([1]), np.array([9])]
    m = ranking_metrics(rec, truth, ns=(2,))
    assert m["recall@2"] == 0.5 and m["hr@2"] == 0.5


def test_coverage_counts_distinct_items_over_all_users_against_the_catalogue() -> None:
    rec = np.array([[0, 1, 2, 9], [1, 2, 3, -1], [0, 3, 5, 6]])
    assert catalogue_coverage(rec, n_items=10, n=3) == pytest.approx(5 / 10)  # 0, 1, 2, 3, 5
    assert catalogue_coverage(rec, n_items=10, n=4) == pytest.approx(7 / 10)  # empty slot ignored


def test_intra_list_diversity_is_mean_pairwise_cosine_distance_per_user_then_over_users() -> None:
    items = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    # user 0: rows 0 and 1 point the same way (distance 0); row 2 orthogonal to both (1, 1): mean 2/3
    # user 1: rows 0 and 3 opposite: distance 2; user 2 has one item and does not count
    rec = np.array([[0, 1, 2], [0, 3, -1], [2, -1, -1]])
    assert intra_list_diversity(rec, items, n=3) == pytest.approx((2 / 3 + 2) / 2)
    assert intra_list_diversity(rec, items, n=3, chunk=1) == pytest.approx((2 / 3 + 2) / 2)  # chunking
    assert math.isnan(intra_list_diversity(np.array([[1, -1]]), items, n=2))
