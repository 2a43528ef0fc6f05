"""Searching K interest vectors per user in one FAISS call."""

from __future__ import annotations

import faiss
import numpy as np


def exact_index(item_vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over (I, d) item vectors; FAISS row r is item index r + 1."""
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def search_interests(index: faiss.Index, interests: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n rows for every interest of every user: (U, K, d) -> ids (U, K, n), scores (U, K, n).

    All U*K queries go in one call so FAISS parallelises over them. Missing results are -1.
    """
    u, k, d = interests.shape
    queries = np.ascontiguousarray(interests.reshape(u * k, d), dtype=np.float32)
    scores, ids = index.search(queries, min(n, index.ntotal))
    if ids.shape[1] < n:
        ids = np.pad(ids, ((0, 0), (0, n - ids.shape[1])), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, n - scores.shape[1])), constant_values=-np.inf)
    return ids.reshape(u, k, n), scores.reshape(u, k, n)
