"""Filtered search by selectivity: recall@50 against exact filtered search, and latency, per path.

    nice -n 19 flock /tmp/heavy.lock python -m benchmarks.filtered_search

For each catalogue size (default 100k and 1M items, d = 64) an HNSW index is built with
index/build.py's ``build_faiss`` (the served builder; ``--hnsw-m`` / ``--ef-construction`` /
``--ef-search``). Item vectors are synthetic: unit vectors around 2,000 random topic centres
(noise 0.6), queries are perturbed item vectors, so the data has the clustered shape of trained
item tables rather than uniform noise. Filters are a categorical attribute of 1,000 values drawn
uniformly per item, filtered with ``in`` on as many values as give the selectivity (50% / 10% /
1% / 0.1%), evaluated by the service's own mask code (remi/attributes.py ``allowed_mask``, its time
is the ``mask ms`` column); the allowed set is therefore independent of the vectors.

Paths (retrieval/filtered.py ``search_filtered``): ``graph`` = the HNSW index with a bitmap ID
selector and the served beam max(efSearch, k) (the selector alone); ``graph-wide`` = the same
with the beam widened as the planner's graph path does (retrieval/filtered.py ``graph_beam``: up to
4 / selectivity, capped at 2048); ``exact`` = the matrix product over the allowed rows; ``plan`` =
the planner's choice, with the exact fallback for short graph lists. Ground truth: exact search
over the allowed rows. Queries go ``--per-call`` at a time (default 4: one user's K interests, as
the service searches them), one FAISS and one BLAS thread (the service's setting).

Latency is the CPU time of the searching thread per call, i.e. per user (``time.thread_time``): on a shared
machine (this one runs training at normal priority while benchmarks run at nice 19) wall time
mostly measures waiting for a core; wall p50 is recorded beside it. Results are saved after
each catalogue size. Writes benchmarks/results/filtered_search.{json,md}.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy: one BLAS thread, as one FAISS thread
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Literal  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.harness import md_table, save_results  # noqa: E402
from index.build import build_faiss  # noqa: E402
from remi.attributes import Attribute, Condition, ItemAttributes, allowed_mask  # noqa: E402
from retrieval.filtered import (  # noqa: E402
    EXACT_FALLBACK_ROWS,
    EXACT_MAX_ROWS,
    EXACT_MAX_SHARE,
    GRAPH_EF_MAX,
    GRAPH_WIDEN,
    search_exact,
    search_filtered,
)

N_VALUES = 1000  # distinct values of the filtered attribute
SHARES = (0.5, 0.1, 0.01, 0.001)
# label, the path search_filtered takes, widened beam
PATHS: tuple[tuple[str, Literal["plan", "graph", "exact"], bool], ...] = (
    ("graph", "graph", False),
    ("graph-wide", "graph", True),
    ("exact", "exact", True),
    ("plan", "plan", True),
)


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "filtered_search")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="catalogue sizes")
    ap.add_argument("--queries", type=int, nargs="+", default=[100, 30], help="queries per size (same order)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument(
        "--hnsw-m", type=int, nargs="+", default=[16], help="HNSW M per size (same order; the served default is 48)"
    )
    ap.add_argument(
        "--ef-construction", type=int, nargs="+", default=[40], help="per size (same order; served default 200)"
    )
    ap.add_argument("--ef-search", type=int, default=64, help="HNSW efSearch (the served default)")
    ap.add_argument("--build-threads", type=int, default=2, help="FAISS threads for the build only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-call", type=int, default=4, help="query vectors per search call (one user's K interests)")
    ap.add_argument(
        "--exact-only",
        action="store_true",
        help="no HNSW build: only the exact path (the planner's choice at <= 20k allowed rows)",
    )
    ap.add_argument("--shares", type=float, nargs="+", default=list(SHARES), help="selectivities to measure")
    return ap


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Unit vectors around random topic centres (the clustered shape of a trained item table)."""
    topic = rng.integers(0, len(centres), size=n)
    x = centres[topic] + 0.6 * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    unit: np.ndarray = x.astype(np.float32)
    return unit


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k (allowed items) that were found, over queries with any truth."""
    hits, total = 0, 0
    for f, t in zip(found, truth, strict=True):
        t_set = set(t[t >= 0].tolist())
        hits += len(t_set & set(f[f >= 0].tolist()))
        total += len(t_set)
    return hits / total if total else 1.0


def run_size(n: int, n_queries: int, m: int, ef_construction: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(2000, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = clustered(n, args.dim, rng, centres)
    queries = vectors[rng.choice(n, n_queries, replace=False)] + 0.3 * rng.normal(size=(n_queries, args.dim)).astype(
        np.float32
    ) / np.sqrt(args.dim)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    faiss.omp_set_num_threads(args.build_threads)
    t0 = time.perf_counter()
    index = (
        faiss.IndexFlatIP(args.dim)  # never searched: the exact path reads the item table
        if args.exact_only
        else build_faiss(vectors, "hnsw", {"m": m, "ef_construction": ef_construction, "ef_search": args.ef_search})
    )
    build_s = time.perf_counter() - t0
    print(f"{n} items: HNSW M={m} efC={ef_construction} built in {build_s:.1f} s", flush=True)
    faiss.omp_set_num_threads(1)
    codes = rng.integers(0, N_VALUES, size=n).astype(np.int32)
    attributes = ItemAttributes(
        [Attribute("category", "categorical", 0, tuple(f"c{i}" for i in range(N_VALUES)))],
        codes[None],
        np.zeros((0, n)),
        n,
    )
    rows: list[dict[str, Any]] = []
    for share in ([] if args.exact_only else [1.0]) + list(args.shares):
        picked = tuple(f"c{i}" for i in range(max(1, round(share * N_VALUES))))
        t0 = time.perf_counter()
        c0 = time.thread_time()
        for _ in range(20):
            allowed = allowed_mask(attributes, (Condition("category", "in", picked),))
        mask_ms = (time.thread_time() - c0) / 20 * 1000  # CPU time, as the query latencies
        truth, _ = search_exact(vectors, queries, args.k, allowed)
        for label, path, widen in [p for p in PATHS if p[1] == "exact"] if args.exact_only else PATHS:
            found = np.full((n_queries, args.k), -1, dtype=np.int64)
            taken: dict[str, int] = {}
            times, cpu = [], []
            for i in range(0, n_queries, args.per_call):
                call = queries[i : i + args.per_call]
                t0, c0 = time.perf_counter(), time.thread_time()
                ids, _, chosen = search_filtered(index, vectors, call, args.k, allowed, path, widen=widen)
                cpu.append(time.thread_time() - c0)
                times.append(time.perf_counter() - t0)
                found[i : i + len(call)] = ids
                taken[chosen] = taken.get(chosen, 0) + 1
            lat = np.asarray(cpu) * 1000
            wall = np.asarray(times) * 1000
            short = int(((found >= 0).sum(axis=1) < min(args.k, int(allowed.sum()))).sum())
            rows.append(
                {
                    "items": n,
                    "selectivity": share,
                    "allowed": int(allowed.sum()),
                    "path": label,
                    "chosen": taken,
                    "recall_at_50": round(recall(found, truth), 4),
                    "short_lists": short,
                    "cpu_mean_ms": round(float(lat.mean()), 3),
                    "cpu_p50_ms": round(float(np.percentile(lat, 50)), 3),
                    "cpu_p99_ms": round(float(np.percentile(lat, 99)), 3),
                    "wall_p50_ms": round(float(np.percentile(wall, 50)), 3),
                    "mask_ms": round(mask_ms, 3),
                    "queries": n_queries,
                    "hnsw_m": m,
                    "ef_construction": ef_construction,
                    "ef_search": args.ef_search,
                    "build_s": round(build_s, 1),
                }
            )
            r = rows[-1]
            print(
                f"  {share:>6.1%} {label:10s} recall {r['recall_at_50']:.3f} cpu {r['cpu_mean_ms']:.3f} ms "
                f"short {short} chosen {taken}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    rows: list[dict[str, Any]] = []
    for i, n in enumerate(args.sizes):
        pick = min(i, len(args.queries) - 1), min(i, len(args.hnsw_m) - 1), min(i, len(args.ef_construction) - 1)
        rows += run_size(n, args.queries[pick[0]], args.hnsw_m[pick[1]], args.ef_construction[pick[2]], args)
        report(rows, [m for m in args.sizes if any(r["items"] == m for r in rows)], args, argv)


def report(rows: list[dict[str, Any]], sizes: list[int], args: argparse.Namespace, argv: list[str] | None) -> None:
    """Saves (and prints) the table of the sizes measured so far."""
    headers = [
        "items",
        "selectivity",
        "allowed",
        "path",
        "chosen",
        "recall@50",
        "short",
        "cpu mean ms",
        "cpu p50 ms",
        "cpu p99 ms",
        "wall p50 ms",
    ]
    table = [
        [
            f"{r['items']:,}",
            f"{r['selectivity']:.1%}",
            f"{r['allowed']:,}",
            r["path"],
            ", ".join(f"{k} {v}" for k, v in sorted(r["chosen"].items())),
            f"{r['recall_at_50']:.3f}",
            r["short_lists"],
            f"{r['cpu_mean_ms']:.3f}",
            f"{r['cpu_p50_ms']:.3f}",
            f"{r['cpu_p99_ms']:.3f}",
            f"{r['wall_p50_ms']:.3f}",
        ]
        for r in rows
    ]
    setup = "; ".join(
        (
            f"{n:,} items: no index (--exact-only)"
            if args.exact_only
            else f"{n:,} items: HNSW M={r['hnsw_m']} efConstruction={r['ef_construction']} "
            f"efSearch={r['ef_search']} (built in {r['build_s']} s wall)"
        )
        + f", {r['queries']} queries, mask {r['mask_ms']} ms CPU"
        for n in sizes
        for r in [next(x for x in rows if x["items"] == n)]
    )
    markdown = (
        f"# Filtered search: recall@{args.k} against exact filtered search, latency per query, by path\n\n"
        f"`python -m benchmarks.filtered_search {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"synthetic clustered unit vectors (d = {args.dim}), random categorical filter (independent of the "
        f"vectors), one thread, {args.per_call} query vectors per call (one user's interests); latency = CPU "
        f"time of the searching thread per call. {setup}. Planner (retrieval/filtered.py): exact at <= "
        f"{EXACT_MAX_ROWS:,} allowed rows or <= {EXACT_MAX_SHARE:.0%} of the catalogue; else the graph with "
        f"the beam widened up to {GRAPH_WIDEN:g} / selectivity while that fits {GRAPH_EF_MAX:,}; past the cap "
        f"exact up to {EXACT_FALLBACK_ROWS:,} allowed rows. `chosen` counts calls; `short` = queries whose "
        "list held fewer than min(k, allowed) items; 100% = no filter.\n\n" + md_table(headers, table) + "\n"
    )
    save_results(args.results, args.name, {"args": vars(args), "rows": rows}, markdown)


if __name__ == "__main__":
    main()
