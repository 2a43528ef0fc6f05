"""The engine's serving levers (docs/operations.md#serving-cost-of-a-trained-model): interest dedup,
one search per batch, answers as bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from index.publish import reindex
from retrieval.engine import Engine
from retrieval.query import Query
from retrieval.store import LoadedVersion, load_current
from service.config import ServiceSettings


@pytest.fixture(scope="module", params=["flat", "hnsw"])
def loaded(
    request: pytest.FixtureRequest, artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> LoadedVersion:
    root = tmp_path_factory.mktemp(f"dedup-{request.param}") / "root"
    reindex(artifacts_dir, root, kind=request.param)
    return load_current(root)


def queries(engine: Engine, k: int = 20) -> list[Query]:
    arts = engine.arts
    return [Query(h[m], k) for h, m in zip(arts.sample_history, arts.sample_mask, strict=True) if m.any()][:64]


def test_dedup_answers_are_correct_and_keep_most_of_the_full_answer(loaded: LoadedVersion) -> None:
    full = Engine(loaded)
    deduped = Engine(loaded, dedup_cosine=0.5, min_weight=0.2)  # aggressive: most interests grouped
    qs = queries(full)
    want, _ = full.recommend(qs)
    got, timings = deduped.recommend(qs)
    assert timings.extra["searched_interests"] < timings.extra["interests"]  # it did skip searches
    overlaps = []
    for q, a, b in zip(qs, want, got, strict=True):
        assert len(b.item_ids) == q.k and len(set(b.item_ids)) == q.k  # k items, no duplicates
        seen = set(deduped.vocabulary.raw_ids_of(q.history))
        assert not seen & set(b.item_ids)  # exclusions hold
        assert b.scores == sorted(b.scores, reverse=True)
        assert all(i is not None and 0 <= i < loaded.artifacts.manifest.interests for i in b.interests)
        overlaps.append(len(set(a.item_ids) & set(b.item_ids)) / q.k)
    assert np.mean(overlaps) >= 0.8


def test_dedup_scores_are_each_items_best_score_over_all_interests(loaded: LoadedVersion) -> None:
    engine = Engine(loaded, dedup_cosine=0.5)
    q = queries(engine)[0]
    (res,), _ = engine.recommend([q])
    from remi.artifacts import pad_histories

    ids, mask = pad_histories([q.history], engine.seq_len)
    vectors, _ = engine.arts.tower.run(ids, mask)
    rows = np.array([engine.vocabulary.index_of(i) for i in res.item_ids]) - 1
    all_k = engine.item_vectors[rows] @ vectors[0].T  # (k, K)
    assert np.allclose(res.scores, all_k.max(1), atol=1e-5)
    assert res.interests == all_k.argmax(1).tolist()


def test_dedup_off_gives_the_answers_of_searching_every_interest(loaded: LoadedVersion) -> None:
    off, full = Engine(loaded, dedup_cosine=1.0), Engine(loaded)
    a, _ = off.recommend(queries(off))
    b, _ = full.recommend(queries(full))
    assert [r.item_ids for r in a] == [r.item_ids for r in b]


@pytest.mark.parametrize("merge", ["quota", "round_robin"])
def test_dedup_leaves_the_per_interest_merges_alone(loaded: LoadedVersion, merge: str) -> None:
    plain, deduped = Engine(loaded), Engine(loaded, dedup_cosine=0.5, min_weight=0.3)
    qs = [Query(q.history, 15, True, merge) for q in queries(plain)[:16]]
    assert [r.item_ids for r in plain.recommend(qs)[0]] == [r.item_ids for r in deduped.recommend(qs)[0]]


def test_answer_items_bytes_equal_orjson_of_the_item_dicts(loaded: LoadedVersion) -> None:
    engine = Engine(loaded, dedup_cosine=0.8)
    results, _ = engine.recommend([*queries(engine, 50)[:8], Query(np.zeros(0, dtype=np.int64), 7)])
    for r in results:
        dicts = [
            {"item_id": i, "score": s, "interest": w} for i, s, w in zip(r.item_ids, r.scores, r.interests, strict=True)
        ]
        assert r.items_json == orjson.dumps(dicts)
    assert results[-1].cold_start


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("interest_dedup_cosine", 0.0),
        ("interest_dedup_cosine", 1.5),
        ("interest_min_weight", -0.1),
        ("interest_min_weight", 1.0),
    ],  # fmt: skip
)
def test_bad_dedup_settings_are_refused_naming_the_setting(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        ServiceSettings(**{field: value})  # type: ignore[arg-type]


def test_dedup_settings_reach_the_workers_through_the_environment() -> None:
    env = ServiceSettings(interest_dedup_cosine=0.9, interest_min_weight=0.05).to_env()
    assert env["REMI_INTEREST_DEDUP_COSINE"] == "0.9" and env["REMI_INTEREST_MIN_WEIGHT"] == "0.05"


def test_reindex_can_gate_on_merged_answers_and_a_changed_gate_rebuilds(artifacts_dir: Path, tmp_path: Path) -> None:
    first = reindex(artifacts_dir, tmp_path / "root", kind="hnsw", recall_of="answers")
    assert first.manifest.recall_source == "served" and first.manifest.recall_at_50 >= 0.95
    assert not reindex(artifacts_dir, tmp_path / "root", kind="hnsw", recall_of="answers").built
    again = reindex(artifacts_dir, tmp_path / "root", kind="hnsw", recall_of="interests")
    assert again.built and again.manifest.recall_source == "interests"
