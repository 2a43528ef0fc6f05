"""The masks (and gathered item rows) of repeated request filters, kept per model version.

A filter is usually one of a few (a market, a category, in stock): every request carrying it
would otherwise rebuild the same (I,) mask from the attribute columns and, on the exact path,
copy the same allowed rows out of the item table (10% of 100k items x d = 64: 2.5 MB per
request, most of a filtered request's cost). An entry holds both, read-only, keyed by the
filter's conditions in a canonical order; what varies per request (exclude_items, the user's
seen items, the blocklist) is applied on top of it, never written into it.

Entries are evicted least recently used beyond a byte budget (``REMI_FILTER_CACHE_MB``); 0
turns the cache off (every request builds its own mask, as before). One cache per Engine, so a
model reload starts empty.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from remi.attributes import Condition
from retrieval.filtered import GATHER_MAX_SHARE, Gathered

Key = tuple[tuple[str, str, tuple[str | float, ...], float | None], ...]


@dataclass(frozen=True)
class FilterEntry:
    """One filter's allowed rows: the mask, their count, and the gathered rows (small filters)."""

    mask: np.ndarray  # (I,) bool by FAISS row, read-only
    count: int
    gathered: Gathered | None

    @property
    def nbytes(self) -> int:
        return int(self.mask.nbytes + (self.gathered.nbytes if self.gathered is not None else 0))


def filter_key(conditions: Sequence[Condition]) -> Key:
    """The conditions in a canonical order (an AND does not depend on it); a bound only where it counts."""
    parts = [(c.attribute, c.op, c.values, c.bound if c.op in ("gte", "lte", "gt", "lt") else None) for c in conditions]
    return tuple(sorted(parts, key=repr))


class FilterCache:
    """LRU of :class:`FilterEntry` under a byte budget; safe to share between compute threads."""

    def __init__(self, budget_bytes: int, item_vectors: np.ndarray) -> None:
        self.budget = budget_bytes
        self.item_vectors = item_vectors  # (I, d) float32 by FAISS row: the gathered rows' source
        self._entries: OrderedDict[Key, FilterEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, conditions: Sequence[Condition], build: Callable[[], np.ndarray]) -> FilterEntry:
        """The entry of ``conditions``; ``build`` makes its mask on a miss."""
        key = filter_key(conditions)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            self.misses += 1
        entry = self.entry(build())
        if self.budget <= 0 or entry.nbytes > self.budget:
            return entry
        with self._lock:
            if key not in self._entries:
                self._entries[key] = entry
                self._bytes += entry.nbytes
                while self._bytes > self.budget and self._entries:
                    _, old = self._entries.popitem(last=False)
                    self._bytes -= old.nbytes
        return entry

    def entry(self, mask: np.ndarray) -> FilterEntry:
        """A read-only entry for ``mask``; the allowed rows are gathered where the exact path would gather them."""
        mask = np.asarray(mask, dtype=bool)
        mask.setflags(write=False)
        count = int(np.count_nonzero(mask))
        gathered = None
        if self.budget > 0 and 0 < count <= GATHER_MAX_SHARE * len(mask):
            gathered = Gathered.of(self.item_vectors, np.flatnonzero(mask))
        return FilterEntry(mask, count, gathered)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
