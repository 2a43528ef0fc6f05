"""Versions load memory-mapped (REMI_MMAP=true): same answers as a private copy, the files mapped, damage refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.build import build_index_folder
from index.publish import reindex
from remi.artifacts import load_artifacts
from remi.contract import (
    INDEX_FILE,
    ITEM_EMBEDDINGS,
    ITEM_POPULARITY,
    MANIFEST,
    MODEL_DATA,
    VERSION_ARTIFACTS,
    ArtifactError,
    file_entries,
    version_dir,
)
from retrieval.store import load_current, load_faiss, load_version
from tests.index.test_index import clustered


def mapped_files() -> str:
    """The files this process maps right now (/proc/self/maps)."""
    return Path("/proc/self/maps").read_text()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_a_mapped_index_answers_exactly_like_a_copied_one_and_maps_its_file(kind: str, tmp_path: Path) -> None:
    x, q = clustered()
    build_index_folder(x, tmp_path, kind, "m1", queries=q)
    _, copied = load_faiss(tmp_path)
    _, mapped = load_faiss(tmp_path, mmap=True)
    assert str(tmp_path / INDEX_FILE) in mapped_files()  # a view of the file, not a copy
    copy_scores, copy_rows = copied.search(q, 50)
    map_scores, map_rows = mapped.search(q, 50)
    np.testing.assert_array_equal(map_rows, copy_rows)
    np.testing.assert_array_equal(map_scores, copy_scores)
    if kind == "hnsw":  # the search knob chosen at build is applied to the mapped index too
        assert mapped.hnsw.efSearch == copied.hnsw.efSearch


def test_a_mapped_version_maps_its_index_arrays_and_external_weights(trained_run: Path, tmp_path: Path) -> None:
    from training.export import export_run

    art = tmp_path / "art"
    export_run(trained_run, art, external_data=True)
    name = reindex(art, tmp_path / "root", kind="hnsw").index_version
    folder = version_dir(tmp_path / "root", name)
    loaded = load_current(tmp_path / "root", mmap=True)  # REMI_MMAP=true (the default is private copies)
    maps = mapped_files()
    for path in (folder / INDEX_FILE, folder / VERSION_ARTIFACTS / MODEL_DATA):
        assert str(path) in maps, path
    for array, file in (
        (loaded.artifacts.item_vectors, ITEM_EMBEDDINGS),
        (loaded.artifacts.popularity, ITEM_POPULARITY),
    ):
        assert isinstance(array, np.memmap) and not array.flags.writeable
        assert Path(array.filename) == folder / VERSION_ARTIFACTS / file
    copied = load_version(folder, mmap=False)
    assert not isinstance(copied.artifacts.item_vectors, np.memmap)
    np.testing.assert_array_equal(copied.artifacts.item_vectors, loaded.artifacts.item_vectors)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_index_whose_manifest_matches_it_fails_the_mapped_load_cleanly(damage: str, tmp_path: Path) -> None:
    """The hash check passes (the manifest was rewritten to match), so the mapping reader itself sees the damage."""
    x, q = clustered(n=2000)
    build_index_folder(x, tmp_path, "hnsw", "m1", queries=q)
    data = (tmp_path / INDEX_FILE).read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncate" else data[:64] + b"\x7f" * (len(data) - 64)
    (tmp_path / INDEX_FILE).write_bytes(damaged)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["files"] = {k: v.model_dump() for k, v in file_entries(tmp_path, [INDEX_FILE]).items()}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"{INDEX_FILE}: (unreadable FAISS index|holds)"):
        load_faiss(tmp_path, mmap=True)


def test_a_truncated_item_table_fails_the_mapped_load_cleanly(artifacts_dir: Path, tmp_path: Path) -> None:
    art = tmp_path / "art"
    shutil.copytree(artifacts_dir, art)
    vectors = art / ITEM_EMBEDDINGS
    vectors.write_bytes(vectors.read_bytes()[:-64])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifacts(art, mmap=True)
    # with the manifest rewritten to match, numpy's mapping itself meets the short file
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["files"][ITEM_EMBEDDINGS] = file_entries(art, [ITEM_EMBEDDINGS])[ITEM_EMBEDDINGS].model_dump()
    (art / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"{art}: cannot read an array file"):
        load_artifacts(art, mmap=True)
