"""The index build of a version (``remi reindex``, ``remi index build``): which gate, and whether
an existing version already is what the settings ask for.

``recall_of = "answers"`` (the default) gates on the served answers (index/gate.py) and, for
``--kind auto``, picks the cheapest candidate that passes (index/auto.py). ``"interests"`` keeps
the interest-vector gate of index/build.py (each interest's own top-50, stricter), where ``auto``
picks the kind by item count; so does a model without sample histories (item vectors as queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.auto import build_served_folder
from index.build import TUNED, build_index_folder, choose_kind, resolve_params
from index.gate import ServedGate, artifact_queries
from index.params import AUTO_BUDGET_S, DEFAULTS, GATE_DEDUP_COSINE, GATE_MIN_WEIGHT, GATE_USERS, MIN_RECALL
from index.probe import interest_queries
from remi.artifacts import Artifacts
from remi.contract import ArtifactManifest, IndexManifest
from remi.errors import RemiError


@dataclass(frozen=True)
class GateSettings:
    """The served gate's settings (IndexSettings' gate_* fields) and auto's time budget."""

    users: int = GATE_USERS
    dedup_cosine: float = GATE_DEDUP_COSINE
    min_weight: float = GATE_MIN_WEIGHT
    budget_s: float = AUTO_BUDGET_S

    def recorded(self) -> dict[str, Any]:
        """What a manifest's ``gate`` must hold for a version to count as built with these settings."""
        return {"users_asked": self.users, "dedup_cosine": self.dedup_cosine, "min_weight": self.min_weight}


def check_recall_of(recall_of: str) -> None:
    if recall_of not in ("interests", "answers"):
        raise RemiError(f"unknown recall_of {recall_of!r}; choose interests or answers")


def build_version_index(
    arts: Artifacts,
    out: Path,
    kind: str,
    params: dict[str, Any] | None = None,
    min_recall: float = MIN_RECALL,
    recall_of: str = "answers",
    settings: GateSettings | None = None,
) -> IndexManifest:
    """Builds the index of ``arts``' item table into the folder ``out`` and writes its manifest."""
    check_recall_of(recall_of)
    settings = settings or GateSettings()
    queries = artifact_queries(arts, settings.users)
    if recall_of == "answers" and len(queries):
        gate = ServedGate(arts, queries, settings.dedup_cosine, settings.min_weight)
        return build_served_folder(
            arts.item_vectors, out, kind, arts.model_version, gate, params, min_recall, settings.budget_s
        )
    return build_index_folder(
        arts.item_vectors,
        out,
        kind,
        arts.model_version,
        interest_queries(arts, max_users=settings.users) if len(queries) else None,
        params,
        min_recall,
    )


def up_to_date(
    old: IndexManifest,
    source: ArtifactManifest,
    kind: str,
    params: dict[str, Any] | None,
    min_recall: float,
    recall_of: str,
    settings: GateSettings | None = None,
) -> bool:
    """Whether the version with manifest ``old`` was built from ``source`` with these settings (a
    search knob that calibration chose is not compared unless given explicitly)."""
    if old.model_version != source.model_version:
        return False
    given = dict(params or {})
    if recall_of == "answers" and old.recall_source == "served":
        gate = old.gate or {}
        settings = settings or GateSettings()
        if any(gate.get(key) != value for key, value in settings.recorded().items()):
            return False
        if gate.get("target") != min_recall or gate.get("given") != given:
            return False
        if kind == "auto":
            return old.candidates is not None
        return old.candidates is None and old.kind == kind and same_params(old, source, given)
    if recall_of == "answers":
        return False  # built by an older gate, or without sample histories: build again
    chosen = choose_kind(source.n_items) if kind == "auto" else kind
    return old.recall_source == "interests" and old.kind == chosen and same_params(old, source, given)


def same_params(old: IndexManifest, source: ArtifactManifest, given: dict[str, Any]) -> bool:
    """``old``'s parameters (defaults filled in) are what ``given`` resolves to now, the tuned knob aside."""
    wanted = resolve_params(old.kind, source.n_items, source.dim, given)
    tuned = TUNED.get(old.kind, (None,))[0]
    skip = {tuned} if tuned and tuned not in given else set()
    have = {**DEFAULTS.get(old.kind, {}), **old.params}
    return {k: v for k, v in have.items() if k not in skip} == {k: v for k, v in wanted.items() if k not in skip}
