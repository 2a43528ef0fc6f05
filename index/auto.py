"""``--kind auto``: build candidate indexes, gate each on served answers, keep the cheapest that passes.

Which index serves a model cheapest at a recall target depends on the model: a 300-step model of
87k items needs HNSW M = 48 at efSearch 112-128 for recall@50 0.95 of its served answers, where
M = 64 passes at 80 and a PQ fast-scan of every code with an 8x exact re-rank at about the same
cost (benchmarks/results/default_index.md), and a clustered synthetic catalogue passes at M = 48,
efSearch 64. So ``auto`` measures instead of ruling by item count:

* **Candidates** (:func:`candidate_specs`): exact search (``flat``: the gate's reference, measured
  anyway); HNSW with M in :data:`HNSW_MS`, each graph built once and served with every storage of
  :data:`HNSW_STORAGES` (the SQ8 / fp16 variants take the flat graph's links and encode the
  vectors: seconds, not a rebuild); PQ fast-scan of every code (4-bit codes, one inverted list)
  with an exact re-rank, and IVF-PQ fast-scan with re-rank. Up to :data:`FLAT_ONLY_ITEMS` items
  only exact search is tried: it costs under ~0.4 ms a user there and is exact.
* **Each candidate** walks its search knob up a ladder (efSearch, the re-rank factor, nprobe),
  cheapest first, until the served recall@50 (index/gate.py) reaches the target; its cost is the
  gate's CPU time per user at that setting. A walk stops early once a setting costs more than the
  cheapest candidate that passed (a wider one would cost more still).
* **Budget**: the candidate list is fixed (at most 1 + 3 x 3 + 2 indexes, four builds), a graph is
  not started when the time already spent plus its expected build (the last graph's, scaled by M)
  would pass ``budget_s``; whatever passed by then competes.

The winner is the passing candidate with the least measured compute per user; the others go
into the version manifest as runners-up (``candidates``), with their recall, cost and build time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.build import EF_LADDER, NPROBE_LADDER, SQ_TYPES, TUNED, build_faiss, resolve_params, save_index_folder
from index.gate import GATE_K, Measurement, ServedGate
from index.params import AUTO_BUDGET_S, KIND_PARAMS, MIN_RECALL
from remi.contract import IndexManifest
from remi.errors import RemiError
from retrieval.search import SLACK, apply_search_params

log = logging.getLogger("remi.index")

FLAT_ONLY_ITEMS = 10_000  # up to here auto serves exact search without trying anything else
HNSW_MS = (48, 64, 32)  # graph degrees tried, the likeliest winner first (it bounds the others' walks)
HNSW_STORAGES = ("flat", "sq8", "fp16")
REFINE_LADDER = (4, 6, 8, 12, 16, 24, 32)  # exact re-rank of refine x k PQ candidates


def served_ef_ladder(k: int = GATE_K) -> tuple[int, ...]:
    """efSearch values that change a served answer: the engine walks ``max(efSearch, k + SLACK)``
    (retrieval/search.py), so every value below that beam is the beam itself."""
    return tuple(sorted({max(v, k + SLACK) for v in EF_LADDER}))


@dataclass(frozen=True)
class Spec:
    """One candidate: a kind with its parameters, and the search knob walked up its ladder (if any)."""

    kind: str
    params: dict[str, Any]
    knob: str | None = None
    ladder: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        p = self.params
        if self.kind == "hnsw":
            return f"hnsw M{p['m']} {p.get('storage', 'flat')}"
        if self.kind == "ivfpq":
            codes = f"PQ{p['pq_m']}x{4 if p.get('fast_scan') else p['nbits']}{'fs' if p.get('fast_scan') else ''}"
            lists = "" if p["nlist"] == 1 else f"IVF{p['nlist']} "
            return f"{lists}{codes}{' + refine' if p['refine'] else ''}"
        return self.kind


@dataclass
class Outcome:
    """A candidate after its walk: its best setting's figures, or why it stopped short."""

    spec: Spec
    params: dict[str, Any]
    measurement: Measurement | None
    build_s: float
    passed: bool
    stopped: str  # passed, cost (dearer than a passing candidate), ladder (never reached the target), budget
    tried: dict[str, list[float]] = field(default_factory=dict)  # knob value -> [recall, us per user]

    def record(self, chosen: bool = False) -> dict[str, Any]:
        m = self.measurement
        return {
            "label": self.spec.label,
            "kind": self.spec.kind,
            "params": self.params,
            "recall": None if m is None else round(m.recall, 4),
            "us_per_user": None if m is None else round(m.us_per_user, 1),
            "build_s": round(self.build_s, 2),
            "passed": self.passed,
            "stopped": self.stopped,
            "chosen": chosen,
            "tried": self.tried,
        }


@dataclass
class Selection:
    """What a build serves: the index, its outcome, and every candidate tried (auto)."""

    index: faiss.Index
    chosen: Outcome
    candidates: list[Outcome]
    seconds: float


def candidate_specs(n_items: int, dim: int, given: dict[str, Any] | None = None) -> list[Spec]:
    """The candidates auto tries for a catalogue, exact search first (the reference).

    ``given`` parameters (flags or REMI_INDEX_*) pin the candidates of their kind (``--hnsw-m 32``:
    HNSW M = 32 in each storage) and rule out the other approximate kinds; a given search knob is
    measured as is instead of walked.
    """
    given = dict(given or {})
    kinds = {kind for kind, params in KIND_PARAMS.items() if set(given) & set(params)}
    if len(kinds) > 1:
        raise RemiError(f"auto: parameters of more than one kind given ({', '.join(sorted(given))})")
    specs = [Spec("flat", {})]
    if n_items <= FLAT_ONLY_ITEMS:
        return specs
    hnsw = [
        {"m": m, "storage": storage}
        for m in ([given["m"]] if "m" in given else HNSW_MS)
        for storage in ([given["storage"]] if "storage" in given else HNSW_STORAGES)
    ]
    pq_m = dim // 2 if dim % 4 == 0 else None  # fast-scan packs codes in pairs of 4-bit sub-quantisers
    ivf = []
    if pq_m is not None:
        ivf = [
            ({"nlist": 1, "pq_m": pq_m, "nbits": 4, "fast_scan": True, "nprobe": 1}, "refine", REFINE_LADDER),
            ({"pq_m": pq_m, "nbits": 4, "fast_scan": True, "refine": 4}, "nprobe", NPROBE_LADDER),
        ]
    for kind, variants in (("hnsw", [(p, "ef_search", served_ef_ladder()) for p in hnsw]), ("ivfpq", ivf)):
        if kinds and kind not in kinds:
            continue
        for params, knob, ladder in variants:
            resolved = resolve_params(kind, n_items, dim, {**params, **given})
            if knob == "nprobe":
                ladder = tuple(v for v in ladder if v <= resolved["nlist"])
            walked = knob not in given
            specs.append(Spec(kind, resolved, knob if walked else None, ladder if walked else ()))
    return _unique(specs)


def _unique(specs: list[Spec]) -> list[Spec]:
    out: list[Spec] = []
    for spec in specs:
        if all(spec.kind != s.kind or spec.params != s.params or spec.knob != s.knob for s in out):
            out.append(spec)
    return out


def walk(index: faiss.Index, spec: Spec, gate: ServedGate, target: float, bound_us: float) -> Outcome:
    """The cheapest setting of ``spec``'s knob that reaches ``target`` (or its params as they are)."""
    values: list[int | None] = list(spec.ladder) if spec.knob else [None]
    tried: dict[str, list[float]] = {}
    params, measurement, stopped = dict(spec.params), None, "ladder"
    for value in values:
        params = dict(spec.params) if value is None else {**spec.params, str(spec.knob): value}
        apply_search_params(index, spec.kind, params)
        measurement = gate.measure(index)
        if value is not None:
            tried[str(value)] = [round(measurement.recall, 4), round(measurement.us_per_user, 1)]
        if measurement.recall >= target:
            stopped = "passed"
            break
        if measurement.us_per_user > bound_us:
            stopped = "cost"
            break
    return Outcome(spec, params, measurement, 0.0, stopped == "passed", stopped, tried)


def hnsw_storages(vectors: np.ndarray, specs: list[Spec]) -> Iterator[tuple[Spec, faiss.Index, float]]:
    """The HNSW candidates of one M: the graph built once over the float vectors, then served from
    each storage (an SQ8 / fp16 copy of the vectors takes the same links); build seconds each."""
    m, ef_construction = int(specs[0].params["m"]), specs[0].params["ef_construction"]
    t0 = time.perf_counter()
    graph: Any = build_faiss(vectors, "hnsw", {**specs[0].params, "storage": "flat"})  # an IndexHNSWFlat
    graph_s = time.perf_counter() - t0
    for spec in specs:
        storage = spec.params.get("storage", "flat")
        if storage == "flat":
            yield spec, graph, graph_s
            continue
        t1 = time.perf_counter()
        make_sq: Any = faiss.IndexHNSWSQ  # faiss's stubs type the quantiser kind as a class, SWIG takes its int
        index: Any = make_sq(vectors.shape[1], SQ_TYPES[storage], m, faiss.METRIC_INNER_PRODUCT)
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        index.train(x)
        index.hnsw = graph.hnsw  # a copy of the links (SWIG assigns the struct by value)
        index.hnsw.efConstruction = int(ef_construction)
        index.storage.add(x)
        index.ntotal = graph.ntotal
        yield spec, index, graph_s + time.perf_counter() - t1


def select(
    vectors: np.ndarray,
    gate: ServedGate,
    specs: list[Spec],
    target: float = MIN_RECALL,
    budget_s: float = AUTO_BUDGET_S,
) -> Selection:
    """Walks every candidate of ``specs`` (flat first: the gate's own exact index) and keeps the one
    with the least compute per user among those that reach ``target``."""
    t0 = time.perf_counter()
    outcomes: list[Outcome] = []
    best: tuple[Outcome, faiss.Index] | None = None
    last_build: tuple[float, int] | None = None  # seconds and M of the last graph built
    for group in _build_groups(specs):
        bound = best[0].measurement.us_per_user if best and best[0].measurement else math.inf
        estimate = _estimate(group[0], last_build)
        if outcomes and time.perf_counter() - t0 + estimate > budget_s:
            outcomes += [Outcome(s, s.params, None, 0.0, False, "budget") for s in group]
            continue
        for spec, index, build_s in _indexes(vectors, gate, group):
            outcome = walk(index, spec, gate, target, bound) if spec.kind != "flat" else _exact(gate, spec)
            outcome.build_s = build_s
            outcomes.append(outcome)
            log.info("auto candidate", extra=outcome.record())
            if outcome.passed and (best is None or _cost(outcome) < _cost(best[0])):
                best = (outcome, index)
                bound = _cost(outcome)
            if spec.kind == "hnsw":
                last_build = (build_s, int(spec.params["m"]))
    if best is None:
        raise RemiError(f"no index candidate reached recall@50 {target} of the served answers")
    ranked = sorted(outcomes, key=lambda o: (o is not best[0], not o.passed, _cost(o)))
    return Selection(best[1], best[0], ranked, time.perf_counter() - t0)


def _cost(outcome: Outcome) -> float:
    return outcome.measurement.us_per_user if outcome.measurement is not None else math.inf


def _exact(gate: ServedGate, spec: Spec) -> Outcome:
    return Outcome(spec, {}, gate.exact_measurement(), 0.0, True, "passed")


def _build_groups(specs: list[Spec]) -> list[list[Spec]]:
    """Candidates that share a build (the storages of one HNSW graph), in order."""
    groups: list[list[Spec]] = []
    for spec in specs:
        key = _graph_key(spec)
        if groups and key is not None and _graph_key(groups[-1][0]) == key:
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def _graph_key(spec: Spec) -> tuple[Any, ...] | None:
    if spec.kind != "hnsw":
        return None
    return (spec.params["m"], spec.params["ef_construction"])


def _estimate(spec: Spec, last_build: tuple[float, int] | None) -> float:
    """Expected build seconds of an HNSW graph from the last one (build time grows about with M)."""
    if spec.kind != "hnsw" or last_build is None:
        return 0.0
    seconds, m = last_build
    return seconds * int(spec.params["m"]) / max(1, m)


def _indexes(vectors: np.ndarray, gate: ServedGate, group: list[Spec]) -> Iterator[tuple[Spec, faiss.Index, float]]:
    spec = group[0]
    if spec.kind == "flat":
        yield spec, gate.exact, 0.0
    elif spec.kind == "hnsw":
        yield from hnsw_storages(vectors, group)
    else:
        t0 = time.perf_counter()
        index = build_faiss(vectors, spec.kind, spec.params)
        yield spec, index, time.perf_counter() - t0


def fixed_spec(kind: str, n_items: int, dim: int, given: dict[str, Any] | None) -> Spec:
    """One kind's build (``--kind hnsw`` etc.): its knob walked on the served ladder unless given."""
    params = resolve_params(kind, n_items, dim, given)
    knob = TUNED.get(kind, (None,))[0]
    if knob is None or knob in (given or {}):
        return Spec(kind, params)
    ladder = served_ef_ladder() if kind == "hnsw" else tuple(v for v in NPROBE_LADDER if v <= params["nlist"])
    return Spec(kind, params, knob, ladder or (params[knob],))


def build_served_folder(
    vectors: np.ndarray,
    out: Path,
    kind: str,
    model_version: str,
    gate: ServedGate,
    params: dict[str, Any] | None = None,
    min_recall: float = MIN_RECALL,
    budget_s: float = AUTO_BUDGET_S,
) -> IndexManifest:
    """Builds the index a version serves into ``out``, gated on served answers, and writes its manifest.

    ``kind`` auto: the cheapest candidate that passes (:func:`select`); another kind: that kind,
    its search knob calibrated on the gate unless given. Below ``min_recall`` it raises.
    """
    n, dim = vectors.shape
    if kind == "auto":
        selection = select(vectors, gate, candidate_specs(n, dim, params), min_recall, budget_s)
    else:
        selection = _one(vectors, gate, fixed_spec(kind, n, dim, params), min_recall)
    chosen = selection.chosen
    measurement = chosen.measurement
    if not chosen.passed or measurement is None:
        recall = measurement.recall if measurement is not None else 0.0
        raise RemiError(
            f"{chosen.spec.kind} index recall@50 is {recall:.4f} of the served answers, below the threshold "
            f"{min_recall}; raise its parameters (e.g. --hnsw-m, --ef-search, --nprobe, --refine), use --kind "
            "auto, or lower --min-recall"
        )
    log.info(
        "index built",
        extra={"kind": chosen.spec.kind, "params": chosen.params, "items": n, **measurement.summary()},
    )
    calibration = None
    if chosen.spec.knob:
        tried = {value: figures[0] for value, figures in chosen.tried.items()}
        calibration = {"param": chosen.spec.knob, "target": min_recall, "tried": tried}
    return save_index_folder(
        selection.index,
        out,
        kind=chosen.spec.kind,
        params=chosen.params,
        model_version=model_version,
        build_seconds=round(chosen.build_s, 3),
        recall_at_50=None if chosen.spec.kind == "flat" else round(measurement.recall, 6),
        recall_queries=len(gate.queries),
        recall_source="served",
        calibration=calibration,
        gate={
            **gate.describe(),
            "target": min_recall,
            "given": dict(params or {}),
            "recall_by_length": measurement.summary()["recall_by_length"],
        },
        us_per_user=round(measurement.us_per_user, 1),
        candidates=[o.record(o is chosen) for o in selection.candidates] if kind == "auto" else None,
        selection_seconds=round(gate.seconds + selection.seconds, 1) if kind == "auto" else None,
    )


def _one(vectors: np.ndarray, gate: ServedGate, spec: Spec, target: float) -> Selection:
    """A single kind's build and walk, as a selection of one."""
    t0 = time.perf_counter()
    if spec.kind == "flat":
        return Selection(gate.exact, _exact(gate, spec), [], 0.0)
    index = build_faiss(vectors, spec.kind, spec.params)
    build_s = time.perf_counter() - t0
    outcome = walk(index, spec, gate, target, math.inf)
    outcome.build_s = build_s
    return Selection(index, outcome, [outcome], time.perf_counter() - t0)
