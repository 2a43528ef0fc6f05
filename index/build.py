"""Building, measuring and saving the FAISS inner-product item index (loading one is retrieval/store.py).

Kinds (all inner product, one FAISS row per item; ``remi.contract.ItemVocabulary`` maps rows to items):

* ``flat``  — exact brute force (IndexFlatIP).
* ``hnsw``  — graph search (IndexHNSWFlat): params ``m``, ``ef_construction``, ``ef_search``.
* ``ivfpq`` — inverted lists + product quantisation (IndexIVFPQ), optionally re-ranked with the
  exact vectors (IndexRefineFlat): params ``nlist``, ``pq_m``, ``nbits``, ``nprobe``, ``refine``.

``auto`` follows the FAISS guidelines ("Guidelines to choose an index"): exact search while it
is cheap, HNSW while memory is not the constraint, IVF-PQ beyond; the thresholds are backed by
``benchmarks/index.py`` (see benchmarks/results/index.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.params import DEFAULTS, MIN_RECALL
from remi.contract import (
    FORMAT_VERSION,
    INDEX_FILE,
    IndexManifest,
    file_entries,
    utc_now,
    write_manifest,
)
from remi.errors import RemiError
from retrieval.merge import merge_by_score
from retrieval.search import apply_search_params, graph_ef, needs_rerank, rerank

log = logging.getLogger("remi.index")

KINDS = ("flat", "hnsw", "ivfpq", "auto")
FLAT_MAX_ITEMS = 20_000  # up to here exact search of 4 interests costs under a millisecond on one core
HNSW_MAX_ITEMS = 10_000_000  # ~0.65 kB/item at d = 64, M = 48: beyond this, memory argues for IVF-PQ

# Search-time knobs that calibration walks (cheapest first) until recall reaches the target.
# Fine steps where trained models land (the serving cost grows with ef): the cheapest that passes.
EF_LADDER = (48, 56, 64, 72, 80, 96, 112, 128, 160, 192, 256, 384, 512, 768, 1024)
NPROBE_LADDER = (8, 16, 32, 64, 128, 256, 512, 1024)


def choose_kind(n_items: int) -> str:
    """The ``auto`` choice for a catalogue size."""
    if n_items <= FLAT_MAX_ITEMS:
        return "flat"
    if n_items <= HNSW_MAX_ITEMS:
        return "hnsw"
    return "ivfpq"


def resolve_params(kind: str, n_items: int, dim: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults for a kind with unset sizes derived from the data (nlist ~ 4 sqrt(N), pq_m ~ d / 4)."""
    if kind not in DEFAULTS:
        raise RemiError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    params = {**DEFAULTS[kind], **{k: v for k, v in (overrides or {}).items() if v is not None}}
    unknown = set(params) - set(DEFAULTS[kind])
    if unknown:
        raise RemiError(f"index kind {kind} has no parameter(s) {', '.join(sorted(unknown))}")
    if kind == "ivfpq":
        if params["nlist"] is None:
            params["nlist"] = int(min(max(1, 4 * math.isqrt(n_items)), max(1, n_items // 39)))
        if params["pq_m"] is None:
            params["pq_m"] = next(m for m in (dim // 4, dim // 2, dim, 1) if m >= 1 and dim % m == 0)
        if dim % params["pq_m"]:
            raise RemiError(f"pq_m={params['pq_m']} must divide the dimension {dim}")
        params["nprobe"] = min(params["nprobe"], params["nlist"])
    return params


def build_faiss(vectors: np.ndarray, kind: str, params: dict[str, Any]) -> faiss.Index:
    """Builds (trains and fills) an index of one kind over (I, d) float32 vectors."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        storage = params.get("storage", "flat")
        hnsw: faiss.IndexHNSW
        if storage == "flat":
            hnsw = faiss.IndexHNSWFlat(d, int(params["m"]), faiss.METRIC_INNER_PRODUCT)
        elif storage in SQ_TYPES:
            make_sq: Any = faiss.IndexHNSWSQ  # faiss's stubs type the quantiser kind as a class, SWIG takes its int
            hnsw = make_sq(d, SQ_TYPES[storage], int(params["m"]), faiss.METRIC_INNER_PRODUCT)
            hnsw.train(x)
        else:
            raise RemiError(f"unknown HNSW storage {storage!r}; choose one of flat, {', '.join(SQ_TYPES)}")
        hnsw.hnsw.efConstruction = int(params["ef_construction"])
        index = hnsw
    elif kind == "ivfpq":
        fast_scan = bool(params.get("fast_scan", False))
        if fast_scan and int(params["nbits"]) != 4:
            raise RemiError(f"IVF-PQ fast-scan codes have 4 bits, not --nbits {params['nbits']}")
        codes = f"PQ{int(params['pq_m'])}x4fs" if fast_scan else f"PQ{int(params['pq_m'])}x{int(params['nbits'])}"
        spec = f"IVF{int(params['nlist'])},{codes}"
        index = faiss.index_factory(d, spec + (",RFlat" if params["refine"] else ""), faiss.METRIC_INNER_PRODUCT)
        if not fast_scan:
            # index_factory turns on polysemous training, which only serves polysemous_ht search (never
            # set here): ~90% of the build at 20k items (25 s -> 2.5 s on one core), for nothing.
            vars(faiss)["downcast_index"](faiss.extract_index_ivf(index)).do_polysemous_training = False
        # FAISS wants 30-256 points per list (64 keeps 1M builds short), and the PQ codebooks ~39 per
        # centroid (a few inverted lists, e.g. one for a fast-scan of every code, would starve them)
        sample = max(64 * int(params["nlist"]), 1024 * 2 ** int(params["nbits"]))
        train = x if n <= sample else x[np.sort(np.random.default_rng(0).choice(n, sample, replace=False))]
        index.train(train)
    else:
        raise RemiError(f"unknown index kind {kind!r}")
    index.add(x)
    apply_search_params(index, kind, params)
    return index


SQ_TYPES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 50, group: int = 1) -> np.ndarray:
    """Ground truth for recall: exact inner-product top-k rows of every query (``group`` > 1: of
    every user's merged answer over its ``group`` consecutive queries, as the service merges them)."""
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    scores, rows = exact.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(vectors)))
    return _answers(rows, scores, k, group)


def _answers(rows: np.ndarray, scores: np.ndarray, k: int, group: int) -> np.ndarray:
    """(Q, k) per-query rows -> (Q / group, k) merged answers by score (group 1: unchanged)."""
    if group <= 1:
        return rows
    users = len(rows) // group
    shape = (users, group, rows.shape[1])
    merged, _, _ = merge_by_score(rows[: users * group].reshape(shape), scores[: users * group].reshape(shape), k)
    return merged


def recall_at(
    index: faiss.Index,
    vectors: np.ndarray,
    queries: np.ndarray,
    k: int = 50,
    truth: np.ndarray | None = None,
    group: int = 1,
) -> float:
    """Mean overlap of the index's top-k with the exact inner-product top-k.

    ``group`` > 1: the queries are users' ``group`` interests in a row, and what is compared is
    each user's merged answer (retrieval/merge.py), the list the service returns.
    """
    k = min(k, len(vectors))
    truth = exact_top(vectors, queries, k, group) if truth is None else truth
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if needs_rerank(index):  # as the service searches it: the whole beam, re-ranked exactly
        depth = min(max(k, graph_ef(index) or k), len(vectors))
        found_scores, found = index.search(queries, depth)
        found, found_scores = rerank(found, found_scores, vectors, queries)
        found, found_scores = found[:, :k], found_scores[:, :k]
    else:
        found_scores, found = index.search(queries, k)
    found = _answers(found, np.where(found >= 0, found_scores, -np.inf), k, group)
    hits = [len(np.intersect1d(t, f[f >= 0], assume_unique=False)) for t, f in zip(truth, found, strict=True)]
    return float(np.mean(hits) / k)


TUNED = {"hnsw": ("ef_search", EF_LADDER), "ivfpq": ("nprobe", NPROBE_LADDER)}


def calibrate(
    index: faiss.Index,
    kind: str,
    params: dict[str, Any],
    vectors: np.ndarray,
    queries: np.ndarray,
    target: float,
    group: int = 1,
) -> tuple[dict[str, Any], float, dict[str, float]]:
    """Walks the search knob up its ladder until recall@50 reaches ``target``.

    The cheapest setting that meets the target is the fastest one that does, so ``auto`` builds
    meet the recall gate at any catalogue size without hand-tuning. Returns the chosen params,
    their recall and every (value -> recall) tried.
    """
    key, ladder = TUNED[kind]
    truth = exact_top(vectors, queries, 50, group)
    limit = params.get("nlist", float("inf"))
    tried: dict[str, float] = {}
    best = dict(params)
    recall = 0.0
    for value in [v for v in ladder if v <= limit] or [ladder[0]]:
        best = {**params, key: value}
        apply_search_params(index, kind, best)
        recall = recall_at(index, vectors, queries, 50, truth, group)
        tried[str(value)] = round(recall, 4)
        if recall >= target:
            break
    return best, recall, tried


def write_faiss(index: faiss.Index, path: Path) -> None:
    """Writes ``index`` through a Python file: a write error (a full disk) is then an OSError naming
    the file, as any other write of the job; FAISS's own file writer prints its errors on stderr
    and raises a RuntimeError that hides the errno."""
    try:
        with path.open("wb") as fh:
            faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise


def build_index_folder(
    vectors: np.ndarray,
    out: Path,
    kind: str,
    model_version: str,
    queries: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
    min_recall: float = MIN_RECALL,
    answers_of: int = 1,
) -> IndexManifest:
    """Builds an index into the (existing, empty) folder ``out`` and writes its manifest.

    Recall@50 against exact search is measured on ``queries`` (real interest vectors) or, when
    none are given, on a sample of the item vectors themselves; below ``min_recall`` it raises.
    ``answers_of`` = K > 1 (``recall_of = "answers"``): ``queries`` are users' K interests in a row
    and the recall is that of each user's merged top-50, the list the service returns; a trained
    model's merged answers reach 0.95 at a smaller efSearch than its single interests do.
    """
    n, dim = vectors.shape
    chosen = choose_kind(n) if kind == "auto" else kind
    resolved = resolve_params(chosen, n, dim, params)
    t0 = time.perf_counter()
    index = build_faiss(vectors, chosen, resolved)
    build_seconds = time.perf_counter() - t0
    if queries is None or not len(queries):
        source = "items"
        queries = vectors[np.random.default_rng(0).choice(n, min(n, 1000), replace=False)]
        answers_of = 1
    else:
        source = "answers" if answers_of > 1 else "interests"
    calibration = None
    if chosen == "flat":
        recall = None
    elif TUNED[chosen][0] in (params or {}):  # set explicitly: measure, do not tune
        recall = recall_at(index, vectors, queries, 50, group=answers_of)
    else:
        resolved, recall, tried = calibrate(index, chosen, resolved, vectors, queries, min_recall, answers_of)
        calibration = {"param": TUNED[chosen][0], "target": min_recall, "tried": tried}
    log.info(
        "index built",
        extra={"kind": chosen, "params": resolved, "items": n, "seconds": round(build_seconds, 2), "recall@50": recall},
    )
    if recall is not None and recall < min_recall:
        raise RemiError(
            f"{chosen} index recall@50 is {recall:.4f} against exact search, below the threshold {min_recall}; "
            "raise its parameters (e.g. --hnsw-m, --ef-search, --nprobe, --refine) or lower --min-recall"
        )
    return save_index_folder(
        index,
        out,
        kind=chosen,
        params=resolved,
        model_version=model_version,
        build_seconds=round(build_seconds, 3),
        recall_at_50=recall,
        recall_queries=len(queries),
        recall_source=source,
        calibration=calibration,
    )


def save_index_folder(index: faiss.Index, out: Path, **fields: Any) -> IndexManifest:
    """Writes ``index`` and its manifest (``fields``: what the build measured) into the folder ``out``."""
    write_faiss(index, out / INDEX_FILE)
    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        n_items=int(index.ntotal),
        dim=int(index.d),
        faiss_version=faiss.__version__,
        created_at=utc_now(),
        files=file_entries(out, [INDEX_FILE]),
        **fields,
    )
    write_manifest(out, manifest)
    return manifest
