"""The recall gate on served answers (index/gate.py) and `--kind auto`'s cheapest passing index (index/auto.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from index.auto import FLAT_ONLY_ITEMS, build_served_folder, candidate_specs, served_ef_ladder
from index.build import build_faiss, resolve_params
from index.gate import ServedGate, artifact_queries, gate_queries
from index.publish import reindex
from index.served import GateSettings
from remi.artifacts import Artifacts, load_artifacts
from remi.contract import MANIFEST, IndexManifest, ItemVocabulary, read_index_manifest, version_dir
from retrieval.search import apply_search_params


def samples(lengths: list[int], seq_len: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(S, L) left-aligned sample histories of the given lengths, item indices 1..999."""
    rng = np.random.default_rng(seed)
    history = np.zeros((len(lengths), seq_len), dtype=np.int64)
    mask = np.zeros((len(lengths), seq_len), dtype=bool)
    for row, length in enumerate(lengths):
        history[row, :length] = rng.choice(np.arange(1, 1000), size=length, replace=False)
        mask[row, :length] = True
    return history, mask


def test_gate_queries_hold_every_history_length_even_when_the_sample_has_only_long_ones() -> None:
    history, mask = samples([8] * 50 + [20] * 350)  # a k-core leaves no short users
    queries = gate_queries(history, mask, users=400)
    lengths = queries.lengths()
    assert set(lengths.tolist()) == set(range(1, 21))  # new users with one event up to a full window
    per_length = 400 // (4 * 20)
    assert all((lengths == n).sum() >= per_length for n in range(1, 21))
    assert len(queries) == 400 and queries.filled == per_length * 18 - 0  # lengths 1-7, 9-19 filled
    samples_as_served = {tuple(h[m]) for h, m in zip(history, mask, strict=True)}
    for h in queries.histories:  # each one a sample history or its first events (a user earlier in life)
        assert any(full[: len(h)] == tuple(h) for full in samples_as_served)


def test_gate_queries_exclude_seen_items_and_ask_for_fifty() -> None:
    history, mask = samples([3, 12, 20] * 40)
    queries = gate_queries(history, mask, users=100)
    for query, h in zip(queries.queries(), queries.histories, strict=True):
        assert query.k == 50 and query.exclude_seen and query.merge == "score"
        assert np.array_equal(query.seen(), h)  # the service's exclusion: the user's own history
    described = queries.describe()
    assert described["exclude_seen"] and described["users"] == 100 and described["k"] == 50
    assert set(described["users_by_length"]) == {"1-4", "5-19", "20"}


def test_gate_queries_are_the_same_for_the_same_sample() -> None:
    history, mask = samples([5, 9, 20] * 30)
    one, two = gate_queries(history, mask, users=60), gate_queries(history, mask, users=60)
    assert [h.tolist() for h in one.histories] == [h.tolist() for h in two.histories]


def test_gate_queries_of_an_empty_sample_are_empty() -> None:
    history, mask = samples([])
    assert len(gate_queries(history, mask)) == 0


def test_exact_index_scores_one_and_a_weak_graph_less(artifacts_dir: Path) -> None:
    arts = load_artifacts(artifacts_dir)
    gate = ServedGate(arts, artifact_queries(arts, 200), dedup_cosine=0.94)
    assert gate.measure(gate.exact).recall == 1.0
    n, dim = arts.item_vectors.shape
    weak = build_faiss(arts.item_vectors, "hnsw", resolve_params("hnsw", n, dim, {"m": 2, "ef_construction": 2}))
    apply_search_params(weak, "hnsw", {"ef_search": 1})
    measured = gate.measure(weak)
    assert 0.0 < measured.recall < 1.0 and measured.us_per_user > 0
    assert set(measured.recall_by_length) == set(gate.gate_queries.buckets())


def test_the_served_ef_ladder_starts_at_the_beam_a_k50_answer_walks() -> None:
    ladder = served_ef_ladder()
    assert ladder[0] == 66 and list(ladder) == sorted(set(ladder))


def test_auto_on_a_tiny_catalogue_serves_exact_search(artifacts_dir: Path, tmp_path: Path) -> None:
    result = reindex(artifacts_dir, tmp_path / "root", min_catalogue_overlap=0.0)
    manifest = result.manifest
    assert manifest.n_items <= FLAT_ONLY_ITEMS
    assert manifest.kind == "flat" and manifest.recall_source == "served" and result.index_version.endswith("-auto")
    assert manifest.candidates is not None and [c["kind"] for c in manifest.candidates] == ["flat"]
    assert manifest.candidates[0]["chosen"] and manifest.us_per_user == manifest.candidates[0]["us_per_user"]
    again = reindex(artifacts_dir, tmp_path / "root")
    assert not again.built  # same model, same settings: up to date
    other = reindex(artifacts_dir, tmp_path / "root", gate=GateSettings(dedup_cosine=1.0))
    assert other.built and other.manifest.gate is not None and other.manifest.gate["dedup_cosine"] == 1.0


def larger(arts: Artifacts, n: int = 15_000, seed: int = 0) -> Artifacts:
    """The model's items plus clustered ones with varied norms up to ``n`` (histories keep the model's items)."""
    rng = np.random.default_rng(seed)
    have, dim = arts.item_vectors.shape
    centres = arts.item_vectors[rng.integers(0, have, 60)]
    extra = centres[rng.integers(0, 60, n - have)] + 0.3 * rng.normal(size=(n - have, dim)) * arts.item_vectors.std()
    extra *= rng.uniform(0.5, 1.5, (n - have, 1))
    vectors = np.concatenate([arts.item_vectors, extra]).astype(np.float32)
    ids = [*arts.vocabulary.raw_ids, *(f"extra{i}" for i in range(n - have))]
    popularity = np.concatenate([arts.popularity, np.ones(n - have, dtype=arts.popularity.dtype)])
    return replace(arts, item_vectors=vectors, vocabulary=ItemVocabulary(ids), popularity=popularity)


def test_auto_keeps_the_cheapest_candidate_that_passes_and_records_the_runners_up(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    arts = larger(load_artifacts(artifacts_dir))
    gate = ServedGate(arts, artifact_queries(arts, 200), dedup_cosine=0.94)
    manifest = build_served_folder(arts.item_vectors, tmp_path, "auto", arts.model_version, gate, min_recall=0.9)
    candidates = manifest.candidates
    assert candidates is not None and len(candidates) == len(candidate_specs(*arts.item_vectors.shape))
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1 and chosen[0] is candidates[0] and chosen[0]["passed"]
    assert chosen[0]["recall"] >= 0.9 and {c["kind"] for c in candidates} >= {"flat", "hnsw", "ivfpq"}
    passing = [c for c in candidates if c["passed"]]
    assert chosen[0]["us_per_user"] == min(c["us_per_user"] for c in passing)  # measured, recorded
    assert manifest.kind == chosen[0]["kind"] and manifest.params == chosen[0]["params"]
    assert manifest.us_per_user == chosen[0]["us_per_user"] and manifest.selection_seconds is not None
    for c in candidates:
        if not c["passed"] and c["recall"] is not None:  # stopped below the target, on recall or on cost
            assert c["recall"] < 0.9 and c["stopped"] in ("cost", "ladder")
    assert read_index_manifest(tmp_path) == manifest  # the runners-up round-trip through the file


def test_auto_with_given_hnsw_parameters_tries_only_those_graphs() -> None:
    specs = candidate_specs(100_000, 64, {"m": 32})
    assert [s.kind for s in specs] == ["flat", "hnsw", "hnsw", "hnsw"]
    assert {s.params["m"] for s in specs[1:]} == {32}
    assert {s.params["storage"] for s in specs[1:]} == {"flat", "sq8", "fp16"}
    pinned = candidate_specs(100_000, 64, {"m": 32, "storage": "sq8", "ef_search": 80})
    assert len(pinned) == 2 and pinned[1].knob is None and pinned[1].params["ef_search"] == 80


def test_a_manifest_written_before_the_served_gate_still_loads(artifacts_dir: Path, tmp_path: Path) -> None:
    result = reindex(artifacts_dir, tmp_path / "root", min_catalogue_overlap=0.0)
    data = json.loads((version_dir(tmp_path / "root", result.index_version) / MANIFEST).read_text())
    for field in ("gate", "us_per_user", "candidates", "selection_seconds"):
        data.pop(field)
    old = IndexManifest.model_validate(data)
    assert old.gate is None and old.candidates is None and old.us_per_user is None
    assert old.kind == result.manifest.kind and old.params == result.manifest.params


def test_interest_gate_keeps_the_kind_by_item_count(artifacts_dir: Path, tmp_path: Path) -> None:
    manifest = reindex(artifacts_dir, tmp_path / "root", recall_of="interests").manifest
    assert manifest.recall_source == "interests" and manifest.candidates is None and manifest.gate is None


@pytest.mark.parametrize("users", [1, 5])
def test_a_small_gate_still_covers_every_length(users: int) -> None:
    history, mask = samples([20] * 30)
    queries = gate_queries(history, mask, users=users)
    assert sorted(queries.lengths().tolist()) == list(range(1, 21))


def test_index_status_shows_what_the_gate_measured_and_the_runners_up(artifacts_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    root = tmp_path / "root"
    reindex(artifacts_dir, root, min_catalogue_overlap=0.0)
    shown = CliRunner().invoke(app, ["index", "status", "--root", str(root)])
    assert shown.exit_code == 0, shown.output
    index = json.loads(shown.stdout)["index"]
    assert index["kind"] == "flat" and index["recall_source"] == "served" and index["us_per_user"] > 0
    assert index["gate"]["exclude_seen"] and index["gate"]["k"] == 50
    assert index["runners_up"][0].startswith("flat: recall 1.0000") and index["runners_up"][0].endswith("chosen")
