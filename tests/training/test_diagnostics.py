from pathlib import Path

import numpy as np
import pytest

from training.diagnostics import interest_shares, near_copy_warning, routing_diagnostics


def test_routing_diagnostics_tell_collapse_from_spread() -> None:
    mask = np.ones((1, 4), dtype=bool)
    collapsed = np.zeros((1, 2, 4))
    collapsed[0, :, 0] = 1
    spread = np.full((1, 2, 4), 0.25)
    v = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    c = routing_diagnostics(collapsed, mask, v)
    s = routing_diagnostics(spread, mask, v)
    assert c["effective_items"] == pytest.approx(1.0) and c["collapsed_share"] == 1.0
    assert s["effective_items"] == pytest.approx(4.0) and s["collapsed_share"] == 0.0
    assert s["effective_share"] == pytest.approx(1.0)
    assert c["interest_similarity"] == pytest.approx(0.0)
    same = routing_diagnostics(spread, mask, np.array([[[1.0, 1.0], [2.0, 2.0]]]))
    assert same["interest_similarity"] == pytest.approx(1.0)


def test_interest_shares_sort_each_users_contributions_then_average() -> None:
    interest = np.array(
        [
            [0, 0, 0, 1],  # shares 3/4, 1/4, 0
            [2, 2, 2, 2],  # one interest supplies everything: 1, 0, 0
            [1, 0, 2, -1],  # three filled slots: 1/3 each
            [-1, -1, -1, -1],  # empty list: not counted
        ]
    )
    s = interest_shares(interest, n_interests=3)
    assert s["interest_share_1"] == pytest.approx((3 / 4 + 1 + 1 / 3) / 3)
    assert s["interest_share_2"] == pytest.approx((1 / 4 + 0 + 1 / 3) / 3)
    assert s["interest_share_3"] == pytest.approx((0 + 0 + 1 / 3) / 3)
    assert s["interests_used"] == pytest.approx((2 + 1 + 3) / 3)


def test_list_metrics_read_item_indices_and_the_interest_behind_each() -> None:
    from training.evaluate import list_metrics

    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])  # FAISS rows 0..3 = item indices 1..4
    merged = np.array([[1, 2], [1, 3]])  # user 0: orthogonal items; user 1: parallel items
    interest = np.array([[0, 1], [1, 1]])
    m = list_metrics(merged, interest, items, n_interests=2)
    assert m["coverage@2"] == pytest.approx(3 / 4)
    assert m["diversity@2"] == pytest.approx((1 + 0) / 2)
    assert m["interest_share_1@2"] == pytest.approx((1 / 2 + 1) / 2) and m["interests_used@2"] == 1.5


def test_near_copy_interests_get_a_warning_naming_the_similarity_and_what_to_do() -> None:
    lists = {"interests_searched": 4.0, "interest_share_1@50": 0.82}
    warning = near_copy_warning({"interest_similarity": 0.956}, lists)
    assert warning and "0.956" in warning and "82%" in warning and "--adaptive-interests" in warning
    assert near_copy_warning({"interest_similarity": 0.6}, lists) is None  # distinct enough
    assert near_copy_warning({"interest_similarity": 1.0}, {"interests_searched": 1.0}) is None  # one vector
    assert near_copy_warning({"interest_similarity": float("nan")}, lists) is None


def test_evaluate_says_when_a_runs_interests_are_copies(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import training.diagnostics
    from training.runs import evaluate_run

    monkeypatch.setattr(training.diagnostics, "NEAR_COPY_SIMILARITY", -1.0)  # any K > 1 model counts
    with caplog.at_level(logging.WARNING, logger="remi.evaluate"):
        result = evaluate_run(trained_run)
    assert result["lists"]["interests_searched"] > 1
    assert any("near-copies" in r.getMessage() for r in caplog.records)
