"""Real queries through a model + index pair: recall queries for a build, and the smoke test of a version.

Both run the exported user tower (onnxruntime) on the held-out histories shipped with the
artifacts, so an index is measured and checked on the queries it will serve, not on item vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from remi.artifacts import Artifacts
from remi.contract import ArtifactError, ItemVocabulary, check_pair
from retrieval.search import search_excluding
from retrieval.store import load_faiss


def interest_queries(arts: Artifacts, max_users: int = 1000, active_only: bool = True) -> np.ndarray:
    """Real query vectors: the ONNX tower's interest vectors on held-out users' histories, (<= S * K, d).

    ``active_only``: the interests each user has (all K unless the model is adaptive), what the
    service searches; off, every user's K in a row, which a gate on merged answers groups by K.
    """
    history, mask = arts.sample_history[:max_users], arts.sample_mask[:max_users]
    if len(history) == 0:
        return np.zeros((0, arts.manifest.dim), dtype=np.float32)
    chunks = []
    for i in range(0, len(history), 256):
        vectors, _, active = arts.tower.run_with_mask(history[i : i + 256], mask[i : i + 256])
        chunks.append(vectors[active] if active_only else vectors.reshape(-1, vectors.shape[-1]))
    return np.concatenate(chunks)


def smoke_query(arts: Artifacts, folder: Path) -> None:
    """Loads the built folder as the service will (mapped) and runs real queries through it."""
    index_manifest, index = load_faiss(folder, mmap=True)
    check_pair(arts.manifest, index_manifest)
    history, mask = arts.sample_history[:8], arts.sample_mask[:8]
    if len(history) == 0:  # no held-out users: one history of the first item
        history = np.full((1, arts.manifest.seq_len), ItemVocabulary.first_index(), dtype=np.int64)
        mask = np.zeros((1, arts.manifest.seq_len), bool)
        mask[0, 0] = True
    interest_vectors, _ = arts.tower.run(history, mask)
    seen = [h[m] for h, m in zip(history, mask, strict=True)]
    ids, scores = search_excluding(index, interest_vectors, 10, seen)
    found = ids >= 0
    if not found.any():
        raise ArtifactError(f"{folder}: smoke query returned no results")
    if ids.max() > arts.manifest.n_items or not np.isfinite(scores[found]).all():
        raise ArtifactError(f"{folder}: smoke query returned out-of-range ids or non-finite scores")
    for row, banned in zip(ids, seen, strict=True):
        if np.isin(row, banned).any():
            raise ArtifactError(f"{folder}: smoke query returned an excluded item")
