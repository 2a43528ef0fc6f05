"""Default build and search parameters of each index kind.

In a module of its own (no FAISS import) so the CLI can show them in ``--help`` without loading
FAISS: the help text and the builder read the same numbers, so they cannot drift apart.
"""

from __future__ import annotations

from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"m": 48, "ef_construction": 200, "ef_search": 64},
    "ivfpq": {"nlist": None, "pq_m": None, "nbits": 8, "nprobe": 32, "refine": 4},
}
