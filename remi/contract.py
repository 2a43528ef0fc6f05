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
    item_attributes.json   optional (``remi export --item-attributes``): attribute names, kinds,
                           categorical value lists (remi/attributes.py)
    item_attr_categorical.npy  (C, I) int32 codes by FAISS row, -1 = no value (with the .json)
    item_attr_numeric.npy      (N, I) float64 values by FAISS row, NaN = no value (with the .json)

Index versions (written by ``remi index build`` / ``remi reindex``)::

    INDEX_ROOT/current                 one line: the version folder name serving now
    INDEX_ROOT/previous                one line: what ``current`` named before its last flip
                                       (a worker that cannot load ``current`` falls back to it)
    INDEX_ROOT/versions/<version>/     index.faiss + manifest.json (IndexManifest)
                                       + artifacts/ (the model artifacts it was built from)

A version folder is self-contained (model + index pair), so flipping ``current`` swaps both
at once and the service can never pair a model with an index built from another. Its files are
private read-only copies (never hard links), so nothing done to the source folder reaches it.

Every name read from a manifest or from ``current`` is joined to a folder, so each must be one
plain path component (:func:`check_file_name`): a manifest cannot make a reader look, or a
writer copy, outside its own folder.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
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
# Optional item attributes: all three or none, listed and hashed in the manifest like every file.
ITEM_ATTRIBUTES = "item_attributes.json"
ITEM_ATTR_CATEGORICAL = "item_attr_categorical.npy"
ITEM_ATTR_NUMERIC = "item_attr_numeric.npy"
ITEM_ATTRIBUTE_FILES = (ITEM_ATTRIBUTES, ITEM_ATTR_CATEGORICAL, ITEM_ATTR_NUMERIC)

# Training run folder (written by ``remi train``, read by ``remi export``/``evaluate`` and the benchmarks).
RUN_CONFIG = "config.json"  # the TrainConfig plus the data shape (n_items)
RUN_WEIGHTS = "model.pt"  # best valid state dict
RUN_ITEM_IDS = "item_ids.txt"  # raw item id of item index i on line i - 1
RUN_LOG = "metrics.jsonl"  # one line per evaluation during training
RUN_METRICS = "metrics.json"  # final metrics; its presence means "the run finished"

# Arrays inside SAMPLE_HISTORIES.
NPZ_HISTORY, NPZ_MASK = "history", "mask"

# The normalized interactions format every dataset is converted to.
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")

INDEX_FILE = "index.faiss"
CURRENT = "current"
PREVIOUS = "previous"
VERSIONS = "versions"
VERSION_ARTIFACTS = "artifacts"

# ONNX tensor names; the service and the index build feed and read these.
INPUT_ITEMS, INPUT_MASK = "item_ids", "mask"
OUTPUT_INTERESTS, OUTPUT_ROUTING = "interests", "routing"
# (B, K) bool: the interests a user has (docs/remi.md A.13); a model exported without it has all K
OUTPUT_INTEREST_MASK = "interest_mask"

IndexKind = Literal["flat", "hnsw", "ivfpq"]

log = logging.getLogger("remi.contract")


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
    # name -> "categorical" | "numeric" when the folder carries item attributes (not part of model_version)
    item_attributes: dict[str, Literal["categorical", "numeric"]] | None = None


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
    # "served" (users' answers through the engine, index/gate.py), "answers" / "interests" (interest
    # vectors searched in FAISS, merged or not) or "items" (item vectors)
    recall_source: str
    calibration: dict[str, Any] | None = None  # search knob tuned up to the recall target, if any
    faiss_version: str
    created_at: str
    files: dict[str, FileEntry]
    # The served gate (absent from manifests written before it): its queries and settings, and the
    # chosen index's CPU microseconds per user there.
    gate: dict[str, Any] | None = None
    us_per_user: float | None = None
    # `--kind auto`: every candidate tried (chosen first; kind, params, recall, us_per_user, build_s,
    # passed), and how long the search took.
    candidates: list[dict[str, Any]] | None = None
    selection_seconds: float | None = None


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _plain_name_problem(name: object) -> str | None:
    """Why ``name`` is not a single plain path component, or None when it is one."""
    if not isinstance(name, str) or not name:
        return "empty"
    if name in (".", ".."):
        return "a relative reference"
    if "/" in name or "\\" in name:
        return "a path, not a name (no separators allowed)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "contains a control character"
    return None


def check_file_name(name: object, where: str | Path) -> str:
    """A file listed in a manifest must be one plain name inside its folder.

    Refuses separators (so no absolute paths, no ``..`` hops, no sub-folders), ``.``/``..``,
    empty names and control characters (NUL, newline): the name is joined to the folder by
    every reader and by the reindex copy, so anything else could read or overwrite a file
    outside it (a previous version's index, say).
    """
    problem = _plain_name_problem(name)
    if problem:
        raise ArtifactError(f"{where}: file name {name!r} is not a plain file name inside the folder ({problem})")
    return str(name)


def check_version_name(name: object, where: str | Path) -> str:
    """A version name (from ``current``, ``previous`` or --to) is one plain, non-hidden folder name."""
    problem = _plain_name_problem(name)
    if not problem and str(name).startswith("."):
        problem = "hidden names are partial folders"
    if problem:
        raise ArtifactError(f"{where}: version name {name!r} is not a folder name under {VERSIONS}/ ({problem})")
    return str(name)


def file_entries(folder: Path, names: tuple[str, ...] | list[str]) -> dict[str, FileEntry]:
    for name in names:
        check_file_name(name, folder)
    return {name: FileEntry(bytes=(folder / name).stat().st_size, sha256=sha256_file(folder / name)) for name in names}


def write_manifest(folder: Path, manifest: BaseModel) -> None:
    """Written last and atomically: a folder without a manifest is by definition incomplete."""
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(), indent=2))
    os.replace(tmp, folder / MANIFEST)


ManifestT = TypeVar("ManifestT", ArtifactManifest, IndexManifest)


POINTER_MAX_BYTES = 1024  # `current` / `previous`: one version name and a newline
MANIFEST_MAX_BYTES = 4 * 2**20  # a manifest is a few KB (names, hashes, metrics, the training config)


def read_small_file(path: Path, limit: int) -> bytes | None:
    """The bytes of a small regular file, or None when it does not exist.

    Refuses (ArtifactError) a symbolic link (``O_NOFOLLOW``: no race between a check and the
    open), anything but a regular file (a FIFO would block the reader; opened non-blocking) and
    a file over ``limit`` bytes, without reading it: a pointer or a manifest linked to a 50 MB
    file, or to ``/etc/passwd``, must not end up in memory, in a log or in an HTTP answer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ArtifactError(f"{path}: is a symbolic link (refused: the index root holds no links)") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{path}: not a regular file (refused)")
        if info.st_size > limit:
            raise ArtifactError(f"{path}: {info.st_size} bytes, more than the {limit} such a file can hold (refused)")
        data = fh.read(limit + 1)
    if len(data) > limit:  # grew after the check
        raise ArtifactError(f"{path}: more than the {limit} bytes such a file can hold (refused)")
    return data


def check_real_folder(folder: Path, what: str) -> Path:
    """``folder`` is a directory itself, not a symbolic link to one (versions and their parts).

    A linked version would serve whatever the link points to, files that reindex never copied,
    checked or sealed, and that anyone who can write there can change under a worker.
    """
    try:
        info = folder.lstat()
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: no such {what} folder") from None
    if stat.S_ISLNK(info.st_mode):
        raise ArtifactError(f"{folder}: is a symbolic link; a {what} folder must be a real folder (refused)")
    if not stat.S_ISDIR(info.st_mode):
        raise ArtifactError(f"{folder}: not a {what} folder")
    return folder


def _read_manifest(folder: Path, schema: type[ManifestT], what: str) -> ManifestT:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such {what} folder")
    data = read_small_file(path, MANIFEST_MAX_BYTES)
    if data is None:
        raise ArtifactError(f"{folder}: incomplete {what} folder (no {MANIFEST}; was the job interrupted?)")
    try:
        raw = json.loads(data.decode("utf-8"))
        manifest = schema.model_validate(raw)
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise ArtifactError(f"{path}: unreadable {what} manifest ({first})") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {manifest.format_version}, this remi reads version {FORMAT_VERSION}"
        )
    for name in manifest.files:
        check_file_name(name, path)
    return manifest


def verify_files(folder: Path, files: dict[str, FileEntry], check_hash: bool = True) -> None:
    """Every listed file exists with its recorded size (and hash): catches truncation and corruption.

    A listed file must be a regular file in the folder itself, not a symbolic link: a link could
    point anywhere, and the version copy would follow it.
    """
    for name, entry in files.items():
        path = folder / check_file_name(name, folder / MANIFEST)
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing (listed in {folder / MANIFEST})") from None
        if stat.S_ISLNK(info.st_mode):
            raise ArtifactError(f"{path}: is a symbolic link; listed files must be regular files inside the folder")
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{path}: not a regular file (listed in {folder / MANIFEST})")
        size = info.st_size
        if size != entry.bytes:
            raise ArtifactError(f"{path}: {size} bytes, the manifest says {entry.bytes} (truncated or replaced)")
        if check_hash and sha256_file(path) != entry.sha256:
            raise ArtifactError(f"{path}: checksum mismatch with {folder / MANIFEST} (corrupt or replaced)")


def read_artifact_manifest(folder: str | Path, check_hash: bool = True) -> ArtifactManifest:
    """Loads and validates a model artifact folder's manifest and files."""
    folder = Path(folder)
    manifest = _read_manifest(folder, ArtifactManifest, "model artifact")
    missing = [name for name in ARTIFACT_FILES if name not in manifest.files]
    attribute_files = [name for name in ITEM_ATTRIBUTE_FILES if name in manifest.files]
    if attribute_files or manifest.item_attributes is not None:
        missing += [name for name in ITEM_ATTRIBUTE_FILES if name not in manifest.files]
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


def item_id_problem(raw: str) -> str | None:
    """Why one raw item id cannot be served, or None. Ids are matched exactly against request
    ids, so an empty id, surrounding whitespace or a control character (a stray ``\\r`` of a
    CRLF file) would make an item that no client can name, or two that look the same."""
    if not raw:
        return "empty item id"
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        return f"item id {raw!r} contains a control character"
    if raw != raw.strip():
        return f"item id {raw!r} has leading or trailing whitespace"
    return None


def check_item_ids(ids: list[str], where: str | Path) -> None:
    """Every id clean (see :func:`item_id_problem`) and unique; errors name the line(s), 1-based."""
    first_line: dict[str, int] = {}
    for line, raw in enumerate(ids, start=1):
        problem = item_id_problem(raw)
        if problem:
            raise ArtifactError(f"{where}: line {line}: {problem}")
        seen = first_line.setdefault(raw, line)
        if seen != line:
            raise ArtifactError(
                f"{where}: duplicate item id {raw!r} on lines {seen} and {line} (an item must have one row)"
            )


def parse_item_ids(data: bytes, n_items: int, where: str | Path) -> list[str]:
    """``item_ids.txt`` -> exactly ``n_items`` clean, unique ids (one per line, final newline optional)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{where}: not UTF-8 (byte {exc.start})") from None
    ids = text.split("\n")
    if text.endswith("\n"):
        ids.pop()  # the final newline ends the last line, it does not start an empty one
    check_item_ids(ids, where)
    if len(ids) != n_items:
        raise ArtifactError(f"{where}: holds {len(ids)} item ids, the manifest says {n_items}")
    return ids


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
    the partial folder. With ``replace``, an existing ``final`` is swapped out by two renames and
    the swapped-out folder is removed. Leftovers of an earlier writer of ``final`` that was killed
    (``.<name>.tmp-*``, ``.<name>.old-*``) are removed first: one writer per folder at a time.
    """
    final = Path(final)
    if final.exists() and not replace:
        raise ArtifactError(f"{final}: already exists (pass --force to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(final.parent, final.name)
    tmp = temp_sibling(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = temp_sibling(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            _remove(tmp)


def _remove(path: Path) -> None:
    """Removes a leftover folder or file; a failure is logged (with the path), never silently kept."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove a leftover", extra={"path": str(path), "error": str(exc)})


def sweep_leftovers(folder: Path, name: str | None = None) -> list[str]:
    """Removes what killed writers left in ``folder`` (see :func:`leftover_siblings`); returns the names.

    Safe whenever no other writer of those names runs (every caller holds that: a job lock, or one
    writer per output folder): a ``.tmp-*`` sibling was never renamed into place and an ``.old-*``
    one was renamed away from its final name, so no reader opens either.
    """
    removed = leftover_siblings(folder, name)
    for path in removed:
        _remove(path)
    return [path.name for path in removed]


def _read_pointer(path: Path) -> str | None:
    """A pointer file's version name (size-capped, never through a link: :func:`read_small_file`)."""
    data = read_small_file(path, POINTER_MAX_BYTES)
    if data is None:
        return None
    name = data.decode("utf-8", errors="replace").strip()
    return name or None


def read_current(root: str | Path) -> str | None:
    """The version name ``current`` points to, or None before the first reindex."""
    return _read_pointer(Path(root) / CURRENT)


def read_previous(root: str | Path) -> str | None:
    """The version ``current`` named before its last flip (the fallback a worker prefers)."""
    return _read_pointer(Path(root) / PREVIOUS)


def _pointer_temp(root: Path, file: str, version: str) -> Path:
    """A pointer's new content in a hidden sibling, fsynced; removed again if writing fails (a full disk)."""
    tmp = temp_sibling(root / file, "tmp")
    try:
        with tmp.open("w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_pointer(root: Path, file: str, version: str) -> None:
    os.replace(_pointer_temp(root, file, version), root / file)


def write_current(root: str | Path, version: str) -> None:
    """Atomic pointer flip: write a new file, fsync, rename over the old one.

    The old value goes to ``previous``: it is the version the running workers serve until they
    load the new one, so a worker that (re)starts and cannot load the new one falls back to the
    same version as its siblings. Both new files are written before either is renamed, so a
    write that fails (a full disk) changes neither pointer.
    """
    root = Path(root)
    check_version_name(version, root / CURRENT)
    old = read_current(root)
    pending: list[tuple[Path, str]] = []
    try:
        if old and old != version:
            pending.append((_pointer_temp(root, PREVIOUS, old), PREVIOUS))
        pending.append((_pointer_temp(root, CURRENT, version), CURRENT))
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, file in pending:
        os.replace(tmp, root / file)


def version_dir(root: str | Path, version: str) -> Path:
    """``root/versions/<version>``; the name is checked, since it comes from a file or a flag."""
    return Path(root) / VERSIONS / check_version_name(version, Path(root) / CURRENT)


def list_versions(root: str | Path) -> list[str]:
    """Complete versions (real folders with a manifest), oldest first (names start with a UTC timestamp)."""
    folder = Path(root) / VERSIONS
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and _plain_name_problem(p.name) is None
        and not p.is_symlink()  # a linked folder is never a version (check_real_folder)
        and (p / MANIFEST).is_file()
    )


def model_version(folder: Path, files: dict[str, FileEntry]) -> str:
    """Content hash naming a model: its ONNX graph (and external weights, if any), item vectors, item ids.

    The one recipe: an index records it and the service refuses a pair whose hashes differ, so any
    second copy of this function that hashes other files would make valid pairs look mismatched.
    ``files`` are the entries of ``folder`` (:func:`file_entries`); weights stored beside the model
    but not listed would be left out of the hash, so they are refused.
    """
    if MODEL_DATA not in files and (Path(folder) / MODEL_DATA).exists():
        raise ArtifactError(f"{folder / MODEL_DATA}: the model's external weights are not among the hashed files")
    digest = hashlib.sha256()
    names = [MODEL_FILE, *([MODEL_DATA] if MODEL_DATA in files else []), ITEM_EMBEDDINGS, ITEM_IDS]
    for name in names:
        digest.update(files[name].sha256.encode())
    return digest.hexdigest()[:16]


def temp_sibling(final: Path, kind: Literal["tmp", "old"] = "tmp") -> Path:
    """A hidden sibling of ``final`` (same disk, so a rename is atomic) that :func:`leftover_siblings` finds.

    ``tmp``: being filled, renamed to ``final`` when complete. ``old``: a previous ``final`` swapped
    out, removed right after the swap.
    """
    return Path(final).parent / f".{Path(final).name}.{kind}-{uuid.uuid4().hex[:8]}"


def leftover_siblings(folder: Path, name: str | None = None) -> list[Path]:
    """Temporaries (``.<name>.tmp-*``) and swapped-out copies (``.<name>.old-*``) in ``folder``.

    Of one final name, or of any name when ``name`` is None. Present only when a writer was killed
    (or is running): every writer removes its own.
    """
    stem = "*" if name is None else glob.escape(name)
    return sorted(p for kind in ("tmp", "old") for p in Path(folder).glob(f".{stem}.{kind}-*"))


class ItemVocabulary:
    """Raw item id <-> item index <-> FAISS row: the one place that knows about the padding offset.

    Item index 0 is the padding of a history (the model's embedding row 0); real items are indices
    1..n_items. Exported item vectors, item ids and popularity drop the padding, so FAISS row r and
    line r of ``item_ids.txt`` hold item index r + 1. Every conversion between the three goes
    through this class, so no other module adds or subtracts 1.

    Example::

        vocab = ItemVocabulary(["a", "b"])       # item indices 1, 2; FAISS rows 0, 1
        vocab.index_of("b")                     # 2
        vocab.raw_ids_of([2, 1])                # ["b", "a"]
        ItemVocabulary.rows_to_indices(rows)    # FAISS search result -> item indices (-1 stays -1)
    """

    PADDING = 0

    def __init__(self, raw_ids: Sequence[str]) -> None:
        self.raw_ids = list(raw_ids)
        # Built here, not on first use: a serving vocabulary is read from many threads at once.
        self._index = {raw: row + 1 for row, raw in enumerate(self.raw_ids)}

    def __len__(self) -> int:
        return len(self.raw_ids)

    def __contains__(self, raw_id: object) -> bool:
        return raw_id in self._index

    @property
    def n_items(self) -> int:
        return len(self.raw_ids)

    @property
    def table_size(self) -> int:
        """Rows of an embedding table indexed by item index (padding row included)."""
        return self.table_size_for(self.n_items)

    @staticmethod
    def table_size_for(n_items: int) -> int:
        """Rows of an embedding table over ``n_items`` items, padding row included (when only the count is known)."""
        return n_items + 1

    @staticmethod
    def first_index() -> int:
        """The smallest real item index (the one after the padding)."""
        return ItemVocabulary.PADDING + 1

    @staticmethod
    def index_range(n_items: int) -> range:
        """Every real item index of a catalogue of ``n_items``: for sampling without a vocabulary."""
        return range(ItemVocabulary.first_index(), n_items + 1)

    def index_stop(self) -> int:
        """One past the largest item index (for ``range``/``randint`` over real items)."""
        return self.index_range(self.n_items).stop

    @staticmethod
    def rows_to_indices(rows: np.ndarray) -> np.ndarray:
        """FAISS rows (any shape) -> item indices (int64); a missing result (row -1) stays -1."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows < 0, -1, rows + 1)

    @staticmethod
    def indices_to_rows(indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Item indices (any shape) -> FAISS rows (int64); padding (0) becomes -1 (no row)."""
        return np.asarray(indices, dtype=np.int64) - 1

    @staticmethod
    def row_of(index: int | np.integer[Any]) -> int:
        """The FAISS row of one item index (1..n_items)."""
        return int(index) - 1

    @staticmethod
    def results_to_rows(indices: np.ndarray) -> np.ndarray:
        """Item indices of search results (any shape, -1 = no result) -> FAISS rows, -1 staying -1.

        The inverse of :meth:`rows_to_indices` (``indices_to_rows`` would make -1 row -2)."""
        indices = np.asarray(indices, dtype=np.int64)
        return np.where(indices >= 0, indices - 1, -1)

    @staticmethod
    def drop_padding(table: np.ndarray) -> np.ndarray:
        """A table indexed by item index (row 0 = padding) -> one indexed by FAISS row."""
        return table[1:]

    @staticmethod
    def add_padding(table: np.ndarray) -> np.ndarray:
        """A table indexed by FAISS row -> one indexed by item index (zero row 0 = padding)."""
        return np.concatenate([np.zeros((1, *table.shape[1:]), dtype=table.dtype), table])

    def raw_id(self, index: int | np.integer[Any]) -> str:
        """Raw id of one item index (1..n_items)."""
        return self.raw_ids[self.row_of(index)]

    def raw_ids_of(self, indices: Iterable[int | np.integer[Any]] | np.ndarray) -> list[str]:
        """Raw ids of item indices (1..n_items), in order."""
        return [self.raw_ids[int(i) - 1] for i in indices]  # the offset inline: per item, on every answer

    def index_of(self, raw_id: str) -> int | None:
        """Item index of a raw id, or None for an item the model does not know."""
        return self._index.get(raw_id)

    def indices_of(self, raw_ids: Iterable[str]) -> tuple[np.ndarray, int]:
        """Item indices (int64) of the known ids in order, and how many ids were unknown (skipped)."""
        known, unknown = [], 0
        for raw in raw_ids:
            index = self.index_of(raw)
            if index is None:
                unknown += 1
            else:
                known.append(index)
        return np.asarray(known, dtype=np.int64), unknown
