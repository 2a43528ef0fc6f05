"""Serving with a typical request filter (10% of the catalogue allowed) beside the unfiltered run.

    python -m benchmarks.serving_filtered

Setup (cached under --work, rebuilt only when missing): the serving benchmark's synthetic
100k-item model (benchmarks/serving_setup.py: a ComiRec-SA tower, K = 4, over clustered item
vectors, d = 64), a copy of it with item attributes attached the way ``remi export
--item-attributes`` does (remi/attributes.py ``attach_attributes``: ``category`` with 10 values
drawn uniformly per item, so ``{"category": {"eq": "c3"}}`` allows ~10% of the items; ``price``
uniform in 0-100), an index root built by the library's reindex (HNSW, default parameters), and
--users synthetic histories of 20-50 items in Redis under a fresh key prefix (deleted at the end).

Each round starts ``remi serve`` (--workers, micro-batching, the fast path on: the defaults) twice:
with the filter cache (the default, retrieval/filter_cache.py), measured unfiltered and filtered,
and with REMI_FILTER_CACHE_MB=0, measured filtered (every request builds its own mask and gathers
the allowed rows, as before the cache). Each kind is warmed up, then wrk (loadtest/recommend.lua;
the filter is appended to every body with RECOMMEND_EXTRA) runs at C = 32 for --duration seconds
and at C = 1 for --c1-duration; the order of servers and kinds alternates between rounds so a
drift of the machine's load hits all. One request of each kind is also sent alone, and its answer's
``filter`` block (allowed items, path) recorded. The summary is the median over rounds and the
median of the per-round filtered / unfiltered ratios. Writes
benchmarks/results/serving_filtered.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import flags, machine, run_and_save
from benchmarks.serving_fast_path import SUMMARY as FAST_PATH_SUMMARY
from benchmarks.serving_fast_path import _median, measure
from benchmarks.serving_trained import serve

FILTER = '"filter":{"category":{"eq":"c3"}}'
N_CATEGORIES = 10


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "serving_filtered")
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size of the synthetic model")
    ap.add_argument("--dim", type=int, default=64, help="embedding size d")
    ap.add_argument("--clusters", type=int, default=2000, help="topic clusters of the synthetic catalogue")
    ap.add_argument("--seed", type=int, default=0, help="seed of the catalogue, model, histories and attributes")
    ap.add_argument("--users", type=int, default=10_000, help="users with a stored history in Redis")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the history store")
    ap.add_argument("--rounds", type=int, default=3, help="unfiltered/filtered pairs, one server each")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of each wrk run at C = 32")
    ap.add_argument("--c1-duration", type=float, default=8.0, help="seconds of each wrk run at C = 1")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load per kind after a start")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads at C = 32")
    ap.add_argument("--filter", default=FILTER, help="the JSON fragment appended to every filtered request body")
    ap.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-serving-bench", help="cache and logs"
    )
    return ap


def with_attributes(art: Path, folder: Path, seed: int) -> Path:
    """A copy of the artifact folder ``art`` with the benchmark's item attributes attached."""
    from remi.attributes import Attribute, ItemAttributes, attach_attributes
    from remi.contract import MANIFEST
    from remi.contract import read_artifact_manifest as read_manifest

    manifest = read_manifest(art)
    if (folder / MANIFEST).is_file() and read_manifest(folder).model_version == manifest.model_version:
        if read_manifest(folder).item_attributes:
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(art, folder)
    rng = np.random.default_rng(seed + 21)
    n = manifest.n_items
    attributes = ItemAttributes(
        [
            Attribute("category", "categorical", 0, tuple(f"c{i}" for i in range(N_CATEGORIES))),
            Attribute("price", "numeric", 0),
        ],
        rng.integers(0, N_CATEGORIES, size=(1, n)).astype(np.int32),
        rng.uniform(0, 100, size=(1, n)),
        n,
    )
    attach_attributes(folder, read_manifest(folder), attributes)
    return folder


def probe(url: str, user: str, extra: str) -> dict[str, Any]:
    """One request alone: its answer's length, fallback and filter block."""
    import httpx

    body = json.loads('{"user_id":' + json.dumps(user) + ',"k":50' + ("," + extra if extra else "") + "}")
    answer = httpx.post(f"{url}/recommend", json=body, timeout=30).json()
    return {"items": len(answer["items"]), "fallback": answer["fallback"], "filter": answer.get("filter")}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.serving import source_fingerprint
    from benchmarks.serving_http import wrk
    from benchmarks.serving_setup import (
        build_artifacts,
        delete_prefix,
        seed_histories,
        synthetic_spec,
        synthetic_users,
    )
    from index.publish import reindex

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    spec = synthetic_spec(args.items, args.dim, args.clusters, args.seed)
    art = build_artifacts(work / f"artifacts-{spec['items']}-{spec['dim']}-{spec['seed']}", spec)
    attributed = with_attributes(art, work / f"artifacts-attr-{spec['items']}-{spec['dim']}-{spec['seed']}", args.seed)
    root = work / f"root-attr-{spec['items']}-{spec['dim']}-{spec['seed']}"
    t0 = time.perf_counter()
    built = reindex(attributed, root, "hnsw")
    print(f"index: {built.index_version} (built {built.built}, {time.perf_counter() - t0:.1f} s)", flush=True)
    users, histories = synthetic_users(art, spec, args.users)
    users_file = work / "users-filtered.txt"
    users_file.write_text("\n".join(users) + "\n")
    prefix = f"remi-bench-filtered-{os.getpid()}-{int(time.time())}:"
    code = Path(__file__).resolve().parents[1]
    meta: dict[str, Any] = {**machine(), "loadavg_before": list(os.getloadavg()), "users": len(users),
            "index_version": built.index_version,
            "args": flags(args),
            "source": source_fingerprint()}  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        asyncio.run(seed_histories(args.redis_url, prefix, users, histories))
        for r in range(args.rounds):
            servers = [("cache", {}), ("no cache", {"REMI_FILTER_CACHE_MB": "0"})]
            for label, env in servers if r % 2 == 0 else servers[::-1]:
                log = work / f"filtered-round{r}-{label.replace(' ', '-')}.log"
                with serve(code, root, prefix, args, env, log) as server:
                    kinds = [("unfiltered", ""), ("filtered", args.filter)] if label == "cache" else []
                    kinds += [("filtered, no filter cache", args.filter)] if label == "no cache" else []
                    for _, extra in kinds:
                        os.environ["RECOMMEND_EXTRA"] = extra
                        wrk(server.url, server.cpu_seconds, users_file, 8, args.warmup, args.wrk_threads)
                    for kind, extra in kinds:
                        meta.setdefault("probe", {})[kind] = probe(server.url, users[0], extra)
                    for kind, extra in kinds if r % 2 == 0 else kinds[::-1]:
                        os.environ["RECOMMEND_EXTRA"] = extra
                        c32 = measure(server, users_file, 32, args.duration, args.wrk_threads)
                        c1 = measure(server, users_file, 1, args.c1_duration, 1)
                        rows.append({"round": r, "kind": kind, "c32": c32, "c1": c1})
                        print(json.dumps({"round": r, "kind": kind, "qps_c32": c32["qps"],
                                          "p50_c32": c32["latency_ms"]["p50"], "p50_c1": c1["latency_ms"]["p50"],
                                          "compute_ms": c32["compute_cpu_ms_per_request"],
                                          "errors": c32["errors"] + c1["errors"]}), flush=True)  # fmt: skip
    finally:
        os.environ.pop("RECOMMEND_EXTRA", None)
        print(f"deleted {delete_prefix(args.redis_url, prefix)} keys under {prefix!r}", flush=True)
    meta["source_at_end"] = source_fingerprint()
    return {"meta": meta, "rows": rows}


# The fast-path benchmark's columns, with req/s at C = 1 instead of its event-loop CPU at C = 1.
SUMMARY: list[tuple[str, Callable[[dict[str, Any]], float]]] = [
    column for column in FAST_PATH_SUMMARY if column[0] != "event-loop CPU/req ms C=1"
]
SUMMARY.insert([name for name, _ in SUMMARY].index("p50 ms C=1"), ("req/s C=1", lambda r: r["c1"]["qps"]))


def report(result: dict[str, Any]) -> str:
    meta, rows = result["meta"], result["rows"]
    a = meta["args"]
    names = ("req/s C=32", "p50 ms C=32", "p50 ms C=1")
    ratios: dict[str, list[float]] = {name: [] for name in names}  # filtered / unfiltered
    cache_ratios: dict[str, list[float]] = {name: [] for name in names}  # filtered: cache / no cache
    for r in sorted({row["round"] for row in rows}):
        pair = {row["kind"]: row for row in rows if row["round"] == r}
        for name, get in SUMMARY:
            if name in names and "filtered" in pair and "unfiltered" in pair:
                ratios[name].append(get(pair["filtered"]) / max(get(pair["unfiltered"]), 1e-9))
            if name in names and "filtered" in pair and "filtered, no filter cache" in pair:
                cache_ratios[name].append(get(pair["filtered"]) / max(get(pair["filtered, no filter cache"]), 1e-9))
    probe_lines = [f"`{kind}`: {json.dumps(p)}" for kind, p in meta.get("probe", {}).items()]
    lines = [
        "# POST /recommend with a 10% filter beside the unfiltered run (`python -m benchmarks.serving_filtered`)",
        "",
        f"Synthetic {a['items']:,}-item model (d = {a['dim']}, K = 4) with item attributes; filter "
        f"`{a['filter']}` on every filtered request (~10% of the items allowed); {meta['users']:,} users' histories "
        f"in Redis; `remi serve` {a['workers']} workers, micro-batching, fast path on; wrk -t{a['wrk_threads']} "
        f"C = 32 for {a['duration']:.0f} s and wrk -t1 C = 1 for {a['c1_duration']:.0f} s per kind; {a['rounds']} "
        f"rounds (two servers each: filter cache on, off), order alternating; medians over rounds. "
        f"{meta['cpus']} cores shared with wrk "
        f"and Redis (load average before: {', '.join(f'{x:.2f}' for x in meta['loadavg_before'])}). Commit "
        f"{meta['source']['commit']}{'' if meta['source'] == meta.get('source_at_end') else ' (CHANGED in the run)'}."
        " Event-loop CPU = the workers' main threads; compute = their other threads (ONNX, FAISS, merge, the "
        "filter mask). `other cores` > 0.1: another job disturbed the run.",
        "",
        "One request of each kind alone: " + "; ".join(probe_lines) + ".",
        "",
        "| requests | " + " | ".join(name for name, _ in SUMMARY) + " |",
        "|---|" + "---|" * len(SUMMARY),
    ]
    for kind in ("unfiltered", "filtered", "filtered, no filter cache"):
        group = [r for r in rows if r["kind"] == kind]
        if group:
            cells = [f"{_median(group, get):,.3f}".rstrip("0").rstrip(".") for _, get in SUMMARY]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    for title, values_by_name in (("Filtered / unfiltered", ratios), ("Filtered, filter cache on / off", cache_ratios)):
        parts = [
            f"{name}: {', '.join(f'{x:.2f}' for x in values)} (median **{statistics.median(values):.2f}x**)"
            for name, values in values_by_name.items()
            if values
        ]
        if parts:
            lines += ["", f"{title} per round: " + "; ".join(parts) + "."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run_and_save(parser(), run, report, argv)


if __name__ == "__main__":
    main()
