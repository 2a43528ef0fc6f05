"""What the serving benchmark measures against: a synthetic model artifact folder and Redis histories.

No training: the benchmark is about the serving path, not about quality. The artifact folder
holds a ComiRec-SA user tower whose item table is replaced by clustered vectors with log-normal
norms (the recipe of benchmarks/index.py), exported to ONNX with training/export's exporter and
parity check, and written per remi/contract.py (the same model-version recipe as the real
exporter). Users' histories are stored in Redis under a fresh key prefix and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.index import clustered_items
from remi.contract import ITEM_IDS, ITEM_POPULARITY, ItemVocabulary

ITEM_FORMAT = "i{:06d}"
USER_FORMAT = "u{:07d}"


class HistoryMaker:
    """Users with 2-4 topics: their items come from those clusters, popular items more often."""

    def __init__(self, assign: np.ndarray, popularity: np.ndarray, seed: int):
        self.rng = np.random.default_rng(seed)
        order = np.argsort(assign, kind="stable")
        bounds = np.searchsorted(assign[order], np.arange(assign.max() + 2))
        self.members = [order[bounds[c] : bounds[c + 1]] for c in range(assign.max() + 1)]
        self.members = [m for m in self.members if len(m)]
        self.popularity = popularity.astype(np.float64)

    def __call__(self, length: int) -> np.ndarray:
        """``length`` FAISS rows (0-based), oldest first, topics interleaved."""
        rng = self.rng
        topics = rng.choice(len(self.members), size=rng.integers(2, 5), replace=False)
        picks = rng.integers(0, len(topics), length)
        out = np.empty(length, dtype=np.int64)
        for t, topic in enumerate(topics):
            slots = np.flatnonzero(picks == t)
            if len(slots):
                pool = self.members[topic]
                p = self.popularity[pool] / self.popularity[pool].sum()
                out[slots] = rng.choice(pool, size=len(slots), p=p)
        return out


def synthetic_spec(items: int, dim: int, clusters: int, seed: int) -> dict[str, Any]:
    """The artifact folder's identity (stored as its ``train_config``: a cached folder is reused only
    for the same spec)."""
    return {
        "synthetic": True,
        "items": items,
        "dim": dim,
        "interests": 4,
        "seq_len": 20,
        "clusters": clusters,
        "seed": seed,
        "backbone": "comirec-sa",
    }


def build_artifacts(folder: Path, spec: dict[str, Any]) -> Path:
    """A model artifact folder per remi/contract.py, with a random ComiRec-SA tower over clustered items.

    Reused when ``folder`` already holds one for the same spec.
    """
    from remi.contract import (
        ARTIFACT_FILES,
        FORMAT_VERSION,
        ITEM_EMBEDDINGS,
        MANIFEST,
        MODEL_DATA,
        MODEL_FILE,
        NPZ_HISTORY,
        NPZ_MASK,
        SAMPLE_HISTORIES,
        ArtifactManifest,
        atomic_folder,
        file_entries,
        model_version,
        utc_now,
        write_manifest,
    )

    if (folder / MANIFEST).is_file():
        if json.loads((folder / MANIFEST).read_text()).get("train_config") == spec:
            return folder
    import torch

    from remi.artifacts import pad_histories
    from training.export import PARITY_TOLERANCE, export_onnx, parity_error, parity_inputs
    from training.models import build_model

    t0 = time.perf_counter()
    n, d, length = spec["items"], spec["dim"], spec["seq_len"]
    torch.manual_seed(spec["seed"])
    vectors, assign = clustered_items(n, d, spec["seed"], spec["clusters"])
    # Items are numbered by popularity (as training/data.py encodes them): Zipf-like counts.
    popularity = np.maximum(1, (20_000 / np.arange(1, n + 1) ** 0.8)).astype(np.int64)
    model = build_model(spec["backbone"], n, d, spec["interests"], length)
    with torch.no_grad():  # the item table, indexed by item index: the padding row stays zero
        model.item_emb.weight.copy_(torch.from_numpy(ItemVocabulary.add_padding(vectors)))
    model.eval()
    make = HistoryMaker(assign, popularity, spec["seed"] + 1)
    rng = np.random.default_rng(spec["seed"] + 2)
    sample = [ItemVocabulary.rows_to_indices(make(int(rng.integers(1, 51)))) for _ in range(1024)]
    history, mask = pad_histories(sample, length)
    with atomic_folder(folder, replace=True) as tmp:
        export_onnx(model, tmp / MODEL_FILE)
        np.save(tmp / ITEM_EMBEDDINGS, vectors)
        (tmp / ITEM_IDS).write_text("\n".join(ITEM_FORMAT.format(row) for row in range(n)) + "\n")
        np.save(tmp / ITEM_POPULARITY, popularity)
        arrays: dict[str, Any] = {NPZ_HISTORY: history, NPZ_MASK: mask}  # numpy's stub reads **kwds as allow_pickle
        np.savez(tmp / SAMPLE_HISTORIES, **arrays)
        batches = parity_inputs(n, length) + [(history[i : i + 64], mask[i : i + 64]) for i in range(0, 1024, 64)]
        error = parity_error(model, tmp / MODEL_FILE, batches)
        if not error <= PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX parity {error:.2e} > {PARITY_TOLERANCE:.0e}")
        weights = [MODEL_DATA] if (tmp / MODEL_DATA).is_file() else []
        files = file_entries(tmp, [*ARTIFACT_FILES, *weights])
        write_manifest(
            tmp,
            ArtifactManifest(
                format_version=FORMAT_VERSION,
                model_version=model_version(tmp, files),
                backbone=spec["backbone"],
                dim=d,
                interests=spec["interests"],
                seq_len=length,
                n_items=n,
                opset=18,
                created_at=utc_now(),
                data_fingerprint={"synthetic": "benchmarks/serving.py", "items": n},
                metrics={},
                train_config=spec,
                parity_max_abs=error,
                files=files,
            ),
        )
    print(f"artifacts: {folder} ({time.perf_counter() - t0:.1f} s, parity {error:.1e})", flush=True)
    return folder


def synthetic_users(artifacts: Path, spec: dict[str, Any], n_users: int) -> tuple[list[str], list[list[str]]]:
    """``n_users`` user ids and their histories of 20-50 raw item ids (the sample histories' generator,
    another seed)."""
    item_ids = (artifacts / ITEM_IDS).read_text().split("\n")[: spec["items"]]  # line r: FAISS row r
    _, assign = clustered_items(spec["items"], spec["dim"], spec["seed"], spec["clusters"])
    make = HistoryMaker(assign, np.load(artifacts / ITEM_POPULARITY), spec["seed"] + 3)
    rng = np.random.default_rng(spec["seed"] + 4)
    users = [USER_FORMAT.format(u) for u in range(n_users)]
    histories = [[item_ids[row] for row in make(int(rng.integers(20, 51)))] for _ in users]
    return users, histories


async def seed_histories(url: str, prefix: str, users: list[str], histories: list[list[str]]) -> None:
    from service.history import Event, RedisHistory

    store = RedisHistory(url, prefix=prefix, max_len=200, ttl_seconds=86_400, timeout_s=5.0)
    try:
        for start in range(0, len(users), 50):  # within the pool's 64 connections
            await asyncio.gather(
                *(
                    store.append(u, [Event(item, 1_700_000_000 + j) for j, item in enumerate(h)])
                    for u, h in zip(users[start : start + 50], histories[start : start + 50], strict=True)
                )
            )
    finally:
        await store.close()


def delete_prefix(url: str, prefix: str) -> int:
    """SCAN + DEL of this benchmark's keys only."""
    import redis

    client = redis.Redis.from_url(url)
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    client.close()
    return deleted
