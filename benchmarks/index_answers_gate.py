"""The ``--recall-of answers`` gate measured on an index version that is already built.

    python -m benchmarks.index_answers_gate ARTIFACTS ROOT

At 1M items one HNSW build takes ~10 minutes on this machine; the answers gate does not change
the graph, only which efSearch calibration picks. This runs reindex's own calibration
(index/build.calibrate, same EF_LADDER, same interest queries from index/probe.interest_queries,
group = K: recall@50 of each user's merged top-50) on the graph of ROOT's current version, beside
the interest gate that reindex recorded, and times one request (K interests, top-50, one thread)
at both efSearch values. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.harness import timed
from index.build import calibrate
from index.probe import interest_queries
from remi.artifacts import load_artifacts
from remi.contract import read_current
from retrieval.search import apply_search_params


def request_ms(index: faiss.Index, params: dict[str, Any], queries: np.ndarray, k_interests: int, ef: int) -> float:
    """Milliseconds of one request's search (its K interest vectors, top-50) at ``ef``, one thread."""
    apply_search_params(index, "hnsw", {**params, "ef_search": ef})
    x = np.ascontiguousarray(queries[: 400 * k_interests], dtype=np.float32)
    index.search(x[: 8 * k_interests], 50)  # warm the mapped pages
    with timed() as took:
        index.search(x, 50)
    return round(1000 * took.wall_s / (len(x) / k_interests), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", type=Path, help="artifact folder the version was built from (`remi export`)")
    ap.add_argument("root", type=Path, help="index root whose current version (HNSW) is measured")
    ap.add_argument("--target", type=float, default=0.95, help="recall@50 the gate asks for")
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    arts = load_artifacts(args.artifacts)
    k_interests = int(arts.manifest.interests)
    queries = interest_queries(arts)
    version = args.root / "versions" / str(read_current(args.root))
    manifest = json.loads((version / "manifest.json").read_text())
    index = faiss.read_index(str(version / "index.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    params = {k: v for k, v in manifest["params"].items() if k != "ef_search"}
    t0 = time.perf_counter()
    best, recall, tried = calibrate(index, "hnsw", params, arts.item_vectors, queries, args.target, k_interests)
    ef_interests, ef_answers = int(manifest["params"]["ef_search"]), int(best["ef_search"])
    out = {
        "version": version.name,
        "queries": len(queries),
        "K": k_interests,
        "interests_gate": {
            "ef_search": ef_interests,
            "recall_at_50": manifest["recall_at_50"],
            "tried": (manifest.get("calibration") or {}).get("tried"),
        },
        "answers_gate": {
            "ef_search": ef_answers,
            "recall_at_50": round(recall, 4),
            "tried": tried,
            "seconds": round(time.perf_counter() - t0, 1),
        },
        "search_ms_per_request_1thread": {
            str(ef): request_ms(index, params, queries, k_interests, ef) for ef in sorted({ef_interests, ef_answers})
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
