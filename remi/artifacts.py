"""Loading exported model artifacts for inference: the ONNX user tower, item vectors and ids.

Used by the index build (recall on real interest vectors) and the service; needs onnxruntime
and numpy only, never torch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from remi.attributes import ItemAttributes, load_attributes
from remi.contract import (
    INPUT_ITEMS,
    INPUT_MASK,
    ITEM_EMBEDDINGS,
    ITEM_IDS,
    ITEM_POPULARITY,
    MODEL_DATA,
    MODEL_FILE,
    NPZ_HISTORY,
    NPZ_MASK,
    OUTPUT_INTEREST_MASK,
    OUTPUT_INTERESTS,
    OUTPUT_ROUTING,
    SAMPLE_HISTORIES,
    ArtifactError,
    ArtifactManifest,
    ItemVocabulary,
    parse_item_ids,
    read_artifact_manifest,
)
from remi.packed_ids import PackedVocabulary


def pad_histories(histories: Sequence[Sequence[int] | np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Item-index histories (oldest first) -> the model's input: the last ``seq_len`` items,
    left-aligned and right-padded with 0, and the matching mask (the training convention)."""
    ids = np.zeros((len(histories), seq_len), dtype=np.int64)
    mask = np.zeros((len(histories), seq_len), dtype=bool)
    for row, hist in enumerate(histories):
        tail = np.asarray(hist, dtype=np.int64)[-seq_len:]
        ids[row, : len(tail)] = tail
        mask[row, : len(tail)] = True
    return ids, mask


def quiet_onnxruntime() -> None:
    """Turns onnxruntime's telemetry off before a session is created.

    onnxruntime's default build tries to record telemetry events at every session start (on
    Windows through ETW; elsewhere a no-op that still costs a call); a recommender serving private
    histories should not emit any, so every session this project creates goes through here first.
    Idempotent and cheap; older onnxruntime versions without the switch are left as they are.
    """
    import onnxruntime as ort

    disable = getattr(ort, "disable_telemetry_events", None)
    if disable is not None:
        disable()


class UserTower:
    """The exported user tower on onnxruntime: padded histories -> K interests and routing."""

    def __init__(self, path: str | Path, threads: int = 1, private: bool = False):
        """Loads the model at ``path``; with ``private``, from bytes read here instead of from the files.

        From a path, onnxruntime maps an external-data file (``user_tower.onnx.data``) and uses
        its weights in place: shared between processes, but a truncation of the file under a
        running worker kills it with SIGBUS. ``private`` reads the graph and the weights into
        memory, hands them over and drops its buffers (onnxruntime copies the initializers;
        measured: one copy is left), so nothing done to the files afterwards reaches the session.
        """
        import onnxruntime as ort

        quiet_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        path = Path(path)
        try:
            if private:
                weights = path.with_name(MODEL_DATA)
                if weights.is_file():
                    data = weights.read_bytes()
                    options.add_external_initializers_from_files_in_memory([MODEL_DATA], [data], [len(data)])
                self.session = ort.InferenceSession(path.read_bytes(), options, providers=["CPUExecutionProvider"])
            else:
                self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ArtifactError(f"{path}: cannot load the ONNX model ({str(exc).splitlines()[0][:200]})") from exc
        names = {i.name for i in self.session.get_inputs()}
        if names != {INPUT_ITEMS, INPUT_MASK}:
            raise ArtifactError(f"{path}: inputs {sorted(names)}, expected {INPUT_ITEMS} and {INPUT_MASK}")
        self.seq_len = int(self.session.get_inputs()[0].shape[1])

    def run(self, item_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, L) int64, (B, L) bool -> interests (B, K, d) float32, routing (B, K, L) float32."""
        interests, routing = self.session.run(
            [OUTPUT_INTERESTS, OUTPUT_ROUTING], {INPUT_ITEMS: item_ids, INPUT_MASK: mask}
        )
        return interests, routing

    @functools.cached_property
    def has_interest_mask(self) -> bool:
        """Whether the model says per user which interests it has (exported since adaptive interests)."""
        return OUTPUT_INTEREST_MASK in {o.name for o in self.session.get_outputs()}

    def run_with_mask(self, item_ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`run`, plus the (B, K) bool interest mask (all True for a model exported without one)."""
        if not self.has_interest_mask:
            interests, routing = self.run(item_ids, mask)
            return interests, routing, np.ones(interests.shape[:2], dtype=bool)
        interests, routing, active = self.session.run(
            [OUTPUT_INTERESTS, OUTPUT_ROUTING, OUTPUT_INTEREST_MASK], {INPUT_ITEMS: item_ids, INPUT_MASK: mask}
        )
        return interests, routing, active.astype(bool, copy=False)


@dataclass
class Artifacts:
    """Everything inference needs from one exported model, loaded and validated."""

    folder: Path
    manifest: ArtifactManifest
    tower: UserTower
    item_vectors: np.ndarray  # (I, d) float32, by FAISS row
    vocabulary: ItemVocabulary  # raw id <-> item index <-> FAISS row
    popularity: np.ndarray  # (I,) int64, by FAISS row
    sample_history: np.ndarray  # (S, L) int64 item indices
    sample_mask: np.ndarray  # (S, L) bool
    attributes: ItemAttributes | None = None  # item attributes for request filters, when exported with them

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def item_ids(self) -> list[str]:
        """Raw id of every FAISS row (the lines of ``item_ids.txt``)."""
        return self.vocabulary.raw_ids


def _first_bad_row(array: np.ndarray) -> int | None:
    bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def check_item_table(folder: Path, manifest: ArtifactManifest, vectors: np.ndarray, popularity: np.ndarray) -> None:
    """The arrays agree with the manifest and hold usable numbers.

    A NaN or infinite vector makes every inner product with it NaN (FAISS then ranks it
    arbitrarily), and a NaN or negative count breaks the cold-start order: refused at export,
    reindex and service load alike rather than served.
    """
    n, dim = manifest.n_items, manifest.dim
    if vectors.shape != (n, dim) or vectors.dtype != np.float32:
        raise ArtifactError(
            f"{folder / ITEM_EMBEDDINGS}: shape {vectors.shape} {vectors.dtype}, manifest says ({n}, {dim}) float32"
        )
    row = _first_bad_row(vectors)
    if row is not None:
        index = int(ItemVocabulary.rows_to_indices(np.asarray([row]))[0])
        raise ArtifactError(f"{folder / ITEM_EMBEDDINGS}: row {row} (item index {index}) holds NaN or infinite values")
    if popularity.shape != (n,):
        raise ArtifactError(f"{folder / ITEM_POPULARITY}: shape {popularity.shape}, manifest says ({n},)")
    if popularity.dtype.kind not in "iuf":
        raise ArtifactError(f"{folder / ITEM_POPULARITY}: dtype {popularity.dtype}, expected interaction counts")
    row = _first_bad_row(popularity)
    if row is not None:
        raise ArtifactError(f"{folder / ITEM_POPULARITY}: row {row} holds a NaN or infinite count")
    if n and popularity.min() < 0:
        raise ArtifactError(f"{folder / ITEM_POPULARITY}: row {int(np.argmin(popularity))} holds a negative count")


def check_sample_histories(folder: Path, manifest: ArtifactManifest, history: np.ndarray, mask: np.ndarray) -> None:
    """Held-out histories feed the ONNX tower at build and warm-up: shapes and item indices must fit."""
    where = folder / SAMPLE_HISTORIES
    if history.ndim != 2 or history.shape[1:] != (manifest.seq_len,) or mask.shape != history.shape:
        raise ArtifactError(
            f"{where}: history {history.shape} and mask {mask.shape}, expected (S, {manifest.seq_len}) each"
        )
    if history.dtype.kind not in "iu" or mask.dtype != np.bool_:
        raise ArtifactError(f"{where}: history {history.dtype} and mask {mask.dtype}, expected int64 and bool")
    if history.size and (history.min() < 0 or history.max() > manifest.n_items):
        raise ArtifactError(f"{where}: item indices outside 0..{manifest.n_items}")


def load_artifacts(
    folder: str | Path, threads: int = 1, check_hash: bool = True, mmap: bool = False, pack_ids: bool | None = None
) -> Artifacts:
    """Validates the folder against its manifest, then loads every file; errors are ArtifactError.

    With ``mmap`` the item vectors, popularity and item attribute arrays are read-only views of their files
    (``np.load(mmap_mode="r")``), and so are the ONNX external weights, shared through the page cache by
    every process that maps them: for folders nothing writes to only, since a rewrite of a mapped file
    would change the arrays behind the checks and a truncation kills the process (SIGBUS). Without it
    every array and the ONNX weights are private copies: the files can change after the load.
    With ``pack_ids`` (default: with ``mmap``) a large catalogue's ids are packed too
    (:class:`~remi.packed_ids.PackedVocabulary`): no copy to map, but no string per id either.
    """
    folder = Path(folder)
    manifest = read_artifact_manifest(folder, check_hash=check_hash)
    mode: Literal["r"] | None = "r" if mmap else None
    try:
        vectors = np.load(folder / ITEM_EMBEDDINGS, allow_pickle=False, mmap_mode=mode)
        popularity = np.load(folder / ITEM_POPULARITY, allow_pickle=False, mmap_mode=mode)
        with np.load(folder / SAMPLE_HISTORIES, allow_pickle=False) as sample:
            sample_history, sample_mask = sample[NPZ_HISTORY], sample[NPZ_MASK]
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{folder}: cannot read an array file ({str(exc).splitlines()[0]})") from exc
    raw_ids = (folder / ITEM_IDS).read_bytes()
    # Served catalogues (``pack_ids``, default: when mapped) keep their ids packed in flat arrays rather
    # than a Python string per id.
    vocabulary = (
        PackedVocabulary.from_bytes(raw_ids, manifest.n_items, folder / ITEM_IDS)
        if (mmap if pack_ids is None else pack_ids)
        else ItemVocabulary(parse_item_ids(raw_ids, manifest.n_items, folder / ITEM_IDS))
    )
    del raw_ids
    check_item_table(folder, manifest, vectors, popularity)
    check_sample_histories(folder, manifest, sample_history, sample_mask)
    attributes = load_attributes(folder, manifest, mmap)
    tower = UserTower(folder / MODEL_FILE, threads=threads, private=not mmap)
    if tower.seq_len != manifest.seq_len:
        raise ArtifactError(f"{folder / MODEL_FILE}: history length {tower.seq_len}, manifest says {manifest.seq_len}")
    return Artifacts(
        folder=folder,
        manifest=manifest,
        tower=tower,
        item_vectors=vectors,
        vocabulary=vocabulary,
        popularity=popularity,
        sample_history=sample_history,
        sample_mask=sample_mask,
        attributes=attributes,
    )
