"""Serving a model with adaptive interests (docs/remi.md A.13): a user is searched and merged with
the interests the exported ``interest_mask`` gives them, no more, under every merge and with dedup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from index.publish import reindex
from remi.artifacts import pad_histories
from retrieval.engine import Engine
from retrieval.query import Query
from retrieval.store import LoadedVersion, load_current
from training.models import active_interests


@pytest.fixture(scope="module")
def adaptive(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedVersion:
    from training.config import TrainConfig
    from training.export import export_run
    from training.trainer import train

    base = tmp_path_factory.mktemp("adaptive")
    cfg = TrainConfig(
        data=str(synth_csv), adaptive_interests="log2", max_steps=150, eval_every=150, batch_size=64,
        negatives=256, dim=16, seed=1,
    )  # fmt: skip
    train(cfg, base / "run", show_progress=False)
    export_run(base / "run", base / "art")
    reindex(base / "art", base / "root", kind="flat")
    return load_current(base / "root")


def histories(engine: Engine) -> list[np.ndarray]:
    """Held-out histories cut to 1..L items, so every active-interest count occurs."""
    arts = engine.arts
    full = [h[m] for h, m in zip(arts.sample_history, arts.sample_mask, strict=True) if m.sum() >= engine.seq_len]
    return [h[-n:] for h, n in zip(full, range(1, engine.seq_len + 1), strict=False)]


def expected_active(engine: Engine, history: np.ndarray) -> np.ndarray:
    _, mask = pad_histories([history], engine.seq_len)
    return active_interests(torch.from_numpy(mask), engine.arts.manifest.interests, "log2")[0].numpy()


@pytest.mark.parametrize("merge", ["score", "quota", "round_robin"])
@pytest.mark.parametrize("dedup_cosine", [1.0, 0.5])
def test_answers_come_only_from_the_interests_a_user_has(
    adaptive: LoadedVersion, merge: str, dedup_cosine: float
) -> None:
    engine = Engine(adaptive, dedup_cosine=dedup_cosine)
    hists = histories(engine)
    assert len({int(expected_active(engine, h).sum()) for h in hists}) > 1  # short and long histories
    results, timings = engine.recommend([Query(h, 20, True, merge) for h in hists])
    searched_most = sum(int(expected_active(engine, h).sum()) for h in hists)
    assert timings.extra["searched_interests"] <= searched_most < timings.extra["interests"]
    for history, result in zip(hists, results, strict=True):
        active = np.flatnonzero(expected_active(engine, history))
        assert len(result.item_ids) == 20 and not result.cold_start
        assert set(result.interests) <= set(active.tolist()), (len(history), result.interests)


def test_a_one_item_history_is_one_search_and_its_interest_listing_shows_one_interest(
    adaptive: LoadedVersion,
) -> None:
    engine = Engine(adaptive)
    history = histories(engine)[0][:1]
    (result,), timings = engine.recommend([Query(history, 10)])
    assert timings.extra["searched_interests"] == 1 and set(result.interests) == {0}
    listing = engine.explain(history, top_n=5)
    assert [entry["interest"] for entry in listing] == [0]
    long = histories(engine)[-1]
    assert [e["interest"] for e in engine.explain(long, top_n=5)] == list(range(adaptive.artifacts.manifest.interests))


def test_the_index_gate_measures_the_interests_the_service_searches(adaptive: LoadedVersion) -> None:
    from index.probe import interest_queries

    arts = adaptive.artifacts
    active = active_interests(torch.from_numpy(arts.sample_mask[:1000]), arts.manifest.interests, "log2")
    assert len(interest_queries(arts)) == int(active.sum()) < arts.manifest.interests * len(active)
    assert len(interest_queries(arts, active_only=False)) == arts.manifest.interests * len(active)
