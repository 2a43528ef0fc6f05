"""Candidate generation for a batch of users: one ONNX run -> one index call -> one merge.

Pure computation over one loaded model + index pair (no HTTP, no history store), so the
in-process benchmark, the micro-batcher and the request handlers all run the same code. An
Engine is immutable; a reload builds a new one and swaps the reference.

Per batch the engine runs the tower, hands the grouping of the searches and merges to the
planner (retrieval/planner.py: the users' near-copy interests searched once per group, all
searched interests of all users with the same k and blocklist version in one index call, each
row still exactly its solo answer; docs/operations.md, "Serving cost of a trained model"),
answers the planner's searches (:meth:`Engine.search_plain`, :meth:`Engine.search_allowed`)
through its retriever (retrieval/retriever.py: the version's FAISS index, or a Milvus
collection) and encodes each answer's item list to JSON bytes here, in the compute thread, from
pre-encoded item ids (no per-item dicts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np
import orjson

from remi.artifacts import pad_histories
from remi.attributes import ItemAttributes, allowed_mask
from remi.contract import ItemVocabulary
from retrieval.filter_cache import FilterCache
from retrieval.filtered import EXACT_MAX_ROWS, SLOT_COST, Gathered
from retrieval.merge import interest_weights
from retrieval.planner import Interests, KGroup, interests_to_search, merge_step, plan, search_group
from retrieval.query import NO_ITEMS, Query, Result, Timings
from retrieval.retriever import FaissRetriever, Retriever, ServedVersion, Where
from retrieval.search import SharedExclusion
from retrieval.store import LoadedVersion


class Engine:
    """Recommends from one model + index pair."""

    def __init__(
        self,
        loaded: ServedVersion,
        faiss_threads: int = 1,
        dedup_cosine: float = 1.0,
        min_weight: float = 0.0,
        filter_exact_max_rows: int = EXACT_MAX_ROWS,
        filter_slot_cost: float = SLOT_COST,
        filter_cache_mb: float = 256.0,
        retriever: Retriever | None = None,
    ):
        """``retriever``: the index that answers the searches; by default the FAISS index of
        ``loaded`` (a :class:`~retrieval.store.LoadedVersion`)."""
        self.loaded = loaded  # the index version (folder, manifest) and its model artifacts
        self.arts = loaded.artifacts
        self.vocabulary: ItemVocabulary = self.arts.vocabulary
        self.attributes: ItemAttributes | None = self.arts.attributes
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
        if retriever is None:
            if not isinstance(loaded, LoadedVersion):
                raise TypeError("a version without a FAISS index needs its retriever")
            retriever = FaissRetriever(loaded.index, self.item_vectors, filter_exact_max_rows, filter_slot_cost)
        self.retriever: Retriever = retriever
        # Every item id JSON-encoded once (fixed-width bytes: numpy strips the padding on the way out).
        # Each orjson result is copied out and dropped at once: orjson's output keeps the ~4 KB buffer
        # it was written in, and a list of a million of them peaked a 1M-item load at 4.9 GB RSS.
        self.id_json = np.array(
            [memoryview(orjson.dumps(raw)).tobytes() for raw in self.vocabulary.raw_ids], dtype=np.bytes_
        )

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
        warm = [i for i, q in enumerate(queries) if len(q.history)]
        if warm:
            asked = [queries[i] for i in warm]
            interests = self.interests(asked, timings)
            for group in plan(asked, interests.searched):
                for position, result in self.answer_group(group, asked, interests, timings):
                    results[warm[position]] = result
        answers = [
            result
            if result is not None
            else self.popular_for(q.k, q.seen(), self.allowed_items(q) if q.filtered else None, q.blocked)
            for result, q in zip(results, queries, strict=True)
        ]
        return answers, timings

    def interests(self, asked: Sequence[Query], timings: Timings) -> Interests:
        """The tower over the histories of ``asked`` (all non-empty), and which interests are searched."""
        t0 = time.perf_counter()
        ids, mask = pad_histories([q.history for q in asked], self.seq_len)
        # active: the interests each user has (a model with adaptive interests says fewer for
        # short histories, docs/remi.md A.13); the others are never searched nor merged
        vectors, routing, active = self.arts.tower.run_with_mask(ids, mask)
        timings.model = time.perf_counter() - t0
        weights = np.where(active, interest_weights(routing, mask), 0.0)
        searched = interests_to_search(
            vectors, weights, active, [q.merge for q in asked], self.dedup_cosine, self.min_weight
        )
        timings.extra["searched_interests"] = float(searched.sum())
        timings.extra["interests"] = float(searched.size)
        return Interests(vectors, weights, active, searched)

    def answer_group(
        self, group: KGroup, asked: Sequence[Query], interests: Interests, timings: Timings
    ) -> list[tuple[int, Result]]:
        """(position in ``asked``, answer) of every user of one k group: its searches, then its merges."""
        s0 = time.perf_counter()
        found = search_group(group, asked, interests, self)
        s1 = time.perf_counter()
        answers = []
        for step in group.merges:
            merged, merged_scores, who = merge_step(step, group, found, interests, self.item_vectors)
            for n, r in enumerate(step.members):
                result = self._result(merged[n], merged_scores[n], who[n])
                if asked[group.users[r]].filtered:
                    result.filter = self.filter_info(found.allowed[r], found.paths[r])
                answers.append((group.users[r], result))
        timings.search += s1 - s0
        timings.merge += time.perf_counter() - s1
        return answers

    def search_plain(
        self, vectors: np.ndarray, owner: np.ndarray, k: int, exclude: Sequence[np.ndarray], blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The planner's shared call for one blocklist version (:class:`retrieval.planner.Searcher`)."""
        ids, scores, _ = self.retriever.search(vectors, owner, k, exclude, self.shared_exclusion(blocked))
        return ids, scores

    def search_allowed(self, query: Query, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str, int]:
        """The planner's search of one filtered user (:class:`retrieval.planner.Searcher`). The
        allowed mask (1 byte per item) is built here and dropped after: a batch never holds one
        per request."""
        allowed, gathered = self.filtered_items(query)
        n_allowed = int(np.count_nonzero(allowed))
        exclude_items = query.exclude_items if query.exclude_items is not None else NO_ITEMS
        where = Where(query.conditions, exclude_items, allowed, gathered)
        del allowed
        owner = np.zeros(len(vectors), dtype=np.int64)
        ids, scores, path = self.retriever.search(
            vectors, owner, k, [query.seen()], self.shared_exclusion(query.blocked), where
        )
        return ids, scores, path or "exact", n_allowed

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
        shared = SharedExclusion(blocked, self.vocabulary.n_items)
        self._shared = (blocked, shared)
        return shared

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
        ids = self.id_json[ItemVocabulary.indices_to_rows(indices)].tolist()
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
        blocked: np.ndarray = NO_ITEMS,
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
        blocked: np.ndarray = NO_ITEMS,
        gathered: Gathered | None = None,
    ) -> list[dict[str, Any]]:
        """Per interest: the history items it draws on (each item once, its positions' weights
        summed), how many positions effectively, and its own candidates (never a seen or a
        ``blocked`` item).

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
        where = None if allowed is None else Where(None, NO_ITEMS, allowed, gathered)
        found_ids, found_scores, _ = self.retriever.search_user(
            interest_vectors[0], top_n, query.seen(), self.shared_exclusion(blocked), where
        )
        found, scores = found_ids[None], found_scores[None]
        weights = interest_weights(routing, mask)[0]
        out = []
        valid = mask[0]
        for interest in range(interest_vectors.shape[1]):
            row = routing[0, interest][valid]
            p = row / max(float(row.sum()), 1e-12)
            entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
            # An item seen several times is named once, with the routing weight of all its positions.
            items, per_item = np.unique(ids[0][valid], return_inverse=True)
            summed = np.bincount(per_item, weights=row, minlength=len(items))
            order = np.argsort(-summed, kind="stable")[:top_history]
            out.append(
                {
                    "interest": int(kept[interest]),
                    "weight": round(float(weights[interest]), 4),
                    "effective_items": round(float(np.exp(entropy)), 3),
                    "norm": round(float(np.linalg.norm(interest_vectors[0, interest])), 4),
                    "history": [
                        {"item_id": self.vocabulary.raw_id(items[j]), "weight": round(float(summed[j]), 4)}
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
