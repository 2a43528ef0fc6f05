"""The seam between a batch's plan and an index: per-interest candidates, whichever index answers.

The planner (retrieval/planner.py) decides which interests of which users are searched together;
a :class:`Retriever` answers one such search. Its contract, the same for every backend:

* the query rows of several users in one call (``owner``: whose row), so a user's K interests
  are always in one call;
* exact exclusion: no row's list holds an item of its owner's ``exclude`` set (the seen items),
  nor a ``blocked`` item (the live blocklist, one :class:`~retrieval.search.SharedExclusion` for
  every row), nor, for a filtered user, an item its :class:`Where` leaves out (the filter's
  conditions and the request's exclude_items);
* ``k`` items in every list whenever ``k`` are allowed, fewer only when fewer exist; -1 / -inf
  pad the rest; equal scores by item index;
* answers in item indices (1-based, :class:`remi.contract.ItemVocabulary`).

Two backends: :class:`FaissRetriever` (the version's FAISS index in the worker's memory, the
default) and ``retrieval.milvus.MilvusRetriever`` (a Milvus collection over the network, for
catalogues or traffic beyond one replica; imported only when chosen, pymilvus is an extra).
The merge, the dedup of interests and the answers' encoding never see which one answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from remi.artifacts import Artifacts
from remi.attributes import Condition
from remi.contract import ItemVocabulary
from remi.errors import RemiError
from retrieval.filtered import EXACT_MAX_ROWS, SLOT_COST, Gathered, search_filtered
from retrieval.search import SharedExclusion, needs_rerank, search_batch, search_excluding


class RetrieverUnavailable(RemiError):
    """The backend did not answer a search (a Milvus server down or timing out): the service
    answers 503 with Retry-After, never a 500, and keeps serving what does not need the backend."""


# ids (Q, k) item indices, -1 padded; scores (Q, k), -inf padded; the filtered search's path
# (retrieval/filtered.py: graph, exact, graph+exact), None for an unfiltered search.
Found = tuple[np.ndarray, np.ndarray, str | None]


@dataclass(frozen=True)
class Where:
    """What a filtered user's request allows: its filter and exclude_items, and their mask.

    ``allowed`` is the engine's (I,) bool mask by FAISS row with both applied (read-only: it may be
    the filter cache's); ``conditions`` None means only the mask is known (the explain route),
    ``gathered`` the cached filter's rows (the exact path scores them in place)."""

    conditions: tuple[Condition, ...] | None
    exclude_items: np.ndarray  # item indices
    allowed: np.ndarray
    gathered: Gathered | None = None


class IndexDescription(Protocol):
    """What /version shows of the index that serves (an IndexManifest, a MilvusManifest)."""

    @property
    def kind(self) -> str: ...

    @property
    def params(self) -> dict[str, Any]: ...

    @property
    def recall_at_50(self) -> float | None: ...


class ServedVersion(Protocol):
    """A version the engine serves: its name and folder, its model artifacts and its index's manifest
    (:class:`retrieval.store.LoadedVersion` for FAISS, ``retrieval.milvus.MilvusVersion``)."""

    @property
    def name(self) -> str: ...

    @property
    def folder(self) -> Path: ...

    @property
    def artifacts(self) -> Artifacts: ...

    @property
    def manifest(self) -> IndexDescription: ...


class Retriever(Protocol):
    """Per-interest candidates of one version's items (the module docstring's contract)."""

    @property
    def backend(self) -> str:
        """``faiss`` or ``milvus``."""
        ...

    def search(
        self,
        queries: np.ndarray,
        owner: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray],
        blocked: SharedExclusion | None,
        where: Where | None = None,
    ) -> Found:
        """Top-k of every (Q, d) query row: ``owner[q]`` indexes ``exclude``; with ``where``, all
        rows are one filtered user's (owner 0)."""
        ...

    def search_user(
        self, queries: np.ndarray, k: int, seen: np.ndarray, blocked: SharedExclusion | None, where: Where | None = None
    ) -> Found:
        """One user's (K, d) interests alone, as the explain route shows them."""
        ...


def searchable_rows(allowed: np.ndarray, seen: np.ndarray, blocked: SharedExclusion | None) -> np.ndarray:
    """The allowed rows minus the user's seen items and the blocked ones (the filter's own counts
    stay the filter's: exclusions are applied here). ``allowed`` itself is never written."""
    if blocked is None and not len(seen):
        return allowed
    mask = allowed & ~blocked.mask if blocked is not None else allowed.copy()
    rows = ItemVocabulary.indices_to_rows(seen)
    mask[rows[rows >= 0]] = False
    return mask


class FaissRetriever:
    """The version's FAISS index: one FAISS call per blocklist version for plain rows
    (:func:`retrieval.search.search_batch`), the filter planner for a filtered user
    (:func:`retrieval.filtered.search_filtered`)."""

    backend = "faiss"

    def __init__(
        self,
        index: faiss.Index,
        item_vectors: np.ndarray,
        exact_max_rows: int = EXACT_MAX_ROWS,
        slot_cost: float = SLOT_COST,
    ) -> None:
        self.index = index
        self.item_vectors = item_vectors  # float32 by FAISS row: exact path and re-ranking
        self.exact_max_rows, self.slot_cost = exact_max_rows, slot_cost  # the filter planner's calibration
        self.rerank = needs_rerank(index)  # fp16 / SQ8 storage: re-rank the beam exactly

    def search(
        self,
        queries: np.ndarray,
        owner: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray],
        blocked: SharedExclusion | None,
        where: Where | None = None,
    ) -> Found:
        if where is not None:
            return self.search_within(queries, k, searchable_rows(where.allowed, exclude[0], blocked), where.gathered)
        rerank_with = self.item_vectors if self.rerank else None
        ids, scores = search_batch(self.index, queries, owner, k, exclude, rerank_with, blocked)
        return ids, scores, None

    def search_user(
        self, queries: np.ndarray, k: int, seen: np.ndarray, blocked: SharedExclusion | None, where: Where | None = None
    ) -> Found:
        if where is not None:
            return self.search_within(queries, k, searchable_rows(where.allowed, seen, blocked), where.gathered)
        ids, scores = search_excluding(self.index, queries[None], k, [seen], blocked)
        return ids[0], scores[0], None

    def search_within(self, queries: np.ndarray, k: int, searchable: np.ndarray, gathered: Gathered | None) -> Found:
        """Top-k of each (n, d) query over the ``searchable`` rows, the path planned by selectivity."""
        return search_filtered(
            self.index,
            self.item_vectors,
            queries,
            k,
            searchable,
            exact_max_rows=self.exact_max_rows,
            slot_cost=self.slot_cost,
            gathered=gathered,
        )
