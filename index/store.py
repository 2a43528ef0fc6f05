"""The read side of an index root: which version serves, and loading one as a checked pair.

What the service imports (and nothing that writes): ``current`` and ``previous`` name folders
under ``versions/``, and a version folder loads as one unit, its model artifacts and its FAISS
index, hash-checked and refused unless they were built from each other (the artifact contract
in ``remi/contract.py``; operations in docs/operations.md). Writing versions is :mod:`index.publish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss

from index.search import apply_search_params
from remi.artifacts import Artifacts, load_artifacts
from remi.contract import (
    INDEX_FILE,
    VERSION_ARTIFACTS,
    ArtifactError,
    IndexManifest,
    check_pair,
    list_versions,
    read_current,
    read_index_manifest,
    read_previous,
    version_dir,
)

__all__ = [
    "LoadedVersion",
    "list_versions",
    "load_current",
    "load_faiss",
    "load_version",
    "read_current",
    "read_previous",
    "version_dir",
]


@dataclass
class LoadedVersion:
    """A model + index pair ready to serve: validated, dimension-checked, one unit."""

    name: str
    folder: Path
    artifacts: Artifacts
    manifest: IndexManifest
    index: faiss.Index


def load_faiss(folder: str | Path, check_hash: bool = True) -> tuple[IndexManifest, faiss.Index]:
    """Reads an index folder; a missing, truncated or corrupt file is an ArtifactError, not a crash."""
    folder = Path(folder)
    manifest = read_index_manifest(folder, check_hash=check_hash)
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError as exc:
        raise ArtifactError(
            f"{folder / INDEX_FILE}: unreadable FAISS index ({str(exc).splitlines()[0][:200]})"
        ) from exc
    if index.d != manifest.dim or index.ntotal != manifest.n_items:
        raise ArtifactError(
            f"{folder / INDEX_FILE}: holds {index.ntotal} x {index.d}, "
            f"manifest says {manifest.n_items} x {manifest.dim}"
        )
    apply_search_params(index, manifest.kind, manifest.params)
    return manifest, index


def load_version(folder: str | Path, threads: int = 1) -> LoadedVersion:
    """Loads a version folder (index + the artifacts it was built from) and checks they pair."""
    folder = Path(folder)
    arts = load_artifacts(folder / VERSION_ARTIFACTS, threads=threads)
    manifest, index = load_faiss(folder)
    check_pair(arts.manifest, manifest)
    return LoadedVersion(folder.name, folder, arts, manifest, index)


def load_current(root: str | Path, threads: int = 1) -> LoadedVersion:
    """The version ``current`` points to; ArtifactError when there is none or it is broken."""
    name = read_current(root)
    if name is None:
        raise ArtifactError(f"{root}: no current index version (run `remi reindex` first)")
    return load_version(version_dir(root, name), threads=threads)
