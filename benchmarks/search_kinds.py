"""Which FAISS index searches a trained model's interests cheapest at a served recall@50 >= 0.95.

    python -m benchmarks.search_kinds --root INDEX_ROOT

In process, one thread, the service's own path (retrieval/engine.py): the users' interest vectors
from the exported ONNX tower, near-copy interests grouped (``--dedup-cosine``), one search call
per micro-batch of 16 users with each user's history excluded, re-scoring against all K and the
score merge. Each index kind is built over the model's item table and scored by the served recall
gate (index/gate.py, the one query set of the gate, `remi index status` and the serving benchmarks:
sample users of every history length, recall@50 of the served answers against the same engine over
an exact index) and by its search + merge CPU time per user. `remi reindex --kind auto` makes the
same measurement over its own candidates (index/auto.py) and records it in the manifest. Why: on a
trained model the HNSW search is most of a request's CPU (docs/operations.md "Serving cost of a
trained model"), so a cheaper index at the same recall is a serving lever. Writes
benchmarks/results/search_kinds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np

from benchmarks import harness
from benchmarks.harness import save_results

KINDS = [  # (label, FAISS factory string, search knobs)
    ("hnsw M16", "HNSW16", {"efSearch": 48}),
    ("hnsw M32", "HNSW32", {"efSearch": 48}),
    ("hnsw M48", "HNSW48", {"efSearch": 48}),
    ("hnsw M48 ef96", "HNSW48", {"efSearch": 96}),
    ("ivf-flat 256 nprobe 16", "IVF256,Flat", {"nprobe": 16}),
    ("ivf-flat 256 nprobe 32", "IVF256,Flat", {"nprobe": 32}),
    ("ivf-flat 1024 nprobe 32", "IVF1024,Flat", {"nprobe": 32}),
    ("pq32x4 fast-scan + refine x4", "PQ32x4fs,RFlat", {"k_factor": 4}),
    ("ivf256 pq32x4 fast-scan + refine x4, nprobe 64", "IVF256,PQ32x4fs,RFlat", {"k_factor": 4, "nprobe": 64}),
    ("exact (flat)", "Flat", {}),
]


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "search_kinds")
    ap.add_argument("--root", type=Path, required=True, help="index root (`remi reindex` output) of a trained model")
    ap.add_argument("--users", type=int, default=1000, help="users of the served recall gate (index/gate.py)")
    ap.add_argument("--dedup-cosine", type=float, default=0.94, help="REMI_INTEREST_DEDUP_COSINE")
    return ap


def build(spec: str, knobs: dict[str, Any], vectors: np.ndarray) -> tuple[faiss.Index, float]:
    t0 = time.perf_counter()
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if "HNSW" in spec:
        cast(faiss.IndexHNSW, faiss.downcast_index(index)).hnsw.efConstruction = 200
    index.train(vectors)
    index.add(vectors)
    concrete: Any = faiss.downcast_index(index)  # HNSW, IndexRefine or IVF: the factory string decides
    if "efSearch" in knobs:
        concrete.hnsw.efSearch = knobs["efSearch"]
    if "k_factor" in knobs:
        concrete.k_factor = knobs["k_factor"]
    if "nprobe" in knobs:
        base = concrete.base_index if "k_factor" in knobs else index
        faiss.extract_index_ivf(base).nprobe = knobs["nprobe"]
    return index, time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from index.gate import ServedGate, artifact_queries
    from retrieval.store import load_current

    loaded = load_current(args.root, threads=1)
    arts = loaded.artifacts
    gate = ServedGate(arts, artifact_queries(arts, args.users), args.dedup_cosine)
    vectors = gate.engine(gate.exact).item_vectors
    searched = float(gate.interests.searched.sum(1).mean())
    rows = []
    for label, spec, knobs in KINDS:
        index, build_s = build(spec, knobs, vectors)
        measured = gate.measure(index)
        row = {"kind": label, "factory": spec, "knobs": knobs, "recall_at_50": round(measured.recall, 4),
               "ms_per_user": round(measured.us_per_user / 1000, 3), "searched_per_user": round(searched, 3),
               "build_s": round(build_s, 1)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"meta": {"root": str(args.root), "users": len(gate.queries), "items": int(vectors.shape[0]),
                     "dedup_cosine": args.dedup_cosine, "gate": gate.describe()}, "rows": rows}  # fmt: skip


def report(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [
        "# Index kinds on a trained model's interests (`python -m benchmarks.search_kinds`)",
        "",
        f"{m['items']:,} items, {m['users']:,} users of the served recall gate (index/gate.py: sample histories of "
        f"every length, seen items excluded), interest dedup cosine {m['dedup_cosine']}, k = 50, micro-batches of "
        "16, one thread. `recall@50` = the served answers against the same engine over an exact index; `ms / user` "
        "= search + merge CPU per user (the tower's run left out). Only the index differs between rows.",
        "",
        "| index | recall@50 | ms / user | interests searched | build s |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['kind']} | {r['recall_at_50']:.4f} | {r['ms_per_user']:.3f} | {r['searched_per_user']:.2f} "
            f"| {r['build_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    save_results(args.results, args.name, result, report(result))


if __name__ == "__main__":
    main()
