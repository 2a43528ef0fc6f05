"""FAISS or Milvus behind the same engine: served recall@50, compute per user, engine throughput, replica memory.

One synthetic model per catalogue size (benchmarks/serving_setup.py: a random ComiRec-SA tower over
clustered items, d = 64, K = 4), published both ways with the reindex jobs' own code: FAISS
versions (flat; HNSW calibrated by the recall gate) in an index root, and Milvus collections (FLAT;
HNSW calibrated by the same gate) in a Milvus Lite server started here as its own process
(``milvus-lite server``, what a replica would talk to over the network). Then, per variant:

* served recall@50: the engine's answers (k = 50, score merge, seen items excluded, the service's
  interest dedup) for the model's held-out users against the answers of the same engine over an
  exact FAISS index;
* compute per user: CPU ms of the engine (tower, searches, merge, this process) plus, for Milvus,
  of the Milvus Lite server process, over batches of ``--batch`` users;
* engine users/s: the same batches, wall clock, one thread (the in-process floor, no HTTP);
* replica RSS: a fresh process that loads the version as ``remi serve`` does (the FAISS pair, or the
  model plus a Milvus retriever; private copies, not mapped), warms it up, trims the heap as the
  service does and answers 256 users; the Milvus server's own RSS is listed apart (the cluster's,
  not the replica's).

``--prepare-only`` builds and publishes (minutes, outside the quiet window); a second run reuses
what is published (both jobs are up to date) and measures. Milvus Lite is the embedded engine of
the tests, pure Python: its per-call cost is not a Milvus cluster's, so its figures bound what the
contract costs through pymilvus, not what a cluster serves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import machine, md_table, median, parser, run_and_save
from benchmarks.serving_setup import build_artifacts, synthetic_spec
from loadtest.cpu import tree_cpu_seconds

RSS_SCRIPT = r"""
import ctypes, json, sys
import numpy as np
from retrieval.engine import Engine
from retrieval.query import Query
backend, root, name, uri, alias = sys.argv[1:6]
if backend == "faiss":
    from retrieval.store import load_version, version_dir
    engine = Engine(load_version(version_dir(root, name)), dedup_cosine=0.94)
else:
    from retrieval.milvus import MilvusServing
    version, retriever = MilvusServing(root, uri, alias, timeout=600).load(name)
    engine = Engine(version, dedup_cosine=0.94, retriever=retriever)
engine.warm_up(1)
ctypes.CDLL("libc.so.6").malloc_trim(0)  # as the service does after a load (service/versions.py)
arts = engine.arts
queries = [Query(h[m], 50) for h, m in zip(arts.sample_history[:256], arts.sample_mask[:256])]
for i in range(0, len(queries), 64):
    engine.recommend(queries[i : i + 64])
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "hwm_mb": int(status["VmHWM"].split()[0]) / 1024}))
"""


def start_milvus(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Milvus Lite gRPC server on a free port, its data under ``work`` (kept between runs)."""
    from pymilvus import MilvusClient

    from loadtest.server import free_port

    port = free_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    log = (work / "milvus.log").open("ab")
    proc = subprocess.Popen(
        [str(exe), "server", "--data-dir", str(work / "milvus-data"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            MilvusClient(uri=uri, timeout=5).close()
            return proc, uri
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited: see {work / 'milvus.log'}") from None
            time.sleep(0.5)
    raise RuntimeError("milvus-lite server did not come up")


def variants(args: argparse.Namespace, n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(backend, kind, given params): HNSW only up to --hnsw-max-items (its build is the long part)."""
    out: list[tuple[str, str, dict[str, Any]]] = [("faiss", "flat", {}), ("milvus", "flat", {})]
    if n <= args.hnsw_max_items:
        out += [("faiss", "hnsw", {"m": args.hnsw_m}), ("milvus", "hnsw", {"m": args.hnsw_m})]
    return out


def publish(args: argparse.Namespace, n: int, work: Path, uri: str) -> tuple[Path, list[dict[str, Any]]]:
    """The model of size ``n`` and every variant's version (built once, then up to date)."""
    from index.milvus_publish import MilvusTarget, reindex_milvus
    from index.publish import reindex
    from retrieval.milvus import connect

    art = build_artifacts(work / f"artifacts-{n}", synthetic_spec(n, 64, args.clusters, args.seed))
    client = connect(uri, timeout=3600)
    published = []
    for backend, kind, params in variants(args, n):
        t0 = time.perf_counter()
        if backend == "faiss":
            root = work / f"faiss-{kind}-{n}"
            done: Any = reindex(art, root, kind=kind, params=params)
            alias = ""
        else:
            root, alias = work / f"milvus-root-{kind}-{n}", f"bench_{kind}_{n}"
            done = reindex_milvus(art, root, MilvusTarget(client, alias, f"bench_{kind}_{n}_"), kind, params)
        manifest = done.manifest
        published.append({
            "backend": backend, "kind": kind, "root": str(root), "version": done.index_version, "alias": alias,
            "params": manifest.params, "gate_recall": manifest.recall_at_50, "build_s": manifest.build_seconds,
            "built": done.built,
            "job_s": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
        print(f"{n} {backend} {kind}: {done.index_version} ({'built' if done.built else 'up to date'})", flush=True)
    client.close()
    return art, published


def engine_of(variant: dict[str, Any], uri: str) -> Any:
    from retrieval.engine import Engine
    from retrieval.milvus import MilvusServing
    from retrieval.store import load_version, version_dir

    if variant["backend"] == "faiss":
        return Engine(load_version(version_dir(variant["root"], variant["version"])), dedup_cosine=0.94)
    version, retriever = MilvusServing(variant["root"], uri, variant["alias"], timeout=600).load(variant["version"])
    return Engine(version, dedup_cosine=0.94, retriever=retriever)


def run_users(engine: Any, queries: list[Any], batch: int, server: int | None) -> tuple[list[Any], dict[str, float]]:
    """Every query in batches: the answers, CPU ms per user (this process + the Milvus server) and users/s."""
    server_cpu = tree_cpu_seconds(server) if server else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    answers = []
    for i in range(0, len(queries), batch):
        answers += engine.recommend(queries[i : i + batch])[0]
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    extra = (tree_cpu_seconds(server) - server_cpu) if server else 0.0
    return answers, {
        "cpu_ms_per_user": 1000 * (cpu + extra) / len(queries),
        "server_cpu_ms_per_user": 1000 * extra / len(queries),
        "users_per_s": len(queries) / wall,
    }


def served_recall(answers: list[Any], exact: list[Any]) -> float:
    pairs = zip(answers, exact, strict=True)
    hits = [len(set(a.item_ids) & set(e.item_ids)) / max(1, len(e.item_ids)) for a, e in pairs]
    return float(np.mean(hits))


def replica_rss(variant: dict[str, Any], uri: str) -> dict[str, float]:
    """A fresh process serving ``variant`` as a replica would; its VmRSS and peak after 256 users."""
    argv = [sys.executable, "-c", RSS_SCRIPT, variant["backend"], variant["root"], variant["version"], uri,
            variant["alias"] or "-"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    rss: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return rss


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_size(args: argparse.Namespace, n: int, work: Path, uri: str, server: int) -> dict[str, Any]:
    from retrieval.engine import Engine
    from retrieval.query import Query
    from retrieval.retriever import FaissRetriever
    from retrieval.search import exact_index

    art, published = publish(args, n, work, uri)
    if args.prepare_only:
        return {"items": n, "published": published}
    rows = []
    reference = engine_of(published[0], uri)  # FAISS flat: the exact index
    exact = FaissRetriever(exact_index(reference.item_vectors), reference.item_vectors)
    exact_engine = Engine(reference.loaded, dedup_cosine=0.94, retriever=exact)
    arts = reference.arts
    users = min(args.users, len(arts.sample_history))
    queries = [Query(h[m], 50) for h, m in zip(arts.sample_history[:users], arts.sample_mask[:users], strict=True)]
    truth, _ = run_users(exact_engine, queries, args.batch, None)
    del exact_engine, reference
    for variant in published:
        engine = engine_of(variant, uri)
        engine.warm_up(1)
        runs = [run_users(engine, queries, args.batch, server if variant["backend"] == "milvus" else None)
                for _ in range(args.repeats)]  # fmt: skip
        answers = runs[0][0]
        figures = {key: median(r[1][key] for r in runs) for key in runs[0][1]}
        del engine
        rss = replica_rss(variant, uri) if not args.skip_rss else {}
        rows.append({**variant, **figures, "served_recall_at_50": served_recall(answers, truth), **rss})
        print(json.dumps(rows[-1]), flush=True)
    return {"items": n, "users": users, "batch": args.batch, "rows": rows, "milvus_server_rss_mb": rss_mb(server)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.combine:  # sizes measured in separate quiet windows, reported together
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        return {"machine": parts[-1]["machine"], "flags": [p["flags"] for p in parts],
                "sizes": [size for p in parts for size in p["sizes"]]}  # fmt: skip
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    proc, uri = start_milvus(work)
    try:
        sizes = [measure_size(args, n, work, uri, proc.pid) for n in args.sizes]
    finally:
        proc.terminate()
        proc.wait(60)
    return {"machine": machine(), "flags": {k: str(v) for k, v in vars(args).items()}, "sizes": sizes}


def report(result: dict[str, Any]) -> str:
    lines = ["# FAISS or Milvus (Milvus Lite) behind the same engine", ""]
    for size in result["sizes"]:
        if "rows" not in size:
            lines.append(f"{size['items']:,} items: published only (--prepare-only)\n")
            continue
        lines.append(f"## {size['items']:,} items, {size['users']} users in batches of {size['batch']}\n")
        table = [
            [r["backend"], r["kind"], json.dumps(r["params"]), r["build_s"], r["gate_recall"], r["served_recall_at_50"],
             r["cpu_ms_per_user"], r["server_cpu_ms_per_user"], r["users_per_s"], r.get("rss_mb", "-"),
             r.get("hwm_mb", "-")]
            for r in size["rows"]
        ]  # fmt: skip
        lines.append(md_table(["backend", "kind", "params", "build s", "gate recall@50", "served recall@50 vs exact",
                               "CPU ms / user", "of which Milvus server", "engine users/s", "replica RSS MB",
                               "replica peak MB"], table))  # fmt: skip
        lines.append(f"Milvus Lite server process RSS at the end: {size['milvus_server_rss_mb']:.0f} MB.\n")
    lines.append(NOTES)
    lines.append(f"Machine: {json.dumps(result['machine'])}\n")
    return "\n".join(lines)


NOTES = """Reading it: *build s* is the manifest's: the FAISS index build, or for Milvus the whole collection
(create, insert, flush, index, load). *gate recall@50* is what the reindex job measured (FAISS flat: not
measured, exact by construction; Milvus: measured through Milvus, so a FLAT collection's 1.0 checks the
load). *served recall@50* compares the engine's answers (k = 50, seen items excluded, interest dedup 0.94)
with the same engine over an exact index. *CPU ms / user* is this process (tower, searches, merge) plus the
Milvus Lite server process; *engine users/s* is the same batches by wall clock on a shared 2-core machine
(background training paused; other jobs were not), noisier than the CPU figure. *replica RSS* is a fresh
process serving the version as `remi serve` does (private copies); the Milvus replica still holds the
model (its ONNX tower carries the item table) and the float item table the score merge and the dedup
re-score read, so it saves the index only (at 1M: a flat index is 256 MB, HNSW M = 48 about 650 MB) less
pymilvus's ~80 MB. Milvus Lite is pure Python (per call it walks every row's key in Python and scores with
numpy), so its per-call cost is not a cluster's; at 1M items its batched brute force (64 users = 256 rows
per call) costs about what FAISS's per-user exact scans cost. HNSW at 1M items is not measured here: both
builds plus the gate's calibration exceed the time this run had (the FAISS HNSW M = 48 build alone took
412 s at 1M on these 2 cores, docs/results.md "Item index").
"""


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, "backends")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-backends-bench",
                    help="models, index roots and the Milvus Lite data (reused between runs)")  # fmt: skip
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="catalogue sizes")
    ap.add_argument("--clusters", type=int, default=2000, help="topic clusters of the synthetic catalogue")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=1024, help="held-out users answered per run")
    ap.add_argument("--batch", type=int, default=64, help="users per engine call")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    ap.add_argument("--hnsw-m", type=int, default=16, help="HNSW M of both backends")
    ap.add_argument("--hnsw-max-items", type=int, default=200_000, help="HNSW variants only up to this size")
    ap.add_argument("--prepare-only", action="store_true", help="build and publish, measure nothing")
    ap.add_argument("--skip-rss", action="store_true", help="no replica RSS subprocesses")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="report earlier results together; measure nothing")
    run_and_save(ap, run, report, argv)


if __name__ == "__main__":
    main()
