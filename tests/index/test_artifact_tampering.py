"""Tampered or damaged artifact folders and versions: every reader refuses them with one clear line.

Covers the manifest file names (never a path outside the folder), the item table's content
invariants (unique, clean ids; counts that agree; finite vectors), the immutability of a
published version whatever happens to the folder it was built from, and the swap leftovers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index.publish import reindex
from remi.artifacts import load_artifacts
from remi.contract import (
    INDEX_FILE,
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    ITEM_POPULARITY,
    MANIFEST,
    VERSION_ARTIFACTS,
    ArtifactError,
    atomic_folder,
    file_entries,
    read_current,
    version_dir,
)
from retrieval.store import load_current, load_version


def remi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def copy_artifacts(artifacts_dir: Path, dest: Path) -> Path:
    shutil.copytree(artifacts_dir, dest)
    for path in dest.iterdir():
        path.chmod(0o644)
    return dest


def list_in_manifest(folder: Path, name: str, content: bytes) -> None:
    """Adds (or re-hashes) a manifest entry, as a tamperer who fixes the checksums would."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def rewrite(folder: Path, name: str, content: bytes) -> None:
    """Replaces one artifact file and fixes its manifest entry (the checksum no longer protects)."""
    (folder / name).write_bytes(content)
    list_in_manifest(folder, name, content)


def npy_bytes(array: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "array.npy"
    np.save(path, array)
    return path.read_bytes()


def snapshot(top: Path) -> dict[str, str]:
    """Every file under ``top`` with its content hash (symlinks by target), the lock file aside."""
    found = {}
    for path in sorted(top.rglob("*")):
        if path.name == ".lock":
            continue
        if path.is_symlink():
            found[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            found[str(path)] = "dir"
    return found


# ---------------------------------------------------------------- B.8 manifest file names

BAD_NAMES = ["../x", "../../PREV/index.faiss", "/etc/passwd", "a/../../b", "", ".", "..", "sub/x", "a\x00b", "a\nb"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_a_file_name_outside_the_folder_is_refused_and_nothing_is_written(
    artifacts_dir: Path, tmp_path: Path, bad: str
) -> None:
    root = tmp_path / "root"
    prev = reindex(artifacts_dir, root, kind="flat").index_version
    bad = bad.replace("PREV", prev)
    art = copy_artifacts(artifacts_dir, tmp_path / "a" / "art")
    evil = b"not an index: overwritten by a tampered manifest"
    (tmp_path / prev).mkdir()
    (tmp_path / prev / INDEX_FILE).write_bytes(evil)  # what art/../../PREV/index.faiss resolves to
    list_in_manifest(art, bad, evil)
    before = snapshot(tmp_path)
    with pytest.raises(ArtifactError, match="file name") as caught:
        reindex(art, root, kind="flat", force=True)
    assert len(str(caught.value).splitlines()) == 1
    assert snapshot(tmp_path) == before
    assert read_current(root) == prev and load_current(root).name == prev


@pytest.mark.parametrize("bad", ["../../PREV/index.faiss", "/etc/passwd"], ids=repr)
def test_cli_reindex_with_a_bad_file_name_exits_2_with_one_line(artifacts_dir: Path, tmp_path: Path, bad: str) -> None:
    root = tmp_path / "root"
    prev = reindex(artifacts_dir, root, kind="flat").index_version
    bad = bad.replace("PREV", prev)
    art = copy_artifacts(artifacts_dir, tmp_path / "a" / "art")
    content = Path(bad).read_bytes() if bad.startswith("/") else b"evil"
    if not bad.startswith("/"):
        (tmp_path / prev).mkdir()
        (tmp_path / prev / INDEX_FILE).write_bytes(content)
    list_in_manifest(art, bad, content)
    before = snapshot(tmp_path)
    proc = remi("reindex", "--artifacts", str(art), "--root", str(root), "--kind", "flat", "--force")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: ") and "file name" in proc.stderr
    assert snapshot(tmp_path) == before


def test_a_symlink_to_a_file_outside_the_folder_is_refused(artifacts_dir: Path, tmp_path: Path) -> None:
    art = copy_artifacts(artifacts_dir, tmp_path / "art")
    outside = tmp_path / "outside-ids.txt"
    shutil.move(art / ITEM_IDS, outside)
    (art / ITEM_IDS).symlink_to(outside)  # same bytes, so size and checksum still match
    with pytest.raises(ArtifactError, match="symbolic link"):
        load_artifacts(art)
    root = tmp_path / "root"
    with pytest.raises(ArtifactError, match="symbolic link"):
        reindex(art, root)
    assert read_current(root) is None


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", ""], ids=repr)
def test_a_served_version_with_a_bad_file_name_is_refused_at_load(
    artifacts_dir: Path, tmp_path: Path, bad: str
) -> None:
    root = tmp_path / "root"
    version = reindex(artifacts_dir, root, kind="flat").index_version
    folder = version_dir(root, version)
    for target in (folder, folder / VERSION_ARTIFACTS):  # the index manifest, then the model's
        copy = tmp_path / f"copy-{target.name}"
        shutil.copytree(folder, copy)
        inner = copy if target is folder else copy / VERSION_ARTIFACTS
        (inner / MANIFEST).chmod(0o644)
        list_in_manifest(inner, bad, b"x")
        with pytest.raises(ArtifactError, match="file name"):
            load_version(copy)


def test_export_never_lists_a_bad_file_name(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"1")
    assert set(file_entries(tmp_path, ["ok"])) == {"ok"}
    for bad in ("../ok", "/etc/passwd", "", "a/b"):
        with pytest.raises(ArtifactError, match="file name"):
            file_entries(tmp_path, [bad])


def test_a_current_pointer_outside_versions_is_refused(artifacts_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    reindex(artifacts_dir, root, kind="flat")
    (root / "current").write_text("../../elsewhere\n")
    with pytest.raises(ArtifactError, match="version name"):
        load_current(root)


# ---------------------------------------------------------------- B.9 item table content


def ids_of(art: Path) -> list[str]:
    return (art / ITEM_IDS).read_text().splitlines()


def with_ids(art: Path, ids: list[str], tail: str = "\n") -> None:
    rewrite(art, ITEM_IDS, ("\n".join(ids) + tail).encode())


def dup_id(art: Path, tmp: Path) -> None:
    ids = ids_of(art)
    ids[11] = ids[5]
    with_ids(art, ids)


def empty_id(art: Path, tmp: Path) -> None:
    ids = ids_of(art)
    ids[3] = ""
    with_ids(art, ids)


def padded_id(art: Path, tmp: Path) -> None:
    ids = ids_of(art)
    ids[3] = ids[3] + " "
    with_ids(art, ids)


def crlf_ids(art: Path, tmp: Path) -> None:
    rewrite(art, ITEM_IDS, ("\r\n".join(ids_of(art)) + "\r\n").encode())


def extra_id(art: Path, tmp: Path) -> None:
    with_ids(art, [*ids_of(art), "surplus"])


def missing_id(art: Path, tmp: Path) -> None:
    with_ids(art, ids_of(art)[:-1])


def blank_trailing_line(art: Path, tmp: Path) -> None:
    with_ids(art, ids_of(art), tail="\n\n")


def not_utf8(art: Path, tmp: Path) -> None:
    rewrite(art, ITEM_IDS, b"\xff\xfe" + (art / ITEM_IDS).read_bytes()[2:])


def nan_vector(art: Path, tmp: Path) -> None:
    vectors = np.load(art / ITEM_EMBEDDINGS)
    vectors[7, 2] = np.nan
    rewrite(art, ITEM_EMBEDDINGS, npy_bytes(vectors, tmp))


def inf_vector(art: Path, tmp: Path) -> None:
    vectors = np.load(art / ITEM_EMBEDDINGS)
    vectors[0, 0] = np.inf
    rewrite(art, ITEM_EMBEDDINGS, npy_bytes(vectors, tmp))


def fewer_vector_rows(art: Path, tmp: Path) -> None:
    rewrite(art, ITEM_EMBEDDINGS, npy_bytes(np.load(art / ITEM_EMBEDDINGS)[:-1], tmp))


def short_popularity(art: Path, tmp: Path) -> None:
    rewrite(art, ITEM_POPULARITY, npy_bytes(np.load(art / ITEM_POPULARITY)[:-2], tmp))


def nan_popularity(art: Path, tmp: Path) -> None:
    popularity = np.load(art / ITEM_POPULARITY).astype(np.float64)
    popularity[4] = np.nan
    rewrite(art, ITEM_POPULARITY, npy_bytes(popularity, tmp))


def negative_popularity(art: Path, tmp: Path) -> None:
    popularity = np.load(art / ITEM_POPULARITY)
    popularity[4] = -3
    rewrite(art, ITEM_POPULARITY, npy_bytes(popularity, tmp))


CONTENT_DEFECTS = [
    (dup_id, r"duplicate item id '[^']+' on lines 6 and 12"),
    (empty_id, "line 4: empty item id"),
    (padded_id, "line 4: item id .* whitespace"),
    (crlf_ids, "line 1: item id .* control character"),
    (extra_id, r"holds (\d+) item ids, the manifest says (?!\1)\d+"),
    (missing_id, r"holds (\d+) item ids, the manifest says (?!\1)\d+"),
    (blank_trailing_line, r"line \d+: empty item id"),
    (not_utf8, "not UTF-8"),
    (nan_vector, "row 7 .* NaN or infinite"),
    (inf_vector, "row 0 .* NaN or infinite"),
    (fewer_vector_rows, r"shape \(\d+, 16\)"),
    (short_popularity, r"item_popularity.npy: shape \(\d+,\)"),
    (nan_popularity, "item_popularity.npy: .*NaN or infinite"),
    (negative_popularity, "item_popularity.npy: .*negative"),
]


@pytest.mark.parametrize(("damage", "message"), CONTENT_DEFECTS, ids=[d.__name__ for d, _ in CONTENT_DEFECTS])
def test_item_table_defects_are_refused_at_load_with_one_line(
    artifacts_dir: Path, tmp_path: Path, damage, message: str
) -> None:
    art = copy_artifacts(artifacts_dir, tmp_path / "art")
    damage(art, tmp_path)
    with pytest.raises(ArtifactError, match=message) as caught:
        load_artifacts(art)
    assert len(str(caught.value).splitlines()) == 1


def test_duplicate_ids_are_refused_by_the_reindex_cli_and_at_service_load(artifacts_dir: Path, tmp_path: Path) -> None:
    art = copy_artifacts(artifacts_dir, tmp_path / "art")
    dup_id(art, tmp_path)
    proc = remi("reindex", "--artifacts", str(art), "--root", str(tmp_path / "root"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "duplicate item id" in proc.stderr and "lines 6 and 12" in proc.stderr
    assert read_current(tmp_path / "root") is None

    root = tmp_path / "served"
    version = reindex(artifacts_dir, root, kind="flat").index_version
    inner = version_dir(root, version) / VERSION_ARTIFACTS
    for path in inner.iterdir():
        path.chmod(0o644)
    dup_id(inner, tmp_path)
    with pytest.raises(ArtifactError, match="duplicate item id"):
        load_current(root)


# ---------------------------------------------------------------- B.7 immutable versions


def test_a_published_version_survives_in_place_writes_to_its_source_folder(artifacts_dir: Path, tmp_path: Path) -> None:
    art = copy_artifacts(artifacts_dir, tmp_path / "art")
    root = tmp_path / "root"
    version = reindex(art, root, kind="flat").index_version
    before = load_current(root)
    queries = before.artifacts.item_vectors[:5]
    expected = before.index.search(queries, 10)

    published = version_dir(root, version)
    for path in [published / INDEX_FILE, *(published / VERSION_ARTIFACTS).iterdir()]:
        info = path.lstat()
        assert stat.S_ISREG(info.st_mode) and info.st_nlink == 1, path  # a copy, never a hard link
        assert info.st_mode & 0o222 == 0, path  # published read-only

    # `cp new.npy artifacts/item_embeddings.npy` truncates and rewrites the same inode.
    with (art / ITEM_EMBEDDINGS).open("r+b") as fh:
        fh.seek(200)
        fh.write(b"\0" * 256)
    shutil.copyfile(art / ITEM_EMBEDDINGS, art / ITEM_POPULARITY)
    (art / ITEM_IDS).write_text("overwritten\n")

    after = load_current(root)  # what a restarted worker does: full validation, hashes included
    assert after.name == version
    np.testing.assert_array_equal(after.artifacts.item_vectors, before.artifacts.item_vectors)
    assert after.artifacts.item_ids == before.artifacts.item_ids
    got = after.index.search(queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])


# ---------------------------------------------------------------- C. swap leftovers


def test_atomic_swap_leaves_no_old_folder_and_sweeps_a_killed_swaps_leftovers(tmp_path: Path) -> None:
    final = tmp_path / "artifacts"
    stale = tmp_path / ".artifacts.old-deadbeef"  # a swap killed between its two renames
    stale.mkdir()
    (stale / "f").write_text("old")
    other = tmp_path / ".other.old-cafecafe"  # another folder's leftover is not ours to remove
    other.mkdir()
    for round_ in range(2):
        with atomic_folder(final, replace=True) as tmp:
            (tmp / "f").write_text(str(round_))
    assert (final / "f").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.old-cafecafe", "artifacts"]
