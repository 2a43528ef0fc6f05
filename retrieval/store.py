"""The read side of an index root: which version serves, and loading one as a checked pair.

What the service imports (and nothing that writes): ``current`` and ``previous`` name folders
under ``versions/``, and a version folder loads as one unit, its model artifacts and its FAISS
index, hash-checked and refused unless they were built from each other (the artifact contract
in ``remi/contract.py``; operations in docs/operations.md). Writing versions is :mod:`index.publish`.

Versions load as private copies by default: nothing done to a version's files after the load
(an in-place edit, a truncation by root, who ignores the read-only seal) reaches a serving worker.
Memory-mapped (``mmap=True``, ``REMI_MMAP=true``: :data:`MMAP_FLAGS`, ``np.load(mmap_mode="r")``,
the ONNX external weights) the index, the item vectors and popularity are read-only views of the
version's files, so every worker process that serves the same version shares one copy of them in
the page cache instead of holding its own (docs/operations.md, "Memory per worker"); but then a
truncated file kills every worker that maps it (SIGBUS): for index roots nothing but the reindex
job can write to. A version folder (and its ``artifacts/``) must be a real folder, not a link.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss

from remi.artifacts import Artifacts, load_artifacts
from remi.contract import (
    INDEX_FILE,
    VERSION_ARTIFACTS,
    ArtifactError,
    IndexManifest,
    check_pair,
    check_real_folder,
    list_versions,
    read_current,
    read_index_manifest,
    read_previous,
    version_dir,
)
from retrieval.search import apply_search_params

__all__ = [
    "MMAP_FLAGS",
    "LoadedVersion",
    "list_versions",
    "load_current",
    "load_faiss",
    "load_version",
    "read_current",
    "read_previous",
    "version_dir",
]


# FAISS (1.15 here; the zero-copy reader came in 2025) maps the whole file and uses its arrays in place, for
# every kind we build: the flat codes, HNSW's graph and storage, IVF-PQ's lists and the refine
# vectors (measured: no anonymous memory added by the load, results identical to a copy). The
# index is then read-only, which a served index is anyway (search parameters are plain fields).
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC


@dataclass
class LoadedVersion:
    """A model + index pair ready to serve: validated, dimension-checked, one unit."""

    name: str
    folder: Path
    artifacts: Artifacts
    manifest: IndexManifest
    index: faiss.Index


def load_faiss(folder: str | Path, check_hash: bool = True, mmap: bool = False) -> tuple[IndexManifest, faiss.Index]:
    """Reads an index folder; a missing, truncated or corrupt file is an ArtifactError, not a crash.

    With ``mmap`` the index is a read-only view of the file (shared by every process that maps
    it) instead of a private copy; the size and hash check still run first (the hash reads the
    file once, which also brings it into the page cache the mapping then uses).
    """
    folder = Path(folder)
    manifest = read_index_manifest(folder, check_hash=check_hash)
    try:
        index = faiss.read_index(str(folder / INDEX_FILE), MMAP_FLAGS if mmap else 0)
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


def load_version(folder: str | Path, threads: int = 1, mmap: bool = False) -> LoadedVersion:
    """Loads a version folder (index + the artifacts it was built from) and checks they pair.

    The service's load: private copies unless ``mmap`` (see the module docstring), item ids packed.
    """
    folder = check_real_folder(Path(folder), "version")
    arts = load_artifacts(
        check_real_folder(folder / VERSION_ARTIFACTS, "version artifacts"), threads=threads, mmap=mmap, pack_ids=True
    )
    manifest, index = load_faiss(folder, mmap=mmap)
    check_pair(arts.manifest, manifest)
    return LoadedVersion(folder.name, folder, arts, manifest, index)


def load_current(root: str | Path, threads: int = 1, mmap: bool = False) -> LoadedVersion:
    """The version ``current`` points to; ArtifactError when there is none or it is broken."""
    name = read_current(root)
    if name is None:
        raise ArtifactError(f"{root}: no current index version (run `remi reindex` first)")
    return load_version(version_dir(root, name), threads=threads, mmap=mmap)
