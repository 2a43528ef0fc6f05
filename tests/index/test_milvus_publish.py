"""Milvus versions (index/milvus_publish.py) against Milvus Lite: collection per version, recall gate, alias flip,
up-to-date check, rollback, pruning, and what a failed or killed job leaves (nothing)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymilvus import DataType, MilvusClient

from index.milvus_publish import MilvusTarget, reindex_milvus, rollback_milvus, serving_version, status_milvus
from remi.contract import INDEX_FILE, VERSION_ARTIFACTS, list_versions, version_dir
from remi.errors import RemiError
from retrieval.milvus import (
    MANIFEST_FILE,
    PROP_MODEL,
    PROP_VERSION,
    alias_target,
    collection_properties,
    connect,
    list_milvus_versions,
    load_milvus_version,
)
from tests.service.attr_model import AttrModel, write_attr_artifacts


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> AttrModel:
    return write_attr_artifacts(tmp_path_factory.mktemp("milvus-model") / "artifacts", n_items=2000, seed=3)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    client = connect(str(tmp_path_factory.mktemp("milvus") / "publish.db"))
    yield client
    client.close()


@pytest.fixture
def target(client: MilvusClient) -> MilvusTarget:
    """An alias and a collection prefix of this test's own in the shared Milvus Lite file."""
    tag = uuid.uuid4().hex[:8]
    return MilvusTarget(client, f"serving_{tag}", f"t{tag}_")


def test_a_reindex_loads_a_collection_gates_it_and_flips_the_alias(
    model: AttrModel, target: MilvusTarget, tmp_path: Path
) -> None:
    result = reindex_milvus(model.artifacts, tmp_path, target, kind="flat")
    collection = result.manifest.collection
    assert result.built and result.previous is None
    assert alias_target(target.client, target.alias) == collection
    assert collection.startswith(target.prefix)
    properties = collection_properties(target.client, collection)
    assert properties[PROP_VERSION] == result.index_version
    assert properties[PROP_MODEL] == result.manifest.model_version
    assert result.manifest.recall_at_50 == 1.0  # measured through Milvus: a complete FLAT collection is exact
    assert result.manifest.fields == {"category": "attr_0", "market": "attr_1", "price": "attr_2"}
    folder = version_dir(tmp_path, result.index_version)
    assert (folder / MANIFEST_FILE).is_file() and (folder / VERSION_ARTIFACTS).is_dir()
    assert not (folder / INDEX_FILE).exists()
    assert list_versions(tmp_path) == []  # never taken for a FAISS version
    loaded = load_milvus_version(tmp_path, result.index_version, target.client)
    assert loaded.manifest.collection == collection and loaded.artifacts.manifest.n_items == 2000
    assert serving_version(target) == result.index_version


def test_the_same_artifacts_again_are_up_to_date_and_force_builds_anew(
    model: AttrModel, target: MilvusTarget, tmp_path: Path
) -> None:
    first = reindex_milvus(model.artifacts, tmp_path, target, kind="flat")
    again = reindex_milvus(model.artifacts, tmp_path, target, kind="flat")
    assert not again.built and again.index_version == first.index_version
    forced = reindex_milvus(model.artifacts, tmp_path, target, kind="flat", force=True)
    assert forced.built and forced.previous == first.index_version
    assert alias_target(target.client, target.alias) == forced.manifest.collection


def test_rollback_moves_the_alias_back_and_pruning_drops_old_collections(
    model: AttrModel, target: MilvusTarget, tmp_path: Path
) -> None:
    built = [reindex_milvus(model.artifacts, tmp_path, target, kind="flat", keep=2, force=True) for _ in range(3)]
    first, second, third = (b.manifest.collection for b in built)
    assert built[2].pruned == [built[0].index_version]
    assert not target.client.has_collection(first)
    assert list_milvus_versions(tmp_path) == [built[1].index_version, built[2].index_version]
    assert rollback_milvus(tmp_path, target) == built[1].index_version
    assert alias_target(target.client, target.alias) == second
    assert target.client.has_collection(third)  # rolled back from, kept
    assert status_milvus(tmp_path, target)["current"] == built[1].index_version
    with pytest.raises(RemiError, match="no Milvus version older"):
        rollback_milvus(tmp_path, target)
    assert rollback_milvus(tmp_path, target, to=built[2].index_version) == built[2].index_version


def test_a_collection_below_the_gate_is_dropped_and_the_alias_stays(
    model: AttrModel, target: MilvusTarget, tmp_path: Path
) -> None:
    good = reindex_milvus(model.artifacts, tmp_path, target, kind="flat")
    before = set(target.client.list_collections())
    with pytest.raises(RemiError, match="below the threshold"):
        reindex_milvus(model.artifacts, tmp_path, target, kind="flat", force=True, min_recall=1.01)
    assert alias_target(target.client, target.alias) == good.manifest.collection
    assert set(target.client.list_collections()) == before
    assert list_milvus_versions(tmp_path) == [good.index_version]


def test_an_hnsw_collection_is_calibrated_up_the_ladder_to_the_gate(
    model: AttrModel, target: MilvusTarget, tmp_path: Path
) -> None:
    result = reindex_milvus(model.artifacts, tmp_path, target, kind="hnsw", params={"m": 8}, min_recall=0.95)
    assert result.manifest.index_type == "HNSW" and result.manifest.kind == "hnsw"
    assert result.manifest.recall_at_50 is not None and result.manifest.recall_at_50 >= 0.95
    assert result.manifest.calibration is not None and result.manifest.calibration["param"] == "ef_search"
    assert result.manifest.params["ef_search"] == int(list(result.manifest.calibration["tried"])[-1])


def test_a_killed_jobs_collection_is_dropped_by_the_next_job(
    model: AttrModel, target: MilvusTarget, tmp_path: Path
) -> None:
    orphan = f"{target.prefix}20000101T000000000000Z_deadbeef_milvus_flat"
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=8)
    target.client.create_collection(orphan, schema=schema)
    reindex_milvus(model.artifacts, tmp_path, target, kind="flat")
    assert not target.client.has_collection(orphan)


def test_kinds_without_a_milvus_backend_are_refused(model: AttrModel, target: MilvusTarget, tmp_path: Path) -> None:
    with pytest.raises(RemiError, match="no Milvus backend"):
        reindex_milvus(model.artifacts, tmp_path, target, kind="ivfpq")
    with pytest.raises(RemiError, match="FAISS-only"):
        reindex_milvus(model.artifacts, tmp_path, target, kind="hnsw", params={"storage": "sq8"})
    assert alias_target(target.client, target.alias) is None
