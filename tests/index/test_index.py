"""FAISS index kinds, recall gate, exact exclusion, loading damaged or mismatched indexes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from index.build import build_index_folder, choose_kind, recall_at, resolve_params
from index.publish import build_from_artifacts
from remi.contract import INDEX_FILE, MANIFEST, VERSION_ARTIFACTS, ArtifactError, file_entries, read_artifact_manifest
from remi.errors import RemiError
from retrieval.search import search_excluding
from retrieval.store import load_faiss, load_version


def clustered(n: int = 5000, d: int = 16, clusters: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors in clusters with varied norms, and queries mixing a few items (like interests)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, d))
    x *= rng.uniform(0.5, 2.0, (n, 1))
    q = x[rng.integers(0, n, (300, 3))].mean(1)
    return x.astype(np.float32), q.astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_each_kind_builds_saves_and_reloads_with_its_recall(kind: str, tmp_path: Path) -> None:
    x, q = clustered()
    manifest = build_index_folder(x, tmp_path, kind, "m1", queries=q)
    assert manifest.kind == kind and manifest.n_items == len(x) and manifest.dim == 16
    assert manifest.recall_source == "interests" and manifest.recall_queries == len(q)
    if kind == "flat":
        assert manifest.recall_at_50 is None
    else:
        assert 0.95 <= manifest.recall_at_50 <= 1.0
    loaded_manifest, index = load_faiss(tmp_path)
    assert loaded_manifest == manifest
    assert recall_at(index, x, q) == pytest.approx(manifest.recall_at_50 or 1.0)


def test_auto_picks_exact_search_for_small_catalogues_then_hnsw_then_ivfpq() -> None:
    assert choose_kind(10_000) == "flat"
    assert choose_kind(1_000_000) == "hnsw"
    assert choose_kind(50_000_000) == "ivfpq"
    params = resolve_params("ivfpq", 1_000_000, 64)
    assert params["nlist"] == 4000 and params["pq_m"] == 16


def test_unknown_parameter_is_refused() -> None:
    with pytest.raises(RemiError, match="no parameter"):
        resolve_params("hnsw", 1000, 16, {"nprobe": 3})


def test_build_below_the_recall_threshold_fails_and_leaves_nothing(artifacts_dir: Path, tmp_path: Path) -> None:
    weak = {"m": 2, "ef_construction": 2, "ef_search": 1}
    with pytest.raises(RemiError, match="recall@50 is .* below the threshold 0.999"):
        build_from_artifacts(artifacts_dir, tmp_path / "idx", "hnsw", weak, min_recall=0.999)
    assert list(tmp_path.iterdir()) == []


def test_build_from_artifacts_measures_recall_on_model_interests(artifacts_dir: Path, tmp_path: Path) -> None:
    manifest = build_from_artifacts(artifacts_dir, tmp_path / "idx", "hnsw", recall_of="interests")
    model = read_artifact_manifest(artifacts_dir)
    assert manifest.recall_source == "interests" and manifest.recall_queries % model.interests == 0
    assert manifest.model_version == model.model_version and manifest.recall_at_50 >= 0.95


def test_build_from_artifacts_gates_on_served_answers_by_default(artifacts_dir: Path, tmp_path: Path) -> None:
    """The default gate measures what the service returns: each user's answer through the engine (index/gate.py)."""
    manifest = build_from_artifacts(artifacts_dir, tmp_path / "idx", "hnsw")
    assert manifest.recall_source == "served" and manifest.gate is not None and manifest.us_per_user
    assert manifest.recall_at_50 >= 0.95


def brute_force_allowed(x: np.ndarray, queries: np.ndarray, banned: set[int], n: int) -> list[int]:
    scores = queries @ x.T
    order = np.argsort(-scores, kind="stable")
    return [int(i) + 1 for i in order if int(i) + 1 not in banned][:n]


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_exclusion_set_is_honoured_exactly(kind: str, tmp_path: Path) -> None:
    x, q = clustered(n=2000)
    build_index_folder(x, tmp_path, kind, "m1", queries=q)
    _, index = load_faiss(tmp_path)
    rng = np.random.default_rng(1)
    interests = q[:12].reshape(3, 4, -1)
    # user 0: its own top results banned (the hard case); user 1: random; user 2: nothing
    exact_top = np.argsort(-(interests[0] @ x.T), axis=1)[:, :30] + 1
    exclude = [np.unique(exact_top), rng.choice(np.arange(1, 2001), 40, replace=False), []]
    ids, scores = search_excluding(index, interests, 50, exclude)
    assert ids.shape == scores.shape == (3, 4, 50)
    for user in range(3):
        banned = set(map(int, exclude[user]))
        assert not banned & set(ids[user].ravel().tolist())
        assert (ids[user] > 0).all() and np.isfinite(scores[user]).all()
        assert (np.diff(scores[user], axis=-1) <= 1e-6).all()  # still sorted best first
        if kind == "flat":  # exact index: exactly the best allowed items
            for k in range(4):
                assert ids[user, k].tolist() == brute_force_allowed(x, interests[user, k], banned, 50)


def test_exclusion_larger_than_the_catalogue_returns_fewer_results(tmp_path: Path) -> None:
    x, q = clustered(n=100)
    build_index_folder(x, tmp_path, "flat", "m1")
    _, index = load_faiss(tmp_path)
    ids, scores = search_excluding(index, q[:4].reshape(1, 4, -1), 50, [np.arange(1, 91)])
    assert set(ids[ids > 0].tolist()) <= set(range(91, 101))
    assert (ids[:, :, 10:] == -1).all() and np.isneginf(scores[:, :, 10:]).all()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_or_truncated_index_is_a_clear_error(damage: str, tmp_path: Path) -> None:
    x, q = clustered(n=500)
    build_index_folder(x, tmp_path, "hnsw", "m1", queries=q)
    data = bytearray((tmp_path / INDEX_FILE).read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    else:
        data[100] ^= 0xFF
    (tmp_path / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{INDEX_FILE}: .*(truncated|corrupt)"):
        load_faiss(tmp_path)


def test_unreadable_index_with_a_matching_manifest_is_still_a_clear_error(tmp_path: Path) -> None:
    """Even if someone rewrote the manifest to match the damaged file, FAISS's failure is caught."""
    x, _ = clustered(n=500)
    build_index_folder(x, tmp_path, "flat", "m1")
    (tmp_path / INDEX_FILE).write_bytes((tmp_path / INDEX_FILE).read_bytes()[:1000])
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["files"] = {k: v.model_dump() for k, v in file_entries(tmp_path, [INDEX_FILE]).items()}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unreadable FAISS index"):
        load_faiss(tmp_path)


def test_index_built_from_a_model_of_another_dimension_is_refused(artifacts_dir: Path, tmp_path: Path) -> None:
    model = read_artifact_manifest(artifacts_dir)
    version = tmp_path / "v1"
    version.mkdir()
    other = np.random.default_rng(0).normal(size=(model.n_items, model.dim * 2)).astype(np.float32)
    build_index_folder(other, version, "flat", model.model_version)
    shutil.copytree(artifacts_dir, version / VERSION_ARTIFACTS)
    with pytest.raises(ArtifactError, match=f"index dimension {model.dim * 2} does not match the model's dimension"):
        load_version(version)


def test_index_of_another_catalogue_is_refused(artifacts_dir: Path, tmp_path: Path) -> None:
    model = read_artifact_manifest(artifacts_dir)
    version = tmp_path / "v1"
    version.mkdir()
    fewer = np.random.default_rng(0).normal(size=(model.n_items - 5, model.dim)).astype(np.float32)
    build_index_folder(fewer, version, "flat", model.model_version)
    shutil.copytree(artifacts_dir, version / VERSION_ARTIFACTS)
    with pytest.raises(ArtifactError, match="rebuild the index"):
        load_version(version)


def test_faiss_row_maps_to_item_index_plus_one(artifacts_dir: Path, tmp_path: Path) -> None:
    """The contract the service relies on: searching an item's own direction finds that item."""
    build_from_artifacts(artifacts_dir, tmp_path / "idx", "flat")
    _, index = load_faiss(tmp_path / "idx")
    vectors = np.load(artifacts_dir / "item_embeddings.npy")
    norms = np.linalg.norm(vectors, axis=1)
    row = int(np.argmax(norms))  # the largest item wins its own direction under inner product
    ids, _ = search_excluding(index, (vectors[row] / norms[row])[None, None, :], 1)
    assert ids[0, 0, 0] == row + 1
    assert isinstance(index, faiss.Index)


def test_auto_calibrates_the_search_knob_up_to_the_recall_target(tmp_path: Path) -> None:
    x, q = clustered(n=20_000, d=16, clusters=200)
    manifest = build_index_folder(x, tmp_path, "hnsw", "m1", queries=q, params={"m": 16}, min_recall=0.98)
    tried = manifest.calibration["tried"]
    assert manifest.calibration["param"] == "ef_search" and manifest.recall_at_50 >= 0.98
    assert manifest.params["ef_search"] == int(list(tried)[-1])
    assert all(r < 0.98 for r in list(tried.values())[:-1])  # stopped at the first passing setting
    _, index = load_faiss(tmp_path)
    assert index.hnsw.efSearch == manifest.params["ef_search"]  # the chosen value is what loads


def test_explicit_search_setting_is_measured_not_tuned(tmp_path: Path) -> None:
    x, q = clustered()
    manifest = build_index_folder(x, tmp_path, "hnsw", "m1", queries=q, params={"ef_search": 64})
    assert manifest.calibration is None and manifest.params["ef_search"] == 64
