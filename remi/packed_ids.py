"""Item ids of a large catalogue in a few flat arrays instead of a million Python strings.

:class:`~remi.contract.ItemVocabulary` keeps a list of raw ids and a dict from id to item index:
about 160 bytes per item in Python objects (measured at 1M ids like ``i123456``: 84 MB for the
list, 74 MB for the dict), private to every worker process, which no page cache can share. Above
:data:`PACKED_MIN_ITEMS` the service loads :class:`PackedVocabulary` instead: the ids in one
fixed-width byte array by FAISS row (``S<w>``, ``w`` = the longest id in bytes) for answers, and
for lookups the ids' 64-bit string hashes, sorted, with the row of each: ``w + 12`` bytes per
item (19 MB at 1M ids like ``i123456``). A lookup is one ``np.searchsorted`` over the request's
hashes, as fast as the dict (measured below); strings were kept only while loading.

Lookups trust a 64-bit hash (Python's ``hash``, SipHash with a per-process random key; each
worker builds its own table, so the key never leaves the process): ids of the catalogue that
collide are detected at load (the plain vocabulary is used then), and an id outside the
catalogue matches one inside with probability n / 2**64 (5e-14 at 1M items) per lookup,
against a wrong history item in one answer. Byte comparison on every lookup cost 5x the dict.

It is an :class:`ItemVocabulary` (same methods, same answers); ``raw_ids`` is built on first use
only, for callers outside the serving path.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from remi.contract import ItemVocabulary, parse_item_ids

PACKED_MIN_ITEMS = 250_000  # below this the dict costs < 40 MB per worker: not worth slower lookups
PACKED_MAX_WIDTH = 64  # ids longer than this (bytes) make the fixed-width table wasteful: keep the dict


def _line_bounds(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) byte offsets of every line; a final newline ends the last line."""
    breaks = np.flatnonzero(data == 0x0A)
    ends = breaks if len(data) and data[-1] == 0x0A else np.append(breaks, len(data))
    starts = np.concatenate([[0], breaks + 1])[: len(ends)]
    return starts.astype(np.int64), ends.astype(np.int64)


def _pack(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, chunk: int = 1 << 16) -> np.ndarray:
    """The lines as one (n,) ``S<width>`` array (NUL-padded), gathered in chunks to bound the temporaries."""
    out = np.zeros((len(starts), width), dtype=np.uint8)
    cols = np.arange(width)
    for lo in range(0, len(starts), chunk):
        s, n = starts[lo : lo + chunk, None], lengths[lo : lo + chunk, None]
        inside = cols < n
        out[lo : lo + chunk][inside] = data[(s + cols)[inside]]
    return out.view(f"S{width}").reshape(len(starts))


class PackedVocabulary(ItemVocabulary):
    """:class:`ItemVocabulary` over flat arrays (see the module docstring); build with :meth:`from_bytes`."""

    def __init__(self, ids: np.ndarray, keys: np.ndarray, rows: np.ndarray) -> None:
        self._ids = ids  # (n,) S<w>: raw id of FAISS row r, UTF-8, NUL-padded
        self._keys = keys  # (n,) int64, sorted: hash() of each id
        self._rows = rows  # (n,) int32: FAISS row of keys[i]
        self._raw_ids: list[str] | None = None
        self._dict: dict[str, int] | None = None

    @classmethod
    def from_bytes(cls, data: bytes, n_items: int, where: str | Path) -> ItemVocabulary:
        """``item_ids.txt`` -> a vocabulary: packed when large and ids are short, else the plain one.

        Validated by :func:`~remi.contract.parse_item_ids` (same refusals and messages); its
        strings are dropped once the arrays are built.
        """
        ids = parse_item_ids(data, n_items, where)
        if n_items < PACKED_MIN_ITEMS:
            return ItemVocabulary(ids)
        buf = np.frombuffer(data, dtype=np.uint8)
        starts, ends = _line_bounds(buf)
        lengths = ends[:n_items] - starts[:n_items]
        width = int(lengths.max())
        if width > PACKED_MAX_WIDTH:
            return ItemVocabulary(ids)
        hashes = np.fromiter(map(hash, ids), dtype=np.int64, count=n_items)
        order = np.argsort(hashes, kind="stable")
        keys = hashes[order]
        if (keys[1:] == keys[:-1]).any():  # two ids share a hash: the dict has no such problem
            return ItemVocabulary(ids)
        del ids
        return cls(_pack(buf, starts[:n_items], lengths, width), keys, order.astype(np.int32))

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, raw_id: object) -> bool:
        return isinstance(raw_id, str) and self.index_of(raw_id) is not None

    @property
    def n_items(self) -> int:
        return len(self._rows)

    @property
    def raw_ids(self) -> list[str]:
        """Every raw id by FAISS row; built on first use (the serving path never needs it)."""
        if self._raw_ids is None:
            self._raw_ids = [raw.decode() for raw in self._ids.tolist()]
        return self._raw_ids

    @raw_ids.setter
    def raw_ids(self, ids: list[str]) -> None:  # the base class assigns it; the arrays are the truth here
        raise AttributeError("a PackedVocabulary is read-only")

    @property
    def _index(self) -> dict[str, int]:
        """The base class's dict, built on first use: a method added to ItemVocabulary that reads it
        stays correct here (at the plain vocabulary's memory cost); the methods above never use it."""
        if self._dict is None:
            self._dict = {raw: index for index, raw in enumerate(self.raw_ids, start=self.first_index())}
        return self._dict

    @_index.setter
    def _index(self, index: dict[str, int]) -> None:
        raise AttributeError("a PackedVocabulary is read-only")

    def raw_id(self, index: int | np.integer[Any]) -> str:
        return str(self._ids[self.row_of(index)].decode())

    def raw_ids_of(self, indices: Iterable[int | np.integer[Any]] | np.ndarray) -> list[str]:
        array = indices if isinstance(indices, np.ndarray) else np.fromiter(indices, dtype=np.int64)
        return [raw.decode() for raw in self._ids[self.indices_to_rows(array)].tolist()]

    def _lookup(self, raw_ids: list[str]) -> np.ndarray:
        """Item index of each id, 0 where unknown."""
        hashes = np.fromiter(map(hash, raw_ids), dtype=np.int64, count=len(raw_ids))
        slots = np.minimum(np.searchsorted(self._keys, hashes), len(self._keys) - 1)
        found = self._keys[slots] == hashes
        return np.where(found, ItemVocabulary.rows_to_indices(self._rows[slots]), 0)

    def index_of(self, raw_id: str) -> int | None:
        index = int(self._lookup([raw_id])[0])
        return index or None

    def indices_of(self, raw_ids: Iterable[str]) -> tuple[np.ndarray, int]:
        ids = list(raw_ids)
        if not ids:
            return np.zeros(0, dtype=np.int64), 0
        indices = self._lookup(ids)
        known = indices[indices > 0]
        return known.astype(np.int64), len(ids) - len(known)
