"""What the index root's readers trust (docs/operations.md#reindex-cadence-and-rollback): pointers
and manifests are read with a size cap and never through a symbolic link, and a version folder that
is a link is never a version.

Everything inside an index root is written by `remi reindex`, which writes none of these: a link,
a FIFO or a 50 MB `current` is damage or an attack, and is refused by name, quickly.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from index.publish import reindex, rollback
from remi.contract import (
    CURRENT,
    MANIFEST,
    PREVIOUS,
    VERSION_ARTIFACTS,
    ArtifactError,
    list_versions,
    read_current,
    read_index_manifest,
    read_previous,
    version_dir,
    write_current,
)
from remi.errors import RemiError
from retrieval.store import load_current, load_version
from tests.service.tiny_model import TinyModel, write_tiny_artifacts

LINKED = "99990101T000000000000Z-linked-flat"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_tiny_artifacts(tmp_path_factory.mktemp("tiny") / "artifacts")


@pytest.fixture
def root(tiny: TinyModel, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    reindex(tiny.artifacts, root, kind="flat")
    return root


@pytest.mark.parametrize("pointer", [CURRENT, PREVIOUS])
def test_a_pointer_that_is_a_symlink_is_refused(root: Path, tmp_path: Path, pointer: str) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(read_current(root) or "")
    (root / pointer).unlink(missing_ok=True)
    (root / pointer).symlink_to(target)
    with pytest.raises(ArtifactError, match="symbolic link"):
        (read_current if pointer == CURRENT else read_previous)(root)


@pytest.mark.parametrize("pointer", [CURRENT, PREVIOUS])
def test_a_pointer_file_over_the_size_cap_is_refused_without_reading_it_all(root: Path, pointer: str) -> None:
    (root / pointer).unlink(missing_ok=True)
    (root / pointer).write_text("x" * (50 * 2**20))
    with pytest.raises(ArtifactError) as caught:
        (read_current if pointer == CURRENT else read_previous)(root)
    assert len(str(caught.value)) < 500 and "bytes" in str(caught.value)


def test_a_current_that_is_a_fifo_is_refused_not_waited_on(root: Path) -> None:
    (root / CURRENT).unlink()
    os.mkfifo(root / CURRENT)
    t0 = time.monotonic()
    with pytest.raises(ArtifactError, match="not a regular file"):
        read_current(root)
    assert time.monotonic() - t0 < 10


def test_a_manifest_that_is_a_symlink_or_oversized_is_refused(root: Path, tmp_path: Path) -> None:
    folder = version_dir(root, read_current(root) or "")
    copy = tmp_path / "copy"
    shutil.copy(folder / MANIFEST, copy)
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).symlink_to(copy)
    with pytest.raises(ArtifactError, match="symbolic link"):
        read_index_manifest(folder)
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).write_bytes(b" " * (64 * 2**20))
    with pytest.raises(ArtifactError, match="bytes"):
        read_index_manifest(folder)


def linked_version(root: Path, tmp_path: Path) -> Path:
    """A complete version copied outside the root and linked in under a newer name."""
    elsewhere = tmp_path / "elsewhere-version"
    shutil.copytree(version_dir(root, read_current(root) or ""), elsewhere)
    version_dir(root, LINKED).symlink_to(elsewhere, target_is_directory=True)
    return elsewhere


def test_a_version_folder_that_is_a_symlink_is_not_listed_loaded_or_rolled_back_to(root: Path, tmp_path: Path) -> None:
    linked_version(root, tmp_path)
    assert LINKED not in list_versions(root)
    with pytest.raises(ArtifactError, match="symbolic link"):
        load_version(version_dir(root, LINKED))
    with pytest.raises(RemiError, match="no complete version"):
        rollback(root, LINKED)
    write_current(root, LINKED)
    with pytest.raises(ArtifactError, match="symbolic link"):
        load_current(root)


def test_an_artifacts_folder_inside_a_version_that_is_a_symlink_is_refused(root: Path, tmp_path: Path) -> None:
    folder = version_dir(root, read_current(root) or "")
    moved = tmp_path / "moved-artifacts"
    shutil.move(folder / VERSION_ARTIFACTS, moved)
    (folder / VERSION_ARTIFACTS).symlink_to(moved, target_is_directory=True)
    with pytest.raises(ArtifactError, match="symbolic link"):
        load_version(folder)


def test_reindex_does_not_take_a_symlinked_current_version_for_its_own(
    tiny: TinyModel, root: Path, tmp_path: Path
) -> None:
    linked_version(root, tmp_path)
    write_current(root, LINKED)
    result = reindex(tiny.artifacts, root, kind="flat")  # same artifacts and settings as the linked copy
    assert result.built and result.index_version != LINKED  # not "up to date" through a link
    assert read_current(root) == result.index_version and load_current(root).name == result.index_version


def test_a_worker_with_a_broken_current_and_a_symlinked_previous_still_falls_back(
    tiny: TinyModel, root: Path, tmp_path: Path
) -> None:
    import asyncio

    from service.config import ServiceSettings
    from service.versions import Versions

    good = read_current(root) or ""
    target = tmp_path / "previous-target"
    target.write_text(good)
    (root / PREVIOUS).unlink(missing_ok=True)
    (root / PREVIOUS).symlink_to(target)
    write_current_raw = root / CURRENT
    write_current_raw.write_text("99990101T000000000000Z-missing-flat\n")
    versions = Versions(ServiceSettings(index_root=root, poll_seconds=0))
    result = asyncio.run(versions.refresh())
    assert versions.serving == good and result["version"] == good
    assert str(tmp_path) not in (versions.error or "")
