"""What the live blocklist costs a request: Engine.recommend time by blocklist size, in one process.

    python -m benchmarks.blocklist [--items 100000] [--sizes 0 100 1000 10000] [--batches 1 64]

The blocked items are one shared exclusion per list version (retrieval/search.py ``SharedExclusion``:
a row mask and the FAISS selector of the whole batch's search; before it, a copy of the list
joined every request's own exclusion set: benchmarks/results/blocklist_before.md, measured on
that code): this measures what the list costs on the serving path (model + search + merge, no
HTTP, one thread each for onnxruntime and FAISS), on the
synthetic catalogue of the serving benchmark (benchmarks/serving_setup.py, cached under --work)
behind an HNSW index. Two kinds of list:

* ``random``: ids drawn from the whole catalogue (what a policy list looks like);
* ``answered``: ids taken from the benchmark users' own unblocked answers (the worst case: every
  blocked item displaces a result).

Each (kind, size, batch) is timed over the same users (median ms per request over --rounds
passes) and every answer is checked to hold no blocked item. Writes
benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import md_table, median, save_results, timed
from benchmarks.serving_setup import build_artifacts, synthetic_spec, synthetic_users

K = 50


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "blocklist")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-serving-bench",
                    help="cache of the synthetic artifacts and index root (as benchmarks.serving)")  # fmt: skip
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size")
    ap.add_argument("--dim", type=int, default=64, help="embedding size d")
    ap.add_argument("--clusters", type=int, default=2000, help="topic clusters of the synthetic catalogue")
    ap.add_argument("--seed", type=int, default=0, help="seed of the catalogue, model and histories")
    ap.add_argument("--users", type=int, default=256, help="users timed per pass")
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 100, 1000, 10000], help="blocklist sizes")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="users per Engine.recommend call")
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per cell (the median is reported)")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from index.publish import reindex
    from retrieval.engine import Engine
    from retrieval.query import Query
    from retrieval.store import load_current
    from service.blocklist import map_ids

    spec = synthetic_spec(args.items, args.dim, args.clusters, args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    art = build_artifacts(args.work / f"artifacts-{spec['items']}-{spec['dim']}-{spec['seed']}", spec)
    root = args.work / f"root-{spec['items']}-{spec['dim']}-{spec['seed']}"
    built = reindex(art, root, "hnsw")
    engine = Engine(load_current(root, threads=1), faiss_threads=1)
    engine.warm_up()
    _, histories = synthetic_users(art, spec, args.users)
    seen = [engine.encode(h)[0] for h in histories]

    plain, _ = engine.recommend([Query(s, K) for s in seen])
    answered = list(dict.fromkeys(item for r in plain for item in r.item_ids))  # first items first
    rng = np.random.default_rng(args.seed + 11)
    vocabulary = engine.vocabulary
    cells: list[dict[str, Any]] = []
    for kind in ("random", "answered"):
        for size in args.sizes:
            if kind == "answered" and (size == 0 or size > len(answered)):
                continue
            if kind == "random":
                raw = [vocabulary.raw_ids[i] for i in rng.choice(len(vocabulary), size, replace=False)]
            else:
                raw = answered[:size]
            with timed() as mapping:
                blocked = map_ids(vocabulary, raw)
            map_ms = mapping.wall_s * 1000
            queries = [Query(s, K, blocked=blocked) for s in seen]
            for batch in args.batches:
                wall, cpu = [], []
                for _ in range(args.rounds):
                    results = []
                    with timed() as took:
                        for start in range(0, len(queries), batch):
                            results += engine.recommend(queries[start : start + batch])[0]
                    cpu.append(took.cpu_s * 1000 / len(queries))
                    wall.append(took.wall_s * 1000 / len(queries))
                banned = set(raw)
                assert all(not banned & set(r.item_ids) and len(r.item_ids) == K for r in results), (kind, size)
                displaced = sum(len(set(p.item_ids) & banned) for p in plain) / len(plain)
                cells.append({"kind": kind, "size": size, "batch": batch, "map_ms": map_ms,
                              "cpu_ms_per_request": median(cpu),
                              "wall_ms_per_request": median(wall),
                              "displaced_per_answer": displaced})  # fmt: skip
                print(cells[-1], flush=True)

    base = {c["batch"]: c["cpu_ms_per_request"] for c in cells if c["size"] == 0}
    rows = [
        [
            c["kind"],
            c["size"],
            c["batch"],
            f"{c['cpu_ms_per_request']:.3f}",
            f"{(c['cpu_ms_per_request'] / base[c['batch']] - 1) * 100:+.0f}%",
            f"{c['wall_ms_per_request']:.3f}",
            f"{c['displaced_per_answer']:.1f}",
            f"{c['map_ms']:.2f}",
        ]
        for c in cells
    ]
    columns = ["list", "blocked ids", "users per call", "CPU ms / request", "vs no list", "wall ms / request"]
    table = md_table([*columns, "results displaced / answer", "map once (wall ms)"], rows)
    header = (
        f"# Blocklist cost on the serving path ({args.items:,} items, d={args.dim}, HNSW, k={K}, "
        f"{args.users} users, median of {args.rounds})\n\n"
        f"`python -m benchmarks.blocklist {' '.join(sys.argv[1:] if argv is None else argv)}`; load average at start "
        f"{os.getloadavg()[0]:.1f}. Engine.recommend (model + search + merge) per request, one thread each; "
        "CPU time (process time: comparable on a busy machine, where wall time is mostly waiting) and wall "
        "time; `map once`: raw ids -> item indices, done once per list version and model by each worker.\n\n"
    )
    result = {"items": args.items, "dim": args.dim, "k": K, "users": args.users, "index": built.index_version,
              "cells": cells, "loadavg": list(os.getloadavg())}  # fmt: skip
    save_results(args.results, args.name, result, header + table)


if __name__ == "__main__":
    main()
