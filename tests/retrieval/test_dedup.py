"""Interest dedup (retrieval/dedup.py): which interests are searched, and the exact re-scoring after."""

from __future__ import annotations

import numpy as np

from retrieval.dedup import leaders, rescore


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def test_near_copies_are_searched_once_and_distinct_interests_each() -> None:
    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((2, 4, 8)))
    copies = base.copy()
    copies[0, 1] = unit(base[0, 0] + 0.01 * rng.standard_normal(8))  # user 0: interest 1 ~ interest 0
    weights = np.array([[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    lead = leaders(copies, weights, cosine=0.99)
    assert lead[0].tolist() == [True, False, True, True]
    assert lead[1].all()  # random 8-d directions are far apart


def test_the_heavier_of_two_copies_leads() -> None:
    v = unit(np.array([[[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]]]))
    lead = leaders(v, np.array([[0.2, 0.5, 0.3]]), cosine=0.99)
    assert lead[0].tolist() == [False, True, True]


def test_light_interests_are_skipped_but_never_the_heaviest() -> None:
    v = unit(np.eye(3)[None].repeat(2, 0))
    weights = np.array([[0.8, 0.15, 0.05], [0.02, 0.01, 0.03]])
    lead = leaders(v, weights, cosine=1.0, min_weight=0.1)
    assert lead[0].tolist() == [True, True, False]
    assert lead[1].tolist() == [False, False, True]  # all light: the heaviest still searched


def test_threshold_one_keeps_every_distinct_interest() -> None:
    rng = np.random.default_rng(1)
    v = unit(rng.standard_normal((5, 4, 16)))
    assert leaders(v, np.full((5, 4), 0.25), cosine=1.0).all()


def test_rescore_gives_each_item_its_best_interest_and_exact_score() -> None:
    rng = np.random.default_rng(2)
    items = rng.standard_normal((30, 8)).astype(np.float32)
    interests = rng.standard_normal((2, 3, 8)).astype(np.float32)
    cand = np.array([[0, 5, -1, 7], [29, -1, -1, 3]])
    scores, who = rescore(cand, items, interests)
    for u in range(2):
        for j, row in enumerate(cand[u]):
            if row < 0:
                assert scores[u, j] == -np.inf and who[u, j] == -1
            else:
                all_k = interests[u] @ items[row]
                assert who[u, j] == int(all_k.argmax()) and np.isclose(scores[u, j], all_k.max(), atol=1e-5)
