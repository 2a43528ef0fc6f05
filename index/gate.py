"""The recall gate on what is served: users' merged answers through the engine's own path.

The gate used to search the tower's interest vectors straight in FAISS, without the service's
exclusions, interest dedup or beam (``max(efSearch, k + SLACK)``), on held-out users' histories
only; the serving benchmarks measured their own query set (training users' last 50 events)
through the engine. The two disagreed (recall .864 vs .966 at the same efSearch on one model)
and the gate picked an efSearch the served answers did not need. Here there is one query set
and one measurement, used by the gate, ``remi index status`` (the recorded figures) and the
benchmarks' recall column:

* **Queries** (:func:`gate_queries`): users as the service sees them, one history each, the last
  ``seq_len`` events (oldest first) from the artifacts' sample histories, with every length from
  1 to ``seq_len`` present: lengths the sample lacks (a k-core leaves few short users, but a new
  user arrives with one event) are filled with the first events of longer histories.
* **Answers** (:class:`ServedGate`): each user's k = 50 merged answer from
  :class:`retrieval.engine.Engine` (the tower, interest dedup as configured, the planner's
  grouping, ``search_batch`` with the user's history excluded, re-scoring, the score merge), in
  micro-batches of 16 as at C = 32 with 2 workers, one FAISS thread.
* **Recall@50** of an index: overlap of its served answer with the answer the same engine
  serves over an exact (flat) index, averaged over users. Dedup's own loss against searching
  every interest exactly is a service setting, reported beside it (``dedup_recall``), not charged
  to the index.
* **Compute per user**: CPU time of the answer's search, re-scoring, merge and encoding (the
  tower's run is the same for every index and left out), per user, on the calling thread.

The blocklist is empty at build time (it is live and changes without a reindex), and request
filters are planned per query by their own cost model (retrieval/filtered.py), so neither is part
of the gate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from remi.artifacts import Artifacts
from remi.contract import FORMAT_VERSION, IndexManifest, utc_now
from retrieval.engine import Engine
from retrieval.planner import Interests, plan
from retrieval.query import Query, Timings
from retrieval.search import exact_index
from retrieval.store import LoadedVersion

GATE_K = 50  # the answer length the gate measures (the service's default k)
GATE_USERS = 1000  # users in the gate's query set
BATCH = 16  # users per engine call: a micro-batch at C = 32 with 2 workers
SHORT = 4  # histories up to this length count as short in the per-length recall


@dataclass(frozen=True)
class GateQueries:
    """The gate's users: each one's history as the service reads it (item indices, oldest first)."""

    histories: list[np.ndarray]
    seq_len: int
    filled: int  # how many are the first events of a longer sample history (lengths the sample lacked)
    k: int = GATE_K
    asked: int = GATE_USERS  # the users asked for (fewer when the sample holds fewer)

    def __len__(self) -> int:
        return len(self.histories)

    def lengths(self) -> np.ndarray:
        return np.array([len(h) for h in self.histories], dtype=np.int64)

    def queries(self) -> list[Query]:
        """One service query per user: k answers, seen items excluded, the score merge (the defaults)."""
        return [Query(h, self.k) for h in self.histories]

    def buckets(self) -> dict[str, np.ndarray]:
        """Users by history length: short (1-4 events), medium, and a full window (``seq_len``)."""
        lengths = self.lengths()
        out = {
            f"1-{SHORT}": lengths <= SHORT,
            f"{SHORT + 1}-{self.seq_len - 1}": (lengths > SHORT) & (lengths < self.seq_len),
            f"{self.seq_len}": lengths >= self.seq_len,
        }
        return {name: mask for name, mask in out.items() if mask.any()}

    def describe(self) -> dict[str, Any]:
        lengths = self.lengths()
        return {
            "users": len(self),
            "users_asked": self.asked,
            "k": self.k,
            "exclude_seen": True,
            "merge": "score",
            "history_length": {
                "min": int(lengths.min()) if len(lengths) else 0,
                "median": float(np.median(lengths)) if len(lengths) else 0.0,
                "max": int(lengths.max()) if len(lengths) else 0,
            },
            "users_by_length": {name: int(mask.sum()) for name, mask in self.buckets().items()},
            "filled_short": self.filled,
        }


def gate_queries(
    history: np.ndarray, mask: np.ndarray, users: int = GATE_USERS, k: int = GATE_K, seed: int = 0
) -> GateQueries:
    """About ``users`` histories from (S, L) sample histories (left-aligned, ``mask`` true on events).

    Every length 1..L gets ``max(1, users // (4 L))`` users: the sample's own histories of that
    length, else the first events of longer ones (a user earlier in their life), drawn with
    ``seed``; the rest of the ``users`` are the sample's other histories in file order (held-out
    users: the data's own mix of lengths). A ``users`` below L still gets one user per length. The
    list is shuffled (``seed``) so micro-batches mix lengths, as real traffic does.
    """
    seq_len = history.shape[1]
    rng = np.random.default_rng(seed)
    natural = [h[m][-seq_len:] for h, m in zip(history, mask, strict=True) if m.any()]
    if not natural:
        return GateQueries([], seq_len, 0, k, users)
    lengths = np.array([len(h) for h in natural])
    per_length = max(1, users // (4 * seq_len))
    kept: list[int] = []  # the sample's own histories that cover their length
    fills: list[np.ndarray] = []
    for length in range(1, seq_len + 1):
        own = np.flatnonzero(lengths == length)[:per_length]
        kept += own.tolist()
        longer = np.flatnonzero(lengths > length)
        missing = per_length - len(own)
        if missing > 0 and len(longer):
            for row in rng.choice(longer, size=missing, replace=len(longer) < missing):
                fills.append(natural[int(row)][:length])
    taken = set(kept)
    rest = [i for i in range(len(natural)) if i not in taken][: max(0, users - len(kept) - len(fills))]
    chosen = [natural[i] for i in kept + rest] + fills
    order = rng.permutation(len(chosen))
    return GateQueries([chosen[i] for i in order], seq_len, len(fills), k, users)


def artifact_queries(arts: Artifacts, users: int = GATE_USERS) -> GateQueries:
    """The gate's users for one exported model (its sample histories)."""
    return gate_queries(arts.sample_history, arts.sample_mask, users)


@dataclass(frozen=True)
class Measurement:
    """One index measured at the gate."""

    recall: float  # mean recall@k of the served answers against the exact index's served answers
    us_per_user: float  # CPU microseconds of search + merge + encoding per user, one thread
    recall_by_length: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return {
            "recall": round(self.recall, 4),
            "us_per_user": round(self.us_per_user, 1),
            "recall_by_length": {name: round(value, 4) for name, value in self.recall_by_length.items()},
        }


def loaded_pair(arts: Artifacts, index: faiss.Index, folder: Path | None = None) -> LoadedVersion:
    """An index not yet published, paired with its artifacts as the engine loads a version (its
    manifest a placeholder: the engine reads the index itself, never its manifest)."""
    concrete = faiss.downcast_index(index)
    kind = (
        "hnsw"
        if isinstance(concrete, faiss.IndexHNSW)
        else "flat"
        if isinstance(concrete, faiss.IndexFlat)
        else "ivfpq"
    )
    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        kind=kind,
        params={},
        n_items=int(index.ntotal),
        dim=int(index.d),
        model_version=arts.model_version,
        build_seconds=0.0,
        recall_at_50=None,
        recall_queries=0,
        recall_source="served",
        faiss_version=faiss.__version__,
        created_at=utc_now(),
        files={},
    )
    return LoadedVersion("gate", folder or arts.folder, arts, manifest, index)


class ServedGate:
    """Measures indexes over one model's items by the answers the service would give.

    Built once per build: the tower runs once over the gate's users, the exact index's answers
    are the reference (and their timing is the flat candidate's compute); each index measured
    after that costs one pass of searches and merges.
    """

    def __init__(
        self,
        arts: Artifacts,
        queries: GateQueries,
        dedup_cosine: float,
        min_weight: float = 0.0,
        batch: int = BATCH,
    ) -> None:
        t0 = time.perf_counter()
        self.arts, self.gate_queries, self.batch = arts, queries, batch
        self.dedup_cosine, self.min_weight = dedup_cosine, min_weight
        self.queries = queries.queries()
        self.exact = exact_index(arts.item_vectors)
        with one_faiss_thread():
            engine = self.engine(self.exact)
            self.interests = engine.interests(self.queries, Timings())
            truth, self.exact_us = self._answers(engine, self.interests)
        self.truth = [set(answer) for answer in truth]
        self.dedup_recall = self._dedup_recall() if engine.dedup else 1.0
        self.seconds = time.perf_counter() - t0  # the tower, the exact answers and dedup's own recall

    def engine(self, index: faiss.Index, dedup: bool = True) -> Engine:
        """The service's engine over ``index`` with the gate's dedup settings (``dedup`` False: none)."""
        cosine, weight = (self.dedup_cosine, self.min_weight) if dedup else (1.0, 0.0)
        return Engine(loaded_pair(self.arts, index), 1, cosine, weight)

    def measure(self, index: faiss.Index) -> Measurement:
        """Recall@k and compute per user of ``index`` (its search parameters as they are set)."""
        with one_faiss_thread():
            answers, us = self._answers(self.engine(index), self.interests)
        hits = np.array([len(t & set(a)) / max(1, len(t)) for t, a in zip(self.truth, answers, strict=True)])
        by_length = {name: float(hits[mask].mean()) for name, mask in self.gate_queries.buckets().items()}
        return Measurement(float(hits.mean()) if len(hits) else 1.0, us, by_length)

    def exact_measurement(self) -> Measurement:
        """The exact index's own figures: recall 1 by definition, its compute from the reference pass."""
        return Measurement(1.0, self.exact_us, {name: 1.0 for name in self.gate_queries.buckets()})

    def describe(self) -> dict[str, Any]:
        return {
            **self.gate_queries.describe(),
            "dedup_cosine": self.dedup_cosine,
            "min_weight": self.min_weight,
            "batch": self.batch,
            "dedup_recall": round(self.dedup_recall, 4),
            "seconds": round(self.seconds, 1),
        }

    def _answers(self, engine: Engine, interests: Interests) -> tuple[list[list[str]], float]:
        """Every user's answer (item ids) and the CPU microseconds per user it took."""
        answers: list[list[str]] = []
        spent = 0.0
        for start in range(-self.batch, len(self.queries), self.batch):  # the first batch twice: a warm-up
            first = max(0, start)
            asked = self.queries[first : first + self.batch]
            part = _rows(interests, first, len(asked))
            t0 = time.thread_time()
            found = answer_batch(engine, asked, part)
            if start >= 0:
                spent += time.thread_time() - t0
                answers += found
        return answers, 1e6 * spent / max(1, len(self.queries))

    def _dedup_recall(self) -> float:
        """How much of the all-interest exact answer the configured dedup keeps (the service's own loss)."""
        with one_faiss_thread():
            engine = self.engine(self.exact, dedup=False)
            full, _ = self._answers(engine, engine.interests(self.queries, Timings()))
        hits = [len(set(f) & t) / max(1, len(f)) for f, t in zip(full, self.truth, strict=True)]
        return float(np.mean(hits)) if hits else 1.0


def answer_batch(engine: Engine, asked: Sequence[Query], interests: Interests) -> list[list[str]]:
    """The engine's answers to ``asked`` (all with a history) as item-id lists: its plan, searches,
    merges and encoding (Engine.recommend after the tower)."""
    answers: list[list[str]] = [[] for _ in asked]
    timings = Timings()
    for group in plan(asked, interests.searched):
        for position, result in engine.answer_group(group, asked, interests, timings):
            answers[position] = result.item_ids
    return answers


def _rows(interests: Interests, start: int, count: int) -> Interests:
    part = slice(start, start + count)
    return replace(
        interests,
        vectors=interests.vectors[part],
        weights=interests.weights[part],
        active=interests.active[part],
        searched=interests.searched[part],
    )


class one_faiss_thread:  # noqa: N801 - used as a context manager, named like one
    """FAISS on one OpenMP thread inside (the service's setting), the build's threads restored after."""

    def __enter__(self) -> None:
        self.before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        faiss.omp_set_num_threads(self.before)
