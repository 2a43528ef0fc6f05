"""The index builder's settings: kind, build and search parameters, recall gate, versions kept, and the
limits of the replacement check (index/compat.py).

In a module of its own (no FAISS or numpy import) so the CLI can generate its flags and show the
defaults in ``--help`` without loading FAISS: the help text and the builder read the same
numbers, so they cannot drift apart. ``DEFAULTS`` is the builder's per-kind view of the same
fields (``index/build.py``).
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

IndexKindChoice = Literal["flat", "hnsw", "ivfpq", "auto"]  # what to build; `auto` measures candidates (index/auto.py)
RecallOf = Literal["interests", "answers"]  # the recall gate's unit: one interest's list, or a user's answer
HnswStorage = Literal["flat", "fp16", "sq8"]  # how an HNSW index stores the item vectors
KIND_CHOICES: Final[tuple[str, ...]] = get_args(IndexKindChoice)

# Which settings field is which FAISS parameter of a kind (the builder's names: HNSW's ``m``).
KIND_PARAMS: Final[dict[str, dict[str, str]]] = {
    "flat": {},
    "hnsw": {"m": "hnsw_m", "ef_construction": "ef_construction", "ef_search": "ef_search", "storage": "hnsw_storage"},
    "ivfpq": {
        "nlist": "nlist",
        "pq_m": "pq_m",
        "nbits": "nbits",
        "nprobe": "nprobe",
        "refine": "refine",
        "fast_scan": "fast_scan",
    },
}


class IndexSettings(BaseSettings):
    """Every setting of an index build (`remi index build`, `remi reindex`), with its default.

    A parameter counts as *given* when a flag or a ``REMI_INDEX_*`` variable sets it
    (:meth:`given_params`): a given ``ef_search`` / ``nprobe`` is measured as is, an unset one is
    calibrated up its ladder until recall reaches ``min_recall`` (docs/operations.md, "Choosing the index").
    """

    model_config = SettingsConfigDict(env_prefix="REMI_INDEX_", extra="forbid")

    kind: IndexKindChoice = Field(
        "auto",
        description="Index kind: flat is exact search; auto builds the candidates (flat, HNSW M / storage, PQ "
        "fast-scan) and keeps the one with the least compute per user that passes --min-recall.",
    )
    min_recall: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Fail the build if recall@50 of the served answers against those over an exact index is below "
        "this.",
    )
    keep: int = Field(3, ge=1, description="Complete versions kept by reindex (current is never removed).")
    min_catalogue_overlap: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Reindex: refuse (unless --force) a model that knows less than this share of the serving "
        "catalogue's items.",
    )
    min_history_coverage: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Reindex: refuse (unless --force) a model that can read less than this share of the serving "
        "model's sample histories (the others would get cold-start answers).",
    )
    recall_of: RecallOf = Field(
        "answers",
        description="What --min-recall measures: each user's merged top-50, which is what the service returns "
        "(answers), or each interest's own top-50 (interests, stricter; auto then picks the kind by item count).",
    )
    gate_users: int = Field(
        1000, ge=1, description="Users (sample histories of every length) whose served answers the gate measures."
    )
    gate_dedup_cosine: float = Field(
        0.94,
        gt=0,
        le=1,
        description="The gate's interest dedup: set it to the service's REMI_INTEREST_DEDUP_COSINE (1 = off).",
    )
    gate_min_weight: float = Field(
        0.0, ge=0, lt=1, description="The gate's light-interest skip: the service's REMI_INTEREST_MIN_WEIGHT."
    )
    auto_budget_s: float = Field(
        900.0,
        gt=0,
        description="auto: build no further candidate once this many seconds have gone (or would go) into the "
        "search; the cheapest that passed so far is kept.",
    )

    # hnsw
    hnsw_m: int = Field(48, ge=2, description="HNSW: neighbours per node.")
    ef_construction: int = Field(200, ge=1, description="HNSW: build-time beam width.")
    ef_search: int = Field(
        64,
        ge=1,
        description="HNSW: search beam width; unset, the build picks the cheapest that meets --min-recall.",
    )

    hnsw_storage: HnswStorage = Field(
        "flat",
        description="HNSW: vector storage; fp16 / sq8 (2x / 4x smaller) re-rank the beam with the exact vectors.",
    )

    # ivfpq
    nlist: int | None = Field(None, ge=1, description="IVF-PQ: inverted lists (unset: 4 sqrt(items)).")
    pq_m: int | None = Field(None, ge=1, description="IVF-PQ: sub-quantisers, must divide d (unset: d / 4).")
    nbits: int = Field(8, ge=4, le=12, description="IVF-PQ: bits per sub-quantiser code.")
    nprobe: int = Field(
        32,
        ge=1,
        description="IVF-PQ: lists visited per query; unset, the build picks the cheapest that meets --min-recall.",
    )
    refine: int = Field(4, ge=0, description="IVF-PQ: re-rank refine x k candidates with the exact vectors; 0 = off.")
    fast_scan: bool = Field(
        False, description="IVF-PQ: 4-bit codes scanned with SIMD (FAISS fast-scan; needs --nbits 4)."
    )

    def given_params(self) -> dict[str, Any]:
        """The FAISS parameters set explicitly (flag or environment), by the builder's names.

        Unset ones are left to the builder (defaults, data-derived sizes, calibration). A parameter
        of another kind than the one built is refused there, as before.
        """
        fields = {field: param for params in KIND_PARAMS.values() for param, field in params.items()}
        return {fields[name]: getattr(self, name) for name in self.model_fields_set if name in fields}


def kind_defaults() -> dict[str, dict[str, Any]]:
    """The default FAISS parameters of each kind, read from :class:`IndexSettings`."""
    fields = IndexSettings.model_fields
    return {
        kind: {param: fields[field].default for param, field in params.items()} for kind, params in KIND_PARAMS.items()
    }


DEFAULTS: Final[dict[str, dict[str, Any]]] = kind_defaults()  # the builder's view (index/build.py)
# The builder's and the reindex job's keyword defaults, read from the settings (one source).
MIN_RECALL: Final[float] = IndexSettings.model_fields["min_recall"].default
KEEP: Final[int] = IndexSettings.model_fields["keep"].default
RECALL_OF: Final[str] = IndexSettings.model_fields["recall_of"].default
MIN_CATALOGUE_OVERLAP: Final[float] = IndexSettings.model_fields["min_catalogue_overlap"].default
MIN_HISTORY_COVERAGE: Final[float] = IndexSettings.model_fields["min_history_coverage"].default
GATE_USERS: Final[int] = IndexSettings.model_fields["gate_users"].default
GATE_DEDUP_COSINE: Final[float] = IndexSettings.model_fields["gate_dedup_cosine"].default
GATE_MIN_WEIGHT: Final[float] = IndexSettings.model_fields["gate_min_weight"].default
AUTO_BUDGET_S: Final[float] = IndexSettings.model_fields["auto_budget_s"].default
# Settings of `remi reindex` only (the replacement check, the versions kept): not flags of `remi index build`.
REINDEX_ONLY: Final[frozenset[str]] = frozenset({"keep", "min_catalogue_overlap", "min_history_coverage"})
