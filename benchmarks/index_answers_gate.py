"""The served recall gate on an HNSW index version that is already built.

    python -m benchmarks.index_answers_gate ARTIFACTS ROOT [--target 0.95]

At 1M items one HNSW build takes ~10 minutes on this machine, and which efSearch the gate needs
does not change the graph. This walks reindex's own served ladder (index/auto.served_ef_ladder:
efSearch from the k = 50 beam up) with the recall gate of index/gate.py (sample users of every
history length, seen items excluded, recall@50 of the served answers against the same engine over
an exact index) on the graph of ROOT's current version, beside what its manifest recorded, with
the search + merge CPU per user (one thread) at each efSearch tried. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import faiss

from index.auto import Spec, served_ef_ladder, walk
from index.gate import ServedGate, artifact_queries
from remi.artifacts import load_artifacts
from remi.contract import read_current


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", type=Path, help="artifact folder the version was built from (`remi export`)")
    ap.add_argument("root", type=Path, help="index root whose current version (HNSW) is measured")
    ap.add_argument("--target", type=float, default=0.95, help="recall@50 the gate asks for")
    ap.add_argument("--dedup-cosine", type=float, default=0.94, help="the service's REMI_INTEREST_DEDUP_COSINE")
    args = ap.parse_args()
    arts = load_artifacts(args.artifacts)
    version = args.root / "versions" / str(read_current(args.root))
    manifest = json.loads((version / "manifest.json").read_text())
    index = faiss.read_index(str(version / "index.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    t0 = time.perf_counter()
    gate = ServedGate(arts, artifact_queries(arts), args.dedup_cosine)
    spec = Spec("hnsw", manifest["params"], "ef_search", served_ef_ladder())
    outcome = walk(index, spec, gate, args.target, math.inf)
    out = {
        "version": version.name,
        "recorded": {
            "ef_search": manifest["params"].get("ef_search"),
            "recall_at_50": manifest["recall_at_50"],
            "recall_source": manifest["recall_source"],
        },
        "served_gate": {
            "queries": gate.describe(),
            "ef_search": outcome.params["ef_search"],
            "passed": outcome.passed,
            "tried (recall, us per user)": outcome.tried,
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
