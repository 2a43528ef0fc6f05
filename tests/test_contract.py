"""The artifact contract's own helpers: the item vocabulary, the model-version recipe, temp siblings."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from remi.contract import (
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    MODEL_DATA,
    MODEL_FILE,
    ArtifactError,
    ItemVocabulary,
    atomic_folder,
    file_entries,
    leftover_siblings,
    model_version,
    sweep_leftovers,
    temp_sibling,
)

# ---------------------------------------------------------------- ItemVocabulary


def test_raw_id_index_and_row_round_trip() -> None:
    vocab = ItemVocabulary(["a", "b", "c"])
    assert vocab.n_items == len(vocab) == 3 and vocab.table_size == 4
    assert [vocab.index_of(raw) for raw in ("a", "b", "c")] == [1, 2, 3]
    assert vocab.raw_ids_of([3, 1, 2]) == ["c", "a", "b"] and vocab.raw_id(np.int64(2)) == "b"
    indices = np.array([[1, 2], [3, 1]])
    rows = ItemVocabulary.indices_to_rows(indices)
    np.testing.assert_array_equal(rows, [[0, 1], [2, 0]])
    np.testing.assert_array_equal(ItemVocabulary.rows_to_indices(rows), indices)
    assert vocab.raw_ids_of(ItemVocabulary.rows_to_indices(np.arange(3))) == vocab.raw_ids  # row r is line r


def test_missing_rows_stay_minus_one_and_padding_has_no_row() -> None:
    np.testing.assert_array_equal(ItemVocabulary.rows_to_indices(np.array([2, -1, 0, -1])), [3, -1, 1, -1])
    np.testing.assert_array_equal(ItemVocabulary.indices_to_rows([ItemVocabulary.PADDING, 1]), [-1, 0])


def test_unknown_ids_are_none_skipped_and_counted() -> None:
    vocab = ItemVocabulary(["a", "b"])
    assert vocab.index_of("zzz") is None and "zzz" not in vocab and "a" in vocab and 1 not in vocab
    indices, unknown = vocab.indices_of(["b", "zzz", "a", "b", ""])
    assert indices.dtype == np.int64 and indices.tolist() == [2, 1, 2] and unknown == 2


def test_padding_is_added_and_dropped_as_row_zero() -> None:
    by_row = np.arange(6, dtype=np.float32).reshape(3, 2)
    by_index = ItemVocabulary.add_padding(by_row)
    assert by_index.shape == (4, 2) and by_index.dtype == np.float32 and not by_index[0].any()
    np.testing.assert_array_equal(ItemVocabulary.drop_padding(by_index), by_row)
    counts = np.array([0, 5, 7])  # a per-index count (bincount) has the padding in slot 0
    np.testing.assert_array_equal(ItemVocabulary.drop_padding(counts), [5, 7])


def test_index_range_covers_every_real_item_and_not_the_padding() -> None:
    vocab = ItemVocabulary(["a", "b", "c"])
    items = ItemVocabulary.index_range(3)
    assert list(items) == [1, 2, 3] and items.start == ItemVocabulary.first_index() and vocab.index_stop() == 4
    assert ItemVocabulary.PADDING not in items and list(ItemVocabulary.index_range(0)) == []


# ---------------------------------------------------------------- model_version


def _model_folder(folder: Path, weights: bytes | None = None) -> Path:
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(b"graph")
    np.save(folder / ITEM_EMBEDDINGS, np.ones((2, 3), dtype=np.float32))
    (folder / ITEM_IDS).write_text("a\nb\n")
    if weights is not None:
        (folder / MODEL_DATA).write_bytes(weights)
    return folder


def _hashed(folder: Path) -> list[str]:
    return [MODEL_FILE, ITEM_EMBEDDINGS, ITEM_IDS, *([MODEL_DATA] if (folder / MODEL_DATA).exists() else [])]


def test_model_version_is_a_short_stable_content_hash(tmp_path: Path) -> None:
    one, two = _model_folder(tmp_path / "one"), _model_folder(tmp_path / "two")
    version = model_version(one, file_entries(one, _hashed(one)))
    assert len(version) == 16 and version == model_version(two, file_entries(two, _hashed(two)))
    (two / ITEM_IDS).write_text("a\nc\n")
    assert model_version(two, file_entries(two, _hashed(two))) != version


def test_external_weights_change_the_model_version(tmp_path: Path) -> None:
    inline = _model_folder(tmp_path / "inline")
    first = _model_folder(tmp_path / "first", weights=b"w" * 64)
    second = _model_folder(tmp_path / "second", weights=b"v" * 64)  # same graph, other weights
    versions = {model_version(f, file_entries(f, _hashed(f))) for f in (inline, first, second)}
    assert len(versions) == 3


def test_unlisted_external_weights_are_refused(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path / "m", weights=b"w")
    with pytest.raises(ArtifactError, match="external weights"):
        model_version(folder, file_entries(folder, [MODEL_FILE, ITEM_EMBEDDINGS, ITEM_IDS]))


# ---------------------------------------------------------------- temp siblings and the atomic swap


def test_temp_siblings_are_hidden_unique_and_found_by_name(tmp_path: Path) -> None:
    final = tmp_path / "out[1]"  # a glob character in the name matches itself only
    tmp, old, other = temp_sibling(final), temp_sibling(final, "old"), temp_sibling(tmp_path / "out1")
    assert tmp.parent == old.parent == tmp_path and tmp.name.startswith(".out[1].tmp-") and tmp != temp_sibling(final)
    for path in (tmp, old, other):
        path.mkdir()
    assert leftover_siblings(tmp_path, final.name) == sorted([tmp, old])
    assert len(leftover_siblings(tmp_path)) == 3
    assert sorted(sweep_leftovers(tmp_path, final.name)) == sorted([tmp.name, old.name])
    assert [p.name for p in tmp_path.iterdir()] == [other.name]  # another name's leftover is not ours


def test_a_swap_killed_between_its_renames_is_swept_by_the_next_write(tmp_path: Path) -> None:
    final = tmp_path / "artifacts"
    with atomic_folder(final) as tmp:
        (tmp / "f").write_text("first")
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from remi import contract
        real_replace = os.replace
        def replace_then_die(src, dst):
            real_replace(src, dst)  # `final` -> `.final.old-*` done, the new folder never renamed in
            os.kill(os.getpid(), signal.SIGKILL)
        contract.os.replace = replace_then_die
        with contract.atomic_folder(Path({str(final)!r}), replace=True) as tmp:
            (tmp / "f").write_text("second")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    left = sorted(p.name.split("-")[0] for p in leftover_siblings(tmp_path, final.name))
    assert left == [".artifacts.old", ".artifacts.tmp"] and not final.exists()
    with atomic_folder(final, replace=True) as tmp:
        (tmp / "f").write_text("third")
    assert (final / "f").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts"]
