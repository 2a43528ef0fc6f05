"""The artifact contract between training, index and service: file names, manifests, validation.

Kept small and free of torch and FAISS so all three components import it. Two kinds of folder:

Model artifacts (written by ``remi export``)::

    manifest.json          ArtifactManifest (written last: its presence means "complete")
    user_tower.onnx        history (B, L) int64 item indices + mask (B, L) bool
                           -> interests (B, K, d) float32, routing (B, K, L) float32
    user_tower.onnx.data   its weights, only when kept outside the model (large catalogues)
    item_embeddings.npy    (I, d) float32; row r is item index r + 1 (index 0 = padding)
    item_ids.txt           raw item id of row r on line r
    item_popularity.npy    (I,) int64 interaction counts per row (cold-start ranking)
    sample_histories.npz   held-out histories (history, mask) for parity, recall and warm-up

Index versions (written by ``remi index build`` / ``remi reindex``)::

    INDEX_ROOT/current                 one line: the version folder name serving now
    INDEX_ROOT/versions/<version>/     index.faiss + manifest.json (IndexManifest)
                                       + artifacts/ (the model artifacts it was built from)

A version folder is self-contained (model + index pair), so flipping ``current`` swaps both
at once and the service can never pair a model with an index built from another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from remi.errors import RemiError

FORMAT_VERSION = 1

MANIFEST = "manifest.json"
MODEL_FILE = "user_tower.onnx"
MODEL_DATA = "user_tower.onnx.data"  # the weights, for models over protobuf's 2 GB (optional)
ITEM_EMBEDDINGS = "item_embeddings.npy"
ITEM_IDS = "item_ids.txt"
ITEM_POPULARITY = "item_popularity.npy"
SAMPLE_HISTORIES = "sample_histories.npz"
ARTIFACT_FILES = (MODEL_FILE, ITEM_EMBEDDINGS, ITEM_IDS, ITEM_POPULARITY, SAMPLE_HISTORIES)

INDEX_FILE = "index.faiss"
CURRENT = "current"
VERSIONS = "versions"
VERSION_ARTIFACTS = "artifacts"

# ONNX tensor names; the service and the index build feed and read these.
INPUT_ITEMS, INPUT_MASK = "item_ids", "mask"
OUTPUT_INTERESTS, OUTPUT_ROUTING = "interests", "routing"

IndexKind = Literal["flat", "hnsw", "ivfpq"]


class ArtifactError(RemiError):
    """An artifact or index folder is missing, incomplete, corrupt or mismatched."""


class FileEntry(BaseModel):
    """Size and SHA-256 of one file, checked on load so truncation or corruption is caught early."""

    model_config = ConfigDict(extra="forbid")
    bytes: int
    sha256: str


class ArtifactManifest(BaseModel):
    """What ``remi export`` produced and from which run."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    format_version: int
    model_version: str  # content hash of the ONNX model, item embeddings and item ids
    backbone: str
    dim: int
    interests: int
    seq_len: int
    n_items: int
    opset: int
    created_at: str
    data_fingerprint: dict[str, Any]
    metrics: dict[str, Any]
    train_config: dict[str, Any]
    parity_max_abs: float
    files: dict[str, FileEntry]


class IndexManifest(BaseModel):
    """One FAISS index over one model's item embeddings."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    format_version: int
    kind: IndexKind
    params: dict[str, Any]
    n_items: int
    dim: int
    model_version: str
    build_seconds: float
    recall_at_50: float | None  # against exact search; None for flat (exact by construction)
    recall_queries: int
    recall_source: str  # "interests" (ONNX on held-out histories) or "items" (item vectors)
    calibration: dict[str, Any] | None = None  # search knob tuned up to the recall target, if any
    faiss_version: str
    created_at: str
    files: dict[str, FileEntry]


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path, names: tuple[str, ...] | list[str]) -> dict[str, FileEntry]:
    return {name: FileEntry(bytes=(folder / name).stat().st_size, sha256=sha256_file(folder / name)) for name in names}


def write_manifest(folder: Path, manifest: BaseModel) -> None:
    """Written last and atomically: a folder without a manifest is by definition incomplete."""
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2))
    os.replace(tmp, folder / MANIFEST)


def _read_manifest(folder: Path, schema: type[BaseModel], what: str) -> Any:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such {what} folder")
    if not path.is_file():
        raise ArtifactError(f"{folder}: incomplete {what} folder (no {MANIFEST}; was the job interrupted?)")
    try:
        raw = json.loads(path.read_text())
        manifest = schema.model_validate(raw)
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ArtifactError(f"{path}: unreadable {what} manifest ({first})") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {manifest.format_version}, this remi reads version {FORMAT_VERSION}"
        )
    return manifest


def verify_files(folder: Path, files: dict[str, FileEntry], check_hash: bool = True) -> None:
    """Every listed file exists with its recorded size (and hash): catches truncation and corruption."""
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {folder / MANIFEST})")
        size = path.stat().st_size
        if size != entry.bytes:
            raise ArtifactError(f"{path}: {size} bytes, the manifest says {entry.bytes} (truncated or replaced)")
        if check_hash and sha256_file(path) != entry.sha256:
            raise ArtifactError(f"{path}: checksum mismatch with {folder / MANIFEST} (corrupt or replaced)")


def read_artifact_manifest(folder: str | Path, check_hash: bool = True) -> ArtifactManifest:
    """Loads and validates a model artifact folder's manifest and files."""
    folder = Path(folder)
    manifest = _read_manifest(folder, ArtifactManifest, "model artifact")
    missing = [name for name in ARTIFACT_FILES if name not in manifest.files]
    if missing:
        raise ArtifactError(f"{folder / MANIFEST}: does not list {', '.join(missing)}")
    verify_files(folder, manifest.files, check_hash)
    return manifest


def read_index_manifest(folder: str | Path, check_hash: bool = True) -> IndexManifest:
    """Loads and validates an index folder's manifest and index file."""
    folder = Path(folder)
    manifest = _read_manifest(folder, IndexManifest, "index")
    if INDEX_FILE not in manifest.files:
        raise ArtifactError(f"{folder / MANIFEST}: does not list {INDEX_FILE}")
    verify_files(folder, manifest.files, check_hash)
    return manifest


def check_pair(model: ArtifactManifest, index: IndexManifest) -> None:
    """Refuses an index that was not built from this model's item embeddings."""
    if index.dim != model.dim:
        raise ArtifactError(
            f"index dimension {index.dim} does not match the model's dimension {model.dim}: "
            "rebuild the index from this model's artifacts"
        )
    if index.n_items != model.n_items:
        raise ArtifactError(f"index holds {index.n_items} items, the model has {model.n_items}: rebuild the index")
    if index.model_version != model.model_version:
        raise ArtifactError(
            f"index was built from model {index.model_version}, not {model.model_version}: rebuild the index"
        )


@contextmanager
def atomic_folder(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yields a hidden sibling folder to fill; renames it to ``final`` only if the block succeeds.

    A crash or an exception leaves ``final`` as it was (absent or the old content) and removes
    the partial folder. With ``replace``, an existing ``final`` is swapped out by two renames.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise ArtifactError(f"{final}: already exists (pass --force to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_current(root: str | Path) -> str | None:
    """The version name ``current`` points to, or None before the first reindex."""
    path = Path(root) / CURRENT
    if not path.is_file():
        return None
    name = path.read_text().strip()
    return name or None


def write_current(root: str | Path, version: str) -> None:
    """Atomic pointer flip: write a new file, fsync, rename over the old one."""
    root = Path(root)
    tmp = root / f".{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
    with tmp.open("w") as fh:
        fh.write(version + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / CURRENT)


def version_dir(root: str | Path, version: str) -> Path:
    return Path(root) / VERSIONS / version
