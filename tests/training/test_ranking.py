import math

import numpy as np
import pytest

from training.ranking import ranking_metrics


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
