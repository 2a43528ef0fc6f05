"""``remi export``: a run's user tower to ONNX plus the item table, ids, popularity and manifest.

The folder is filled under a hidden temporary name and renamed into place only after the ONNX
model has been checked against PyTorch, so a crash never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from remi.artifacts import UserTower, pad_histories
from remi.contract import (
    ARTIFACT_FILES,
    FORMAT_VERSION,
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
    RUN_ITEM_IDS,
    RUN_METRICS,
    SAMPLE_HISTORIES,
    ArtifactManifest,
    ItemVocabulary,
    atomic_folder,
    check_item_ids,
    file_entries,
    model_version,
    sha256_file,
    utc_now,
    write_manifest,
)
from remi.errors import RemiError
from training.models import MultiInterestModel
from training.prepare import prepare
from training.runs import load_run

log = logging.getLogger("remi.export")

PARITY_TOLERANCE = 1e-4


class _Tower(torch.nn.Module):
    """The user tower alone: eval-mode forward with the artifact's input and output names."""

    def __init__(self, model: MultiInterestModel):
        super().__init__()
        self.model = model

    def forward(self, item_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        interest_vectors, routing = self.model(item_ids, mask)
        return interest_vectors, routing, self.model.interest_mask(mask)


# Weights above this go to user_tower.onnx.data. onnxruntime maps an external-data file instead
# of copying it, so every service worker shares one copy of the item table through the page cache
# (measured at 1M x 64: 244 MB of private memory per worker inline, 0 external); below it, the
# copy is small and one file is simpler. protobuf caps a single-file model at 2 GB anyway.
EXTERNAL_DATA_BYTES = 64 * 2**20


def export_onnx(model: MultiInterestModel, path: Path, opset: int = 18, external_data: bool | None = None) -> None:
    """Dynamo-based export with a dynamic batch axis; L is fixed (histories are padded to L).

    The item table is part of the user tower (it embeds the history). Above 64 MB of weights
    (about 250k items at d = 64) they go to ``user_tower.onnx.data`` beside the model, which
    onnxruntime maps rather than copies (shared by the service's workers; a single-file model
    also cannot exceed 2 GB); ``external_data`` forces either layout.
    """
    model.eval()
    if external_data is None:
        external_data = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    length = model.seq_len
    items = ItemVocabulary.index_range(model.n_items)
    ids = torch.randint(items.start, items.stop, (2, length))
    mask = torch.ones(2, length, dtype=torch.bool)
    mask[1, length // 2 :] = False
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # "torchvision is not installed" and similar noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Tower(model),
            (ids, mask),
            str(path),
            input_names=[INPUT_ITEMS, INPUT_MASK],
            output_names=[OUTPUT_INTERESTS, OUTPUT_ROUTING, OUTPUT_INTEREST_MASK],
            opset_version=opset,
            dynamo=True,
            external_data=external_data,
            dynamic_shapes={"item_ids": {0: batch}, "mask": {0: batch}},
            verbose=False,
        )
    exporter_log.setLevel(level)


def parity_inputs(n_items: int, seq_len: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches of 1 and 64 with history lengths 1, L and in between (the export acceptance set)."""
    rng = np.random.default_rng(seed)
    items = ItemVocabulary.index_range(n_items)
    lengths_64 = np.concatenate([[1, seq_len, max(1, seq_len // 2)], rng.integers(1, seq_len + 1, 61)])
    batches = []
    for lengths in ([1], [seq_len], [max(1, seq_len // 2)], lengths_64):
        hist = [rng.integers(items.start, items.stop, int(n)) for n in lengths]
        batches.append(pad_histories(hist, seq_len))
    return batches


@torch.no_grad()
def parity_error(model: MultiInterestModel, onnx_path: Path, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Max abs difference between onnxruntime and PyTorch over interests and routing; a different
    interest mask (an integer rule, so it must match exactly) counts as an infinite difference."""
    model.eval()
    tower = UserTower(onnx_path)
    worst = 0.0
    for ids, mask in batches:
        ort_v, ort_r, ort_active = tower.run_with_mask(ids, mask)
        ref_v, ref_r = model(torch.from_numpy(ids), torch.from_numpy(mask))
        if not np.array_equal(ort_active, model.interest_mask(torch.from_numpy(mask)).numpy()):
            return float("inf")
        worst = max(worst, float(np.abs(ort_v - ref_v.numpy()).max()), float(np.abs(ort_r - ref_r.numpy()).max()))
    return worst


def _fingerprint(path: str, data: Any) -> dict[str, Any]:
    """Size and hash of the training data: one file's, or over a folder's parts (path and hash of each)."""
    from remi.datafiles import interaction_files

    source = interaction_files(path)
    if source.is_folder:
        digest = hashlib.sha256()
        for part in source.files:
            digest.update(f"{part.relative_to(source.root).as_posix()}\0{sha256_file(part)}\n".encode())
        size, sha = sum(p.stat().st_size for p in source.files), digest.hexdigest()
    else:
        size, sha = source.root.stat().st_size, sha256_file(source.root)
    return {
        "path": str(source.root),
        "bytes": size,
        "sha256": sha,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": len(data.items),
    }


def export_run(
    run_dir: str | Path,
    out: str | Path,
    data: str | None = None,
    force: bool = False,
    opset: int = 18,
    sample_users: int = 1024,
    external_data: bool | None = None,
) -> ArtifactManifest:
    """Exports a run directory to an artifact folder and returns its manifest."""
    if opset < 17:
        raise RemiError(f"--opset {opset}: the artifact contract needs opset >= 17")
    run = Path(run_dir)
    t0 = time.perf_counter()
    cfg, model = load_run(run)
    model.eval()
    if data:
        cfg = cfg.model_copy(update={"data": data})
    prep = prepare(cfg)
    trained_items = (run / RUN_ITEM_IDS).read_text().split("\n")[: model.n_items]
    check_item_ids(trained_items, run / RUN_ITEM_IDS)  # unique, clean ids: the service matches them exactly
    if list(prep.data.item_ids) != trained_items:
        raise RemiError(
            f"{cfg.data}: its items after filtering differ from the {model.n_items} the run trained on; "
            "export with the training data (--data)"
        )
    metrics = json.loads((run / RUN_METRICS).read_text()) if (run / RUN_METRICS).is_file() else {}

    with atomic_folder(Path(out), replace=force) as tmp:
        export_onnx(model, tmp / MODEL_FILE, opset, external_data)
        with torch.no_grad():
            vectors = model.item_vectors().detach().float().numpy()
        np.save(tmp / ITEM_EMBEDDINGS, np.ascontiguousarray(vectors, dtype=np.float32))
        (tmp / ITEM_IDS).write_text("\n".join(trained_items) + "\n")
        np.save(tmp / ITEM_POPULARITY, ItemVocabulary.drop_padding(prep.data.item_popularity()).astype(np.int64))
        # Held-out users' histories: the index build measures recall on their interests.
        history = np.concatenate([prep.valid.history, prep.test.history])[:sample_users]
        mask = np.concatenate([prep.valid.mask, prep.test.mask])[:sample_users]
        arrays: dict[str, Any] = {NPZ_HISTORY: history, NPZ_MASK: mask}
        np.savez(tmp / SAMPLE_HISTORIES, **arrays)

        batches = parity_inputs(model.n_items, model.seq_len) + [
            (history[i : i + 64], mask[i : i + 64]) for i in range(0, len(history), 64)
        ]
        error = parity_error(model, tmp / MODEL_FILE, batches)
        if not error <= PARITY_TOLERANCE:
            raise RemiError(f"ONNX parity check failed: max abs difference {error:.2e} > {PARITY_TOLERANCE:.0e}")

        weights = [MODEL_DATA] if (tmp / MODEL_DATA).is_file() else []
        files = file_entries(tmp, [*ARTIFACT_FILES, *weights])
        manifest = ArtifactManifest(
            format_version=FORMAT_VERSION,
            model_version=model_version(tmp, files),
            backbone=cfg.model,
            dim=cfg.dim,
            interests=model.n_interests,
            seq_len=cfg.seq_len,
            n_items=model.n_items,
            opset=opset,
            created_at=utc_now(),
            data_fingerprint=_fingerprint(cfg.data, prep.data),
            metrics={k: metrics[k] for k in ("valid", "test", "routing", "steps", "best_step") if k in metrics},
            train_config=cfg.model_dump(),
            parity_max_abs=error,
            files=files,
        )
        write_manifest(tmp, manifest)
    log.info(
        "export done",
        extra={
            "out": str(out),
            "model_version": manifest.model_version,
            "parity_max_abs": error,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )
    return manifest
