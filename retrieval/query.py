"""What goes into the query path and what comes out: one user's query, its answer, a batch's timings.

Plain data, shared by the engine (retrieval/engine.py), its planner (retrieval/planner.py) and
their callers (the service's batcher and routes, benchmarks). Item indices are the model's
(1-based, :class:`remi.contract.ItemVocabulary`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from remi.attributes import Condition

NO_ITEMS = np.zeros(0, dtype=np.int64)  # an empty item list (no history, no blocklist)
NO_ITEMS.setflags(write=False)


@dataclass(frozen=True)
class Query:
    """One user's request after the history lookup; ``history`` holds item indices, oldest first."""

    history: np.ndarray
    k: int
    exclude_seen: bool = True
    merge: str = "score"
    # Item indices no answer may hold (the live blocklist, service/blocklist.py), seen items or not;
    # one shared read-only array for every query of a blocklist version.
    blocked: np.ndarray = field(default_factory=lambda: NO_ITEMS)
    filtered: bool = False  # a filter or exclude_items was given: search the allowed items only, say how many
    conditions: tuple[Condition, ...] = ()  # checked against the engine's attributes (service/filters.py)
    exclude_items: np.ndarray | None = None  # item indices the request excludes

    def seen(self) -> np.ndarray:
        """The item indices this user's answer must not hold: the history when it excludes seen items.

        The blocked items are not among them: they are the same for every query of a list
        version and go to the search as one shared exclusion (Engine.shared_exclusion)."""
        return self.history if self.exclude_seen else NO_ITEMS


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
