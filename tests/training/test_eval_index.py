"""Validation by an approximate index at catalogue scale (``eval_index``, docs/remi.md#a4-evaluation): chosen by
the size threshold, close to exact search, and only for validation during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import training.trainer
from remi.errors import RemiError
from training.config import TrainConfig, load_config
from training.data import EvalSet
from training.evaluate import evaluate
from training.models import build_model


def _clustered_model_and_users(n_items: int = 4000, n_users: int = 300, topics: int = 40) -> tuple[Any, EvalSet]:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_model("comirec-sa", n_items, 16, 2, 8)
    topic_of = rng.integers(0, topics, n_items)
    centres = rng.standard_normal((topics, 16), dtype=np.float32)
    with torch.no_grad():
        model.item_vectors().copy_(torch.from_numpy(centres[topic_of] + 0.5 * rng.standard_normal((n_items, 16))))
    members = [np.flatnonzero(topic_of == t) + 1 for t in range(topics)]
    history, mask, truth = np.zeros((n_users, 8), np.int64), np.zeros((n_users, 8), bool), []
    for u in range(n_users):
        items = members[int(rng.integers(topics))]
        history[u, :6], mask[u, :6] = rng.choice(items, 6), True
        truth.append(rng.choice(items, 2))
    return model, EvalSet(np.arange(n_users), history, mask, truth)


@pytest.mark.parametrize("search", ["ivfpq", "hnsw"])
def test_approximate_validation_is_close_to_exact(search: str) -> None:
    model, users = _clustered_model_and_users()
    exact, _, _ = evaluate(model, users, ns=(50,))
    approximate, _, _ = evaluate(model, users, ns=(50,), search=search)
    assert exact["recall@50"] > 0.01  # the planted topics make it a real comparison
    assert approximate["recall@50"] == pytest.approx(exact["recall@50"], abs=0.02)


def test_auto_validates_exactly_up_to_the_threshold_then_by_ivfpq() -> None:
    cfg = TrainConfig(eval_exact_max_items=1000)
    assert cfg.eval_index == "auto"
    assert cfg.eval_search(1000) == "exact" and cfg.eval_search(1001) == "ivfpq"
    assert TrainConfig().eval_search(1_000_000) == "exact"
    assert TrainConfig().eval_search(4_000_000) == "ivfpq"
    assert TrainConfig(eval_index="hnsw").eval_search(10) == "hnsw"
    assert TrainConfig(eval_index="exact").eval_search(10**9) == "exact"


def test_eval_settings_are_validated() -> None:
    with pytest.raises(RemiError, match="eval_index"):
        load_config(None, eval_index="ivf")
    with pytest.raises(RemiError, match="eval_exact_max_items"):
        load_config(None, eval_exact_max_items=0)


def test_training_validates_with_the_chosen_search_and_scores_the_final_model_exactly(
    synth_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    searches: list[str] = []
    real = training.trainer.evaluate

    def recording(*args: Any, search: str = "exact", **kwargs: Any) -> Any:
        searches.append(search)
        return real(*args, search=search, **kwargs)

    monkeypatch.setattr(training.trainer, "evaluate", recording)
    cfg = TrainConfig(data=str(synth_csv), scheme="sampled", max_steps=20, eval_every=10, batch_size=32, negatives=64,
                      dim=8, eval_exact_max_items=10)  # fmt: skip
    result = training.trainer.train(cfg, tmp_path / "run", show_progress=False)
    assert result is not None
    assert searches == ["ivfpq", "ivfpq", "exact", "exact"]  # two validations, then final valid and test
