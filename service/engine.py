"""Candidate generation for a batch of users: one ONNX run -> per-user FAISS search -> per-user merge.

Pure computation over one loaded model + index pair (no HTTP, no history store), so the
in-process benchmark, the micro-batcher and the request handlers all run the same code. An
Engine is immutable; a reload builds a new one and swaps the reference.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from index.merge import interest_weights, merge
from index.search import search_excluding
from index.store import LoadedVersion
from remi.artifacts import pad_histories
from remi.contract import ItemVocabulary


@dataclass(frozen=True)
class Query:
    """One user's request after the history lookup; ``history`` holds item indices, oldest first."""

    history: np.ndarray
    k: int
    exclude_seen: bool = True
    merge: str = "score"


@dataclass
class Result:
    item_ids: list[str]
    scores: list[float]
    interests: list[int | None]
    cold_start: bool


@dataclass
class Timings:
    """Seconds spent per stage for a whole batch (the caller attributes them to its requests)."""

    model: float = 0.0
    search: float = 0.0
    merge: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Engine:
    """Recommends from one model + index pair."""

    def __init__(self, loaded: LoadedVersion, faiss_threads: int = 1):
        self.loaded = loaded  # the index version (folder, manifest, FAISS index) and its model artifacts
        self.arts = loaded.artifacts
        self.vocabulary: ItemVocabulary = self.arts.vocabulary
        self.index = loaded.index
        self.seq_len = self.arts.manifest.seq_len
        faiss.omp_set_num_threads(faiss_threads)
        # cold start: most popular first (ties by item index, i.e. stable)
        rows = np.argsort(-self.arts.popularity, kind="stable")
        self.popular = ItemVocabulary.rows_to_indices(rows)
        self.popular_scores = self.arts.popularity[rows].astype(np.float32)

    @property
    def model_version(self) -> str:
        return self.arts.model_version

    @property
    def index_version(self) -> str:
        return self.loaded.name

    def encode(self, raw_items: Sequence[str]) -> tuple[np.ndarray, int]:
        """Raw ids -> item indices; unknown ids are skipped and counted (never an error)."""
        return self.vocabulary.indices_of(raw_items)

    def recommend(self, queries: Sequence[Query]) -> tuple[list[Result], Timings]:
        """Results in the order of ``queries``; users without a usable history get popularity."""
        timings = Timings()
        results: list[Result | None] = [None] * len(queries)
        warm = [i for i, q in enumerate(queries) if len(q.history)]
        if warm:
            t0 = time.perf_counter()
            ids, mask = pad_histories([queries[i].history for i in warm], self.seq_len)
            interest_vectors, routing = self.arts.tower.run(ids, mask)
            t1 = time.perf_counter()
            # Each request is searched and merged on its own terms (its k, its exclusions, its
            # merge): only the ONNX run is shared, and its rows do not depend on each other. A
            # depth or quota taken from the batch made answers depend on their neighbours (issue 9
            # B.5). Requests with the same k still go through one search_excluding call (one FAISS
            # call per user inside) and one merge call per strategy; both work row by row.
            by_k: dict[int, list[int]] = {}
            for j, i in enumerate(warm):
                by_k.setdefault(queries[i].k, []).append(j)
            for k, rows in by_k.items():
                s0 = time.perf_counter()
                exclude = [queries[warm[j]].history if queries[warm[j]].exclude_seen else () for j in rows]
                found, scores = search_excluding(self.index, interest_vectors[rows], k, exclude)
                s1 = time.perf_counter()
                for strategy in sorted({queries[warm[j]].merge for j in rows}):
                    sub = [r for r, j in enumerate(rows) if queries[warm[j]].merge == strategy]
                    picked = [rows[r] for r in sub]
                    # only the quota merge reads the interest weights
                    weights = interest_weights(routing[picked], mask[picked]) if strategy == "quota" else None
                    merged, merged_scores, who = merge(strategy, found[sub], scores[sub], k, weights)
                    for r, j in enumerate(picked):
                        keep = merged[r] >= 0
                        results[warm[j]] = Result(
                            item_ids=self.vocabulary.raw_ids_of(merged[r][keep]),
                            scores=merged_scores[r][keep].tolist(),
                            interests=who[r][keep].tolist(),
                            cold_start=False,
                        )
                timings.search += s1 - s0
                timings.merge += time.perf_counter() - s1
            timings.model = t1 - t0
        answers = [
            result if result is not None else self.popular_for(q.k, q.history if q.exclude_seen else ())
            for result, q in zip(results, queries, strict=True)
        ]
        return answers, timings

    def popular_for(self, k: int, exclude: Sequence[int] | np.ndarray = ()) -> Result:
        """The cold-start list: most interacted items in the training data, minus excluded ones."""
        take = k + len(exclude)
        items, scores = self.popular[:take], self.popular_scores[:take]
        if len(exclude):
            keep = ~np.isin(items, np.asarray(exclude))
            items, scores = items[keep], scores[keep]
        return Result(
            item_ids=self.vocabulary.raw_ids_of(items[:k]),
            scores=scores[:k].tolist(),
            interests=[None] * min(k, len(items)),
            cold_start=True,
        )

    def explain(self, history: np.ndarray, top_n: int = 10, top_history: int = 10) -> list[dict[str, Any]]:
        """Per interest: the history items it draws on, how many effectively, and its own candidates."""
        if not len(history):
            return []
        ids, mask = pad_histories([history], self.seq_len)
        interest_vectors, routing = self.arts.tower.run(ids, mask)
        found, scores = search_excluding(self.index, interest_vectors, top_n, [history])
        weights = interest_weights(routing, mask)[0]
        out = []
        valid = mask[0]
        for interest in range(interest_vectors.shape[1]):
            row = routing[0, interest][valid]
            p = row / max(float(row.sum()), 1e-12)
            entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
            order = np.argsort(-row, kind="stable")[:top_history]
            out.append(
                {
                    "interest": interest,
                    "weight": round(float(weights[interest]), 4),
                    "effective_items": round(float(np.exp(entropy)), 3),
                    "norm": round(float(np.linalg.norm(interest_vectors[0, interest])), 4),
                    "history": [
                        {"item_id": self.vocabulary.raw_id(ids[0, j]), "weight": round(float(row[j]), 4)}
                        for j in order
                    ],
                    "candidates": [
                        {"item_id": self.vocabulary.raw_id(i), "score": float(s)}
                        for i, s in zip(found[0, interest], scores[0, interest], strict=True)
                        if i >= 0
                    ],
                }
            )
        return out

    def warm_up(self, rounds: int = 3) -> None:
        """Runs real held-out histories through every stage so the first request is not slow."""
        hist, mask = self.arts.sample_history[:64], self.arts.sample_mask[:64]
        queries = [Query(h[m], 50) for h, m in zip(hist, mask, strict=True)] or [
            Query(np.array([ItemVocabulary.first_index()]), 50)
        ]
        for _ in range(rounds):
            self.recommend(queries[:1])
            self.recommend(queries)
