"""Candidate generation for a batch of users: one ONNX run -> one FAISS call -> one merge.

Pure computation over one loaded model + index pair (no HTTP, no history store), so the
in-process benchmark, the micro-batcher and the request handlers all run the same code. An
Engine is immutable; a reload builds a new one and swaps the reference.

Per batch (issue 11 section 4): the users' near-copy interests are searched once per group
(retrieval/dedup.py; ``interest_dedup_cosine``), all searched interests of all users with the same k
go to FAISS in one call (retrieval/search.py ``search_batch``, each row still exactly its solo
answer), the merge is numpy over the whole batch, and each answer's item list is encoded to JSON
bytes here, in the compute thread, from pre-encoded item ids (no per-item dicts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import orjson

from remi.artifacts import pad_histories
from remi.attributes import Condition, ItemAttributes, allowed_mask
from remi.contract import ItemVocabulary
from retrieval.dedup import leaders, rescore
from retrieval.filter_cache import FilterCache
from retrieval.filtered import EXACT_MAX_ROWS, SLOT_COST, Gathered, search_filtered
from retrieval.merge import interest_weights, merge, merge_flat
from retrieval.search import SharedExclusion, needs_rerank, search_batch, search_excluding
from retrieval.store import LoadedVersion

_NOTHING = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Query:
    """One user's request after the history lookup; ``history`` holds item indices, oldest first."""

    history: np.ndarray
    k: int
    exclude_seen: bool = True
    merge: str = "score"
    # Item indices no answer may hold (the live blocklist, service/blocklist.py), seen items or not;
    # one shared read-only array for every query of a blocklist version.
    blocked: np.ndarray = field(default_factory=lambda: _NOTHING)
    filtered: bool = False  # a filter or exclude_items was given: search the allowed items only, say how many
    conditions: tuple[Condition, ...] = ()  # checked against the engine's attributes (service/filters.py)
    exclude_items: np.ndarray | None = None  # item indices the request excludes

    def seen(self) -> np.ndarray:
        """The item indices this user's answer must not hold: the history when it excludes seen items.

        The blocked items are not among them: they are the same for every query of a list
        version and go to the search as one shared exclusion (Engine.shared_exclusion)."""
        return self.history if self.exclude_seen else _NOTHING


@dataclass
class Result:
    item_ids: list[str]
    scores: list[float]
    interests: list[int | None]
    cold_start: bool
    items_json: bytes | None = None  # the answer's "items" array, already JSON (None: build it from the lists)
    filter: dict[str, Any] | None = None  # FilterInfo of a filtered query (allowed_items, filtered_out, path)


@dataclass
class Timings:
    """Seconds spent per stage for a whole batch (the caller attributes them to its requests)."""

    model: float = 0.0
    search: float = 0.0
    merge: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class Engine:
    """Recommends from one model + index pair."""

    def __init__(
        self,
        loaded: LoadedVersion,
        faiss_threads: int = 1,
        dedup_cosine: float = 1.0,
        min_weight: float = 0.0,
        filter_exact_max_rows: int = EXACT_MAX_ROWS,
        filter_slot_cost: float = SLOT_COST,
        filter_cache_mb: float = 256.0,
    ):
        self.loaded = loaded  # the index version (folder, manifest, FAISS index) and its model artifacts
        self.arts = loaded.artifacts
        self.vocabulary: ItemVocabulary = self.arts.vocabulary
        self.attributes: ItemAttributes | None = self.arts.attributes
        self.index = loaded.index
        self.seq_len = self.arts.manifest.seq_len
        faiss.omp_set_num_threads(faiss_threads)
        # cold start: most popular first (ties by item index, i.e. stable)
        rows = np.argsort(-self.arts.popularity, kind="stable")
        self.popular = ItemVocabulary.rows_to_indices(rows)
        self.popular_scores = self.arts.popularity[rows].astype(np.float32)
        self.dedup_cosine, self.min_weight = dedup_cosine, min_weight
        self.filter_exact_max_rows = filter_exact_max_rows  # the planner's threshold (retrieval/filtered.py)
        self.filter_slot_cost = filter_slot_cost  # and its cost model's calibration
        # The blocklist as one row mask and FAISS selector, built once per list version.
        self._shared: tuple[np.ndarray, SharedExclusion] | None = None
        # Exact re-scoring of found items needs the float item table by FAISS row.
        self.item_vectors = np.ascontiguousarray(self.arts.item_vectors, dtype=np.float32)
        # Repeated filters' masks and gathered rows (retrieval/filter_cache.py).
        self.filter_cache = FilterCache(int(filter_cache_mb * 2**20), self.item_vectors)
        self.rerank = needs_rerank(self.index)  # fp16 / SQ8 storage: re-rank the beam exactly
        # Every item id JSON-encoded once (fixed-width bytes: numpy strips the padding on the way out).
        self.id_json = np.array([orjson.dumps(raw) for raw in self.vocabulary.raw_ids], dtype=np.bytes_)

    @property
    def model_version(self) -> str:
        return self.arts.model_version

    @property
    def index_version(self) -> str:
        return self.loaded.name

    def encode(self, raw_items: Sequence[str]) -> tuple[np.ndarray, int]:
        """Raw ids -> item indices; unknown ids are skipped and counted (never an error)."""
        return self.vocabulary.indices_of(raw_items)

    @property
    def dedup(self) -> bool:
        """Whether near-copy interests are grouped or light ones skipped (retrieval/dedup.py)."""
        return self.dedup_cosine < 1.0 or self.min_weight > 0.0

    def recommend(self, queries: Sequence[Query]) -> tuple[list[Result], Timings]:
        """Results in the order of ``queries``; users without a usable history get popularity."""
        timings = Timings()
        results: list[Result | None] = [None] * len(queries)
        # Filtered queries: how many items their filter and exclude_items allow. Each mask (1 byte
        # per item) is built where it is used and dropped after: a batch never holds one per request.
        n_allowed: dict[int, int] = {}
        warm = [i for i, q in enumerate(queries) if len(q.history)]
        if warm:
            t0 = time.perf_counter()
            ids, mask = pad_histories([queries[i].history for i in warm], self.seq_len)
            # active: the interests each user has (a model with adaptive interests says fewer for
            # short histories, docs/remi.md A.13); the others are never searched nor merged
            interest_vectors, routing, active = self.arts.tower.run_with_mask(ids, mask)
            t1 = time.perf_counter()
            timings.model = t1 - t0
            weights = np.where(active, interest_weights(routing, mask), 0.0)
            strategies = np.array([queries[i].merge for i in warm])
            searched = active.copy()
            if self.dedup:  # only the score merge: quota and round-robin read every interest's own list
                ranked = np.where(active, weights, -np.inf)  # an inactive interest never leads
                grouped = leaders(interest_vectors, ranked, self.dedup_cosine, self.min_weight) & active
                searched[strategies == "score"] = grouped[strategies == "score"]
            timings.extra["searched_interests"] = float(searched.sum())
            timings.extra["interests"] = float(searched.size)
            # Each request is searched and merged on its own terms (its k, its exclusions, its
            # merge): a row's FAISS answer in the shared call is its solo answer (search_batch),
            # so answers never depend on their neighbours (issue 9 B.5).
            by_k: dict[int, list[int]] = {}
            for j, i in enumerate(warm):
                by_k.setdefault(queries[i].k, []).append(j)
            for k, rows in by_k.items():
                s0 = time.perf_counter()
                per_ids = np.full((len(rows), weights.shape[1], k), -1, dtype=np.int64)
                per_scores = np.full(per_ids.shape, -np.inf, dtype=np.float32)
                # Plain rows, one shared call per blocklist version (one per batch but at a change).
                by_list: dict[int, list[int]] = {}
                for r, j in enumerate(rows):
                    if not queries[warm[j]].filtered:
                        by_list.setdefault(id(queries[warm[j]].blocked), []).append(r)
                for plain in by_list.values():
                    exclude = [queries[warm[rows[r]]].seen() for r in plain]
                    user, interest = np.nonzero(searched[[rows[r] for r in plain]])
                    found_ids, found_scores = search_batch(
                        self.index,
                        interest_vectors[[rows[r] for r in plain]][user, interest],
                        user,
                        k,
                        exclude,
                        self.item_vectors if self.rerank else None,
                        self.shared_exclusion(queries[warm[rows[plain[0]]]].blocked),
                    )
                    per_ids[np.asarray(plain)[user], interest] = found_ids
                    per_scores[np.asarray(plain)[user], interest] = found_scores
                paths: dict[int, str] = {}
                for r, j in enumerate(rows):
                    query = queries[warm[j]]
                    if not query.filtered:
                        continue
                    allowed, gathered = self.filtered_items(query)
                    n_allowed[warm[j]] = int(np.count_nonzero(allowed))
                    mask = self.search_mask(allowed, query)
                    del allowed
                    mine = np.flatnonzero(searched[j])
                    found_ids, found_scores, paths[r] = search_filtered(
                        self.index,
                        self.item_vectors,
                        interest_vectors[j, mine],
                        k,
                        mask,
                        exact_max_rows=self.filter_exact_max_rows,
                        slot_cost=self.filter_slot_cost,
                        gathered=gathered,
                    )
                    per_ids[r, mine], per_scores[r, mine] = found_ids, found_scores
                s1 = time.perf_counter()
                for strategy in sorted({str(strategies[j]) for j in rows}):
                    sub = [r for r, j in enumerate(rows) if strategies[j] == strategy]
                    picked = [rows[r] for r in sub]
                    if strategy == "score" and not searched[picked].all():
                        # Leaders only: score every found item against all K interests (its true
                        # max_k score and interest), then merge the pooled candidates.
                        pool = per_ids[sub].reshape(len(sub), -1)
                        pool_scores, pool_who = rescore(
                            np.where(pool >= 0, pool - 1, -1),
                            self.item_vectors,
                            interest_vectors[picked],
                            active[picked],
                        )
                        merged, merged_scores, who = merge_flat(pool, pool_scores, pool_who, k)
                    else:
                        # only the quota merge reads the interest weights
                        w = weights[picked] if strategy == "quota" else None
                        merged, merged_scores, who = merge(strategy, per_ids[sub], per_scores[sub], k, w)
                    for r, j in enumerate(picked):
                        result = self._result(merged[r], merged_scores[r], who[r])
                        if queries[warm[j]].filtered:
                            result.filter = self.filter_info(n_allowed[warm[j]], paths[sub[r]])
                        results[warm[j]] = result
                timings.search += s1 - s0
                timings.merge += time.perf_counter() - s1
        answers = [
            result
            if result is not None
            else self.popular_for(q.k, q.seen(), self.allowed_items(q) if q.filtered else None, q.blocked)
            for result, q in zip(results, queries, strict=True)
        ]
        return answers, timings

    def allowed_items(self, query: Query) -> np.ndarray:
        """(I,) bool by FAISS row: the items a filtered query's filter and exclude_items allow
        (read-only: it may be the filter cache's own mask)."""
        return self.filtered_items(query)[0]

    def filtered_items(self, query: Query) -> tuple[np.ndarray, Gathered | None]:
        """The allowed mask (:meth:`allowed_items`) and, for a cached filter that allows few
        items, their rows already gathered (a superset once exclude_items are applied)."""
        if query.conditions:
            attributes = self.attributes
            if attributes is None:  # checked before (service/filters.py): a model without attributes
                raise ValueError("a filter on a model without item attributes")
            entry = self.filter_cache.get(query.conditions, lambda: allowed_mask(attributes, query.conditions))
            mask, gathered = entry.mask, entry.gathered
        else:
            mask, gathered = np.ones(self.vocabulary.n_items, dtype=bool), None
        if query.exclude_items is not None and len(query.exclude_items):
            rows = ItemVocabulary.indices_to_rows(query.exclude_items)
            if not mask.flags.writeable:  # the cache's: this request's exclusions go on a copy
                mask = mask.copy()
            mask[rows[rows >= 0]] = False
        return mask, gathered

    def shared_exclusion(self, blocked: np.ndarray) -> SharedExclusion | None:
        """The blocked item indices as one row mask and selector, cached for the list version
        (LiveBlocklist hands every query of a version the same array)."""
        if not len(blocked):
            return None
        cached = self._shared
        if cached is not None and cached[0] is blocked:
            return cached[1]
        shared = SharedExclusion(blocked, self.index.ntotal)
        self._shared = (blocked, shared)
        return shared

    def search_mask(self, allowed: np.ndarray, query: Query) -> np.ndarray:
        """The allowed items minus the query's history when it excludes seen items and minus the
        blocked items (the filter's counts stay the filter's: blocking is applied here)."""
        shared = self.shared_exclusion(query.blocked)
        seen = query.seen()
        if shared is None and not len(seen):
            return allowed
        mask = allowed & ~shared.mask if shared is not None else allowed.copy()
        rows = ItemVocabulary.indices_to_rows(seen)
        mask[rows[rows >= 0]] = False
        return mask

    def filter_info(self, allowed: np.ndarray | int, path: str | None) -> dict[str, Any]:
        """The FilterInfo of an answer: how many items the filter left (a mask or its count) and
        removed, and the search path."""
        count = allowed if isinstance(allowed, int) else int(np.count_nonzero(allowed))
        return {"allowed_items": count, "filtered_out": self.vocabulary.n_items - count, "path": path}

    def _result(self, indices: np.ndarray, scores: np.ndarray, interests: np.ndarray) -> Result:
        """One merged list (-1 padded) as a Result, with its "items" JSON built from pre-encoded ids."""
        keep = indices >= 0
        indices, scores, interests = indices[keep], scores[keep], interests[keep]
        return Result(
            item_ids=self.vocabulary.raw_ids_of(indices),
            scores=scores.tolist(),
            interests=interests.tolist(),
            cold_start=False,
            items_json=self.items_json(indices, scores, interests),
        )

    def items_json(self, indices: np.ndarray, scores: np.ndarray, interests: np.ndarray | None) -> bytes:
        """The "items" array of an answer as JSON bytes, byte for byte what orjson makes of the dicts.

        Ids come pre-encoded (``id_json``), scores are encoded by orjson in one call on the
        float64 array (the same shortest repr as a Python float of the float32 score).
        """
        if not len(indices):
            return b"[]"
        ids = self.id_json[np.asarray(indices) - 1].tolist()
        score_text = orjson.dumps(np.asarray(scores, dtype=np.float64), option=orjson.OPT_SERIALIZE_NUMPY)
        score_parts = score_text[1:-1].split(b",")
        who = [b"null"] * len(ids) if interests is None else [b"%d" % i for i in np.asarray(interests).tolist()]
        return (
            b"["
            + b",".join(
                [b'{"item_id":%b,"score":%b,"interest":%b}' % part for part in zip(ids, score_parts, who, strict=True)]
            )
            + b"]"
        )

    def popular_for(
        self,
        k: int,
        exclude: Sequence[int] | np.ndarray = (),
        allowed: np.ndarray | None = None,
        blocked: np.ndarray = _NOTHING,
    ) -> Result:
        """The cold-start list: most interacted items in the training data, minus excluded and blocked ones.

        With ``allowed`` (a filtered query's mask by FAISS row, exclude_items already removed)
        only allowed items are taken, in the same popularity order.
        """
        shared = self.shared_exclusion(blocked)
        take = k + len(exclude) + (len(shared) if shared is not None else 0)  # enough to fill k after both
        if allowed is not None:
            keep = allowed[ItemVocabulary.indices_to_rows(self.popular)]
            items, scores = self.popular[keep][:take], self.popular_scores[keep][:take]
        else:
            items, scores = self.popular[:take], self.popular_scores[:take]
        if shared is not None:
            keep = ~shared.mask[ItemVocabulary.indices_to_rows(items)]
            items, scores = items[keep], scores[keep]
        if len(exclude):
            keep = ~np.isin(items, np.asarray(exclude))
            items, scores = items[keep], scores[keep]
        return Result(
            item_ids=self.vocabulary.raw_ids_of(items[:k]),
            scores=scores[:k].tolist(),
            interests=[None] * min(k, len(items)),
            cold_start=True,
            items_json=self.items_json(items[:k], scores[:k], None),
            filter=None if allowed is None else self.filter_info(allowed, "popular"),
        )

    def explain(
        self,
        history: np.ndarray,
        top_n: int = 10,
        top_history: int = 10,
        allowed: np.ndarray | None = None,
        blocked: np.ndarray = _NOTHING,
        gathered: Gathered | None = None,
    ) -> list[dict[str, Any]]:
        """Per interest: the history items it draws on, how many effectively, and its own candidates
        (never a seen or a ``blocked`` item).

        With ``allowed`` (a filter's mask by FAISS row) the candidates are allowed items only;
        ``gathered``: the cached filter's rows (:meth:`filtered_items`), scored in place.
        """
        if not len(history):
            return []
        ids, mask = pad_histories([history], self.seq_len)
        interest_vectors, routing, active = self.arts.tower.run_with_mask(ids, mask)
        kept = np.flatnonzero(active[0])  # the interests this user has (all K unless adaptive)
        interest_vectors, routing = interest_vectors[:, kept], routing[:, kept]
        query = Query(history, top_n, blocked=blocked)
        if allowed is not None:
            searchable = self.search_mask(allowed, query)
            found_rows, found_scores, _ = search_filtered(
                self.index,
                self.item_vectors,
                interest_vectors[0],
                top_n,
                searchable,
                exact_max_rows=self.filter_exact_max_rows,
                slot_cost=self.filter_slot_cost,
                gathered=gathered,
            )
            found, scores = found_rows[None], found_scores[None]
        else:
            found, scores = search_excluding(
                self.index, interest_vectors, top_n, [query.seen()], self.shared_exclusion(blocked)
            )
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
                    "interest": int(kept[interest]),
                    "weight": round(float(weights[interest]), 4),
                    "effective_items": round(float(np.exp(entropy)), 3),
                    "norm": round(float(np.linalg.norm(interest_vectors[0, interest])), 4),
                    "history": [
                        {"item_id": self.vocabulary.raw_id(ids[0, j]), "weight": round(float(row[j]), 4)} for j in order
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
