"""Item index benchmark: build time, memory, queries/s and recall@50 of flat / HNSW / IVF-PQ.

For each catalogue size (default 100k and 1M items, d = 64) it builds every index kind with
the library's own builder (index/build.py) and measures:

* build seconds (FAISS on all cores) and memory (the serialised index, which is what the
  service holds in RAM), in bytes per item too;
* requests/s for one request = a batch of K = 4 interest vectors at top-50, one request after
  another on one thread (one service worker per core), median of repeated timed blocks;
* recall@50 against exact search on the same 1,000 query vectors.

Vectors: no public dataset here has more than 24k items, so the catalogue is synthetic and
shaped like trained embeddings: Gaussian clusters (topics) with log-normal norms (popular items
have larger norms under sampled softmax); each query is a weighted mean of a few items of one
cluster, as an attention/capsule interest is. Ratios to flat search are computed in one run.

    python -m benchmarks.index                    # 100k and 1M (about 15-25 min on 2 cores)
    python -m benchmarks.index --sizes 100000     # quick

Writes benchmarks/results/index.json, index.md and index.png (recall vs requests/s).

A trained model instead of the synthetic catalogue (the 1M-item chain,
docs/results.md#a-trained-1m-item-model): with ``--artifacts ART --root ROOT`` it runs the real job,
``remi reindex --kind auto`` (recall gate on, calibration included), as a child process and reports
its wall seconds and peak RSS, then the
published version: kind and parameters the job chose, index bytes, recall@50 on the model's own
interest vectors (the gate's measure), and search milliseconds per request (K interests at
top-50, one thread, the index mapped as the service maps it):

    python -m benchmarks.index --artifacts /tmp/scale-1m/artifacts --root /tmp/scale-1m/root \
        --name index_trained_1m
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median
from typing import Any

import faiss
import numpy as np

from benchmarks.harness import machine, md_table, parser, save_results
from index.build import EF_LADDER, build_faiss, choose_kind, resolve_params
from index.params import DEFAULTS
from retrieval.search import apply_search_params

K, TOP = 4, 50


def clustered_items(
    n: int, d: int, seed: int, clusters: int, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 item vectors (Gaussian clusters, log-normal norms) and each item's cluster."""
    rng = rng or np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    assign = rng.integers(0, clusters, n)
    x = centres[assign] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x *= rng.lognormal(0.0, 0.35, (n, 1)).astype(np.float32)
    return np.ascontiguousarray(x), assign


def catalogue(n: int, d: int, seed: int = 0, clusters: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) clustered item vectors with log-normal norms and (1000, d) interest-like queries."""
    rng = np.random.default_rng(seed)
    x, assign = clustered_items(n, d, seed, clusters, rng)  # the queries continue the same stream
    queries = np.empty((1000, d), dtype=np.float32)
    members = [np.flatnonzero(assign == c) for c in range(clusters)]
    for i in range(len(queries)):
        pool = members[rng.integers(0, clusters)]
        picked = x[rng.choice(pool, size=min(len(pool), int(rng.integers(2, 6))), replace=False)]
        weights = rng.dirichlet(np.ones(len(picked)))
        queries[i] = weights @ picked
    return np.ascontiguousarray(x), queries


def settings(n: int, d: int) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """(kind, build params, search-time variants); search knobs vary without a rebuild."""
    ivf = resolve_params("ivfpq", n, d)
    return [
        ("flat", {}, [{}]),
        ("hnsw", {"m": 16, "ef_construction": 80}, [{"ef_search": e} for e in (64, 128)]),
        ("hnsw", {"m": 32, "ef_construction": 200}, [{"ef_search": e} for e in (64, 128, 256)]),
        # the defaults; auto's calibration walks this ladder until recall@50 >= the target
        ("hnsw", {"m": 48, "ef_construction": 200}, [{"ef_search": e} for e in EF_LADDER if e <= 768]),
        ("ivfpq", {**ivf, "refine": 0}, [{"nprobe": p} for p in (16, 64)]),
        ("ivfpq", {**ivf, "refine": 4}, [{"nprobe": p} for p in (64, 256)]),
    ]


def requests_per_second(index: faiss.Index, queries: np.ndarray, min_seconds: float, blocks: int = 5) -> float:
    """One request = K queries at top-50; median rate over blocks of back-to-back requests."""
    batches = queries.reshape(-1, K, queries.shape[1])
    index.search(batches[0], TOP)  # warm-up
    rates = []
    for _ in range(blocks):
        done, t0 = 0, time.perf_counter()
        while True:
            index.search(batches[done % len(batches)], TOP)
            done += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds / blocks and done >= 3:
                break
        rates.append(done / elapsed)
    return median(rates)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(t, f[f >= 0])) / TOP for t, f in zip(truth, found, strict=True)]))


def mark_auto(rows: list[dict[str, Any]], kind: str, target: float) -> None:
    """What ``--kind auto`` builds: the default build parameters of the chosen kind, with the
    search knob calibrated up the ladder until recall@50 reaches the target (index/build.py)."""
    if kind == "flat":
        next(r for r in rows if r["kind"] == "flat")["auto"] = True
        return
    defaults = {k: v for k, v in DEFAULTS[kind].items() if k not in ("ef_search", "nprobe") and v is not None}
    ladder = [r for r in rows if r["kind"] == kind and all(r["params"].get(k) == v for k, v in defaults.items())]
    passing = [r for r in ladder if r["recall@50"] >= target]
    (passing[0] if passing else ladder[-1])["auto"] = True


def run_size(n: int, d: int, seconds: float, threads: int, target: float = 0.95) -> list[dict[str, Any]]:
    x, queries = catalogue(n, d)
    faiss.omp_set_num_threads(threads)
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    _, truth = exact.search(queries, TOP)
    auto_kind = choose_kind(n)
    rows: list[dict[str, Any]] = []
    for kind, build_params, variants in settings(n, d):
        faiss.omp_set_num_threads(threads)
        first = {**resolve_params(kind, n, d, build_params), **variants[0]}
        t0 = time.perf_counter()
        index = build_faiss(x, kind, first)
        build_seconds = time.perf_counter() - t0
        memory = len(faiss.serialize_index(index))
        for variant in variants:
            params = {**first, **variant}
            apply_search_params(index, kind, params)
            faiss.omp_set_num_threads(threads)
            _, found = index.search(queries, TOP)
            faiss.omp_set_num_threads(1)  # per-request timing: one worker per core
            rps = requests_per_second(index, queries, seconds)
            row = {
                "items": n,
                "dim": d,
                "kind": kind,
                "params": params,
                "build_seconds": round(build_seconds, 2),
                "memory_mb": round(memory / 2**20, 1),
                "bytes_per_item": round(memory / n, 1),
                "requests_per_s": round(rps, 1),
                "recall@50": round(recall(found, truth), 4),
                "auto": False,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        del index
    mark_auto(rows, auto_kind, target)
    flat = next(r["requests_per_s"] for r in rows if r["kind"] == "flat")
    for row in rows:
        row["speedup_vs_flat"] = round(row["requests_per_s"] / flat, 1)
    return rows


def describe(params: dict[str, Any], kind: str) -> str:
    if kind == "flat":
        return "exact"
    if kind == "hnsw":
        return f"M={params['m']}, efC={params['ef_construction']}, efS={params['ef_search']}"
    refine = f", refine x{params['refine']}" if params["refine"] else ""
    return f"nlist={params['nlist']}, PQ{params['pq_m']}x{params['nbits']}, nprobe={params['nprobe']}{refine}"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["items"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["items"] == n:
                p = r["params"]
                label = {
                    "flat": "flat (exact)",
                    "hnsw": f"HNSW M={p.get('m')}",
                    "ivfpq": f"IVF-PQ{' + refine' if p.get('refine') else ''}",
                }[r["kind"]]
                groups.setdefault(label, []).append(r)
        for label, pts in groups.items():
            ax.plot([p["requests_per_s"] for p in pts], [p["recall@50"] for p in pts], "o-", label=label)
        for r in rows:
            if r["items"] == n and r["auto"]:
                ax.scatter([r["requests_per_s"]], [r["recall@50"]], s=220, facecolors="none", edgecolors="k", zorder=5)
                ax.annotate("auto", (r["requests_per_s"], r["recall@50"]), textcoords="offset points", xytext=(8, -14))
        ax.axhline(0.95, color="grey", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("requests/s, one thread (request = 4 interests, top-50)")
        ax.set_ylabel("recall@50 vs exact")
        ax.set_title(f"{n:,} items, d={rows[0]['dim']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_trained(artifacts: Path, root: Path, seconds: float) -> dict[str, Any]:
    """``remi reindex --kind auto`` on a real artifact folder (a child process), then its version measured."""
    import resource
    import subprocess
    import sys

    from index.probe import interest_queries
    from remi.contract import INDEX_FILE
    from retrieval.store import load_current

    argv = [sys.executable, "-m", "cli", "reindex", "--artifacts", str(artifacts), "--root", str(root)]
    argv += ["--kind", "auto", "--force"]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    job_seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux; the only child
    version = load_current(root)
    manifest = version.manifest
    queries = interest_queries(version.artifacts)
    faiss.omp_set_num_threads(1)
    rps = requests_per_second(version.index, queries[: len(queries) // K * K], seconds)
    size = (version.folder / INDEX_FILE).stat().st_size
    row = {
        "items": manifest.n_items,
        "dim": manifest.dim,
        "kind": manifest.kind,
        "params": manifest.params,
        "version": version.name,
        "reindex_seconds": round(job_seconds, 1),
        "build_seconds": manifest.build_seconds,
        "peak_rss_mb": round(peak_mb, 1),
        "index_mb": round(size / 2**20, 1),
        "bytes_per_item": round(size / manifest.n_items, 1),
        "recall@50": manifest.recall_at_50,
        "recall_queries": manifest.recall_queries,
        "calibration": manifest.calibration,
        "search_ms": round(1000 / rps, 3),
        "requests_per_s": round(rps, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def trained_report(row: dict[str, Any], args: argparse.Namespace) -> None:
    meta = {**machine(), "faiss": faiss.__version__, "args": vars(args)}
    tried = (row["calibration"] or {}).get("tried", {})
    table = md_table(
        [
            "items",
            "kind",
            "setting",
            "reindex s",
            "build s",
            "peak RSS MB",
            "index MB",
            "B/item",
            "recall@50",
            "search ms",
            "requests/s",
        ],  # fmt: skip
        [
            [
                f"{row['items']:,}",
                row["kind"],
                describe(row["params"], row["kind"]),
                f"{row['reindex_seconds']:.0f}",
                f"{row['build_seconds']:.0f}",
                f"{row['peak_rss_mb']:,.0f}",
                f"{row['index_mb']:,.1f}",
                f"{row['bytes_per_item']:.0f}",
                f"{row['recall@50']:.4f}" if row["recall@50"] is not None else "exact",
                f"{row['search_ms']:.3f}",
                f"{row['requests_per_s']:,.0f}",
            ]
        ],
    )
    lines = [
        f"# Index of a trained model (`python -m benchmarks.index --artifacts ...`, {row['items']:,} items)",
        "",
        "`remi reindex --kind auto` (recall gate 0.95 on the model's own interest vectors, calibration on) run",
        "as a child process: reindex s = the whole job (copy, hash checks, build, calibration, smoke query),",
        "peak RSS = the job's maximum resident set. Build s = FAISS train + add (from the manifest).",
        "Search = one request of K interest vectors at top-50 on one thread, the index mapped as the service maps it.",
        f"Calibration tried (ef_search or nprobe -> recall@50): {tried}.",
        f"FAISS {faiss.__version__}.",
        "",
        table,
    ]
    save_results(args.results, args.name, {"meta": meta, "rows": [row]}, "\n".join(lines) + "\n")


def main() -> None:
    ap = parser(__doc__, "index")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="catalogue sizes")
    ap.add_argument("--dim", type=int, default=64, help="vector dimension d")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per search setting")
    ap.add_argument("--threads", type=int, default=2, help="FAISS threads for builds and recall batches")
    ap.add_argument("--artifacts", type=Path, help="trained artifact folder: run `remi reindex --kind auto` on it")
    ap.add_argument("--root", type=Path, help="index root for --artifacts (a new version is published there)")
    args = ap.parse_args()
    if args.artifacts:
        if args.root is None:
            ap.error("--artifacts needs --root")
        trained_report(run_trained(args.artifacts, args.root, args.seconds), args)
        return
    rows = []
    for n in args.sizes:
        rows += run_size(n, args.dim, args.seconds, args.threads)
    meta = {**machine(), "faiss": faiss.__version__, "args": vars(args)}
    table = md_table(
        ["items", "kind", "setting", "build s", "memory MB", "B/item", "requests/s", "x flat", "recall@50", "auto"],
        [
            [
                f"{r['items']:,}",
                r["kind"],
                describe(r["params"], r["kind"]),
                f"{r['build_seconds']:.1f}",
                f"{r['memory_mb']:.1f}",
                f"{r['bytes_per_item']:.0f}",
                f"{r['requests_per_s']:,.0f}",
                f"{r['speedup_vs_flat']:.1f}",
                f"{r['recall@50']:.4f}",
                "yes" if r["auto"] else "",
            ]
            for r in rows
        ],
    )
    lines = [
        f"# Item index benchmark (`python -m benchmarks.index`, d = {args.dim})",
        "",
        "Request = K = 4 interest vectors searched at top-50 in one call, one thread, back to back.",
        "Recall@50 against exact inner-product search on 1,000 interest-like queries.",
        "Synthetic clustered catalogue shaped like trained embeddings (see the script's docstring).",
        f"FAISS {faiss.__version__}; builds use {args.threads} threads.",
        "",
        table,
    ]
    save_results(args.results, args.name, {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")
    plot(rows, args.results / f"{args.name}.png")


if __name__ == "__main__":
    main()
