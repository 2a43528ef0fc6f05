"""Serving a TRAINED model: the serving levers, each measured against the code before them.

The levers: docs/operations.md#serving-cost-of-a-trained-model.

    python -m benchmarks.serving --trained ART --data INTERACTIONS.csv.gz [--duration 60] ...

(or ``python -m benchmarks.serving_trained`` with the same flags). ART is a real exported run
folder (`remi export`), INTERACTIONS the data it was trained on: users' last events become their
stored histories in Redis (fresh key prefix, deleted at the end).

Every configuration is a real ``remi serve`` with 2 workers and micro-batching, measured with wrk
(-t2) at C = 32 for --duration s and at C = 1 for --c1-duration s, one after another in one run:

* ``before``: the code of --base-ref (default ``main``, unpacked with ``git archive``) on the
  index main's own ``remi reindex --kind hnsw`` builds for ART (the recall gate picks efSearch);
* ``batch``: this code, same index, dedup off: one FAISS call per micro-batch, numpy merge,
  answers' item lists encoded from pre-encoded ids;
* ``dedup``: + near-copy interests searched once (``--dedup-cosine``, ``--min-weight``);
* ``ef``: + the index rebuilt by this code's reindex (efSearch calibrated on the model's
  interest vectors on the finer ladder), per HNSW M in --m;
* ``answers``: + the recall gate on users' merged top-50 (``--recall-of answers``) at the last M;
* ``sq8`` / ``fp16``: + compact storage, the beam re-ranked with the exact vectors (same gate);
* ``fast ...``: + the fast path of POST /recommend (service/fast_recommend.py), on the last row's index.

Each configuration also gets the served recall gate's figures (index/gate.py, --recall-users of its
users): recall@50 of its answers against the same engine over an exact index, and search CPU per user.
Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import flags, machine, save_results

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "serving_trained")
    ap.add_argument("--trained", type=Path, required=True, help="exported artifact folder of a trained model")
    ap.add_argument("--data", type=Path, required=True, help="interactions CSV the model was trained on")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-serving-trained",
                    help="cache folder: index roots, base code, users file, server logs")  # fmt: skip
    ap.add_argument("--users", type=int, default=10_000, help="users with a stored history in Redis")
    ap.add_argument("--history", type=int, default=50, help="events stored per user (their most recent)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Redis of the history store")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of each wrk run at C = 32")
    ap.add_argument("--c1-duration", type=float, default=10.0, help="seconds of each wrk run at C = 1")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load after a server starts")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--base-ref", default="main", help="git ref of the `before` code")
    ap.add_argument("--dedup-cosine", type=float, default=0.8, help="REMI_INTEREST_DEDUP_COSINE of the dedup configs")
    ap.add_argument("--min-weight", type=float, default=0.0, help="REMI_INTEREST_MIN_WEIGHT of the dedup configs")
    ap.add_argument("--m", type=int, nargs="+", default=[48, 32, 16], help="HNSW M values of the `ef` configs")
    ap.add_argument("--storage", nargs="*", default=["sq8", "fp16"], help="compact storages (at the last --m)")
    ap.add_argument("--configs", nargs="*", default=None, help="only these configuration labels (default: all)")
    ap.add_argument("--recall-users", type=int, default=1000, help="users of the served recall gate (index/gate.py)")
    ap.add_argument("--build-only", action="store_true", help="build the index roots (and base code), measure nothing")
    return ap


def base_code(work: Path, ref: str) -> Path:
    """The ``before`` code: ``git archive`` of ``ref`` unpacked under ``work`` (reused per commit)."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], capture_output=True, text=True, cwd=REPO, check=True)
    folder = work / f"base-{commit.stdout.strip()}"
    if not (folder / "cli").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", ref], capture_output=True, cwd=REPO, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def build_root(root: Path, artifacts: Path, code: Path, args: list[str]) -> dict[str, Any]:
    """``remi reindex --kind hnsw`` of ``code`` (a checkout) into ``root``; the active version's manifest."""
    if not (root / "current").exists():
        cmd = [sys.executable, "-m", "cli", "reindex", "--artifacts", str(artifacts), "--root", str(root)]
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--kind", "hnsw", *args], cwd=code, check=True, env=clean_env())
        print(f"built {root.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    from retrieval.store import read_current

    name = read_current(root)
    manifest: dict[str, Any] = json.loads((root / "versions" / str(name) / "manifest.json").read_text())
    return manifest


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without REMI_* settings (each configuration sets its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMI_")}
    return env | (extra or {})


def user_histories(data: Path, users: int, length: int) -> tuple[list[str], list[list[tuple[str, int]]]]:
    """The first ``users`` users of the data with their last ``length`` events (item, timestamp), oldest first."""
    import pandas as pd

    frame = pd.read_csv(data, dtype={"user_id": str, "item_id": str, "timestamp": np.int64})
    keep = frame["user_id"].drop_duplicates().iloc[:users]
    frame = frame[frame["user_id"].isin(set(keep))].sort_values(["user_id", "timestamp"], kind="stable")
    tails = frame.groupby("user_id", sort=False).tail(length)
    grouped = {u: list(zip(g["item_id"], g["timestamp"], strict=True)) for u, g in tails.groupby("user_id")}
    ids = [u for u in keep if u in grouped]
    return ids, [grouped[u] for u in ids]


async def seed(url: str, prefix: str, users: list[str], histories: list[list[tuple[str, int]]]) -> None:
    from service.history import Event, RedisHistory

    store = RedisHistory(url, prefix=prefix, max_len=200, ttl_seconds=86_400, timeout_s=5.0)
    try:
        for start in range(0, len(users), 50):
            await asyncio.gather(
                *(
                    store.append(u, [Event(item, int(ts)) for item, ts in h])
                    for u, h in zip(users[start : start + 50], histories[start : start + 50], strict=True)
                )
            )
    finally:
        await store.close()


def merged_recall(root: Path, users: int, dedup_cosine: float, min_weight: float) -> dict[str, float]:
    """The served recall gate's figures for ``root``'s current index (index/gate.py: the gate's own
    query set, ``users`` sample histories of every length with seen items excluded, recall@50 of
    the served answers against the same engine over an exact index, search + merge CPU per user on
    one thread in micro-batches of 16), with the configuration's dedup; and interests searched."""
    from index.gate import ServedGate, artifact_queries
    from retrieval.store import load_current

    loaded = load_current(root, threads=1)
    gate = ServedGate(loaded.artifacts, artifact_queries(loaded.artifacts, users), dedup_cosine, min_weight)
    gate.measure(loaded.index)  # warm the index's pages
    measured = gate.measure(loaded.index)
    return {
        "recall_at_50": round(measured.recall, 4),
        "users": len(gate.queries),
        "searched_per_user": round(float(gate.interests.searched.sum(1).mean()), 3),
        "interests_per_user": round(float(gate.interests.active.sum(1).mean()), 3),
        "search_ms": round(measured.us_per_user / 1000, 4),  # search + merge + encoding, one thread
    }


def serve(code: Path, root: Path, prefix: str, args: argparse.Namespace, env: dict[str, str], log: Path) -> Any:
    """``remi serve`` of the checkout ``code`` on ``root``, started and ready (use it in ``with``)."""
    from benchmarks.serving_http import START_TIMEOUT_S, history_store_ready
    from loadtest.server import ServerProcess, free_port

    port = free_port()
    argv = [sys.executable, "-m", "cli", "serve", "--index-root", str(root), "--workers", str(args.workers)]
    argv += ["--redis-url", args.redis_url, "--log-level", "warning", "--port", str(port)]
    full = clean_env({"REMI_REDIS_PREFIX": prefix, "REMI_MICROBATCH": "true", **env})
    server = ServerProcess(argv, port, log, full, cwd=code)
    return server.start().wait_ready(START_TIMEOUT_S, history_store_ready)


def measure(server: Any, args: argparse.Namespace, users_file: Path) -> dict[str, Any]:
    """Warm-up, then wrk at C = 32 (--duration) and C = 1 (--c1-duration)."""
    from benchmarks.serving_http import wrk

    wrk(server.url, server.cpu_seconds, users_file, 8, args.warmup, args.wrk_threads)
    out = {}
    for c, seconds in ((32, args.duration), (1, args.c1_duration)):
        row = wrk(server.url, server.cpu_seconds, users_file, c, seconds, args.wrk_threads)
        out[f"c{c}"] = row
        print(json.dumps({"c": c, "qps": row["qps"], "latency_ms": row["latency_ms"], "errors": row["errors"],
                          "fallbacks": row.get("fallbacks")}), flush=True)  # fmt: skip
    return out


def configurations(args: argparse.Namespace, base: Path, work: Path) -> list[dict[str, Any]]:
    """(label, code, root, env) of every configuration, in lever order; index roots built as needed."""
    art = args.trained.resolve()
    # Every lever row but the last runs without the fast path, so each row adds one lever.
    dedup = {
        "REMI_INTEREST_DEDUP_COSINE": str(args.dedup_cosine),
        "REMI_INTEREST_MIN_WEIGHT": str(args.min_weight),
        "REMI_FAST_PATH": "false",
    }
    off = {"REMI_INTEREST_DEDUP_COSINE": "1.0", "REMI_INTEREST_MIN_WEIGHT": "0.0", "REMI_FAST_PATH": "false"}
    configs: list[dict[str, Any]] = [
        {"label": "before", "code": base, "root": work / "root-main", "reindex": (base, []), "env": {}},
        {"label": "batch", "code": REPO, "root": work / "root-main", "reindex": (base, []), "env": off},
        {"label": "dedup", "code": REPO, "root": work / "root-main", "reindex": (base, []), "env": dedup},
    ]
    for m in args.m:
        configs.append({"label": f"ef M{m}", "code": REPO, "root": work / f"root-m{m}",
                        "reindex": (REPO, ["--hnsw-m", str(m)]), "env": dedup})  # fmt: skip
    m = args.m[-1]
    answers = ["--hnsw-m", str(m), "--recall-of", "answers"]
    configs.append({"label": f"answers M{m}", "code": REPO, "root": work / f"root-m{m}-answers",
                    "reindex": (REPO, answers), "env": dedup})  # fmt: skip
    for storage in args.storage:
        configs.append({"label": f"{storage} M{m}", "code": REPO, "root": work / f"root-m{m}-answers-{storage}",
                        "reindex": (REPO, [*answers, "--hnsw-storage", storage]), "env": dedup})  # fmt: skip
    last = configs[-1]
    configs.append({**last, "label": f"fast {last['label']}", "env": {**last["env"], "REMI_FAST_PATH": "true"},
                    "reindex": last["reindex"]})  # fmt: skip
    wanted = set(args.configs) if args.configs else None
    out = []
    for c in configs:
        if wanted is not None and c["label"] not in wanted:
            continue
        code, extra = c.pop("reindex")
        c["index"] = build_root(Path(c["root"]), art, Path(code), list(extra))
        out.append(c)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.serving import source_fingerprint
    from benchmarks.serving_setup import delete_prefix

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = base_code(work, args.base_ref)
    configs = configurations(args, base, work)
    if args.build_only:
        return {"built": [{"label": c["label"], "index": c["index"]} for c in configs]}
    users, histories = user_histories(args.data, args.users, args.history)
    users_file = work / "users.txt"
    users_file.write_text("\n".join(users) + "\n")
    prefix = f"remi-bench-trained-{os.getpid()}-{int(time.time())}:"
    result: dict[str, Any] = {
        "meta": {
            **machine(),
            "loadavg_before": list(os.getloadavg()),
            "artifacts": str(args.trained),
            "data": str(args.data),
            "users": len(users),
            "args": flags(args),
            "source": source_fingerprint(),
            "base": {"ref": args.base_ref, "folder": str(base)},
        },
        "configs": [],
    }
    try:
        asyncio.run(seed(args.redis_url, prefix, users, histories))
        for c in configs:
            print(f"== {c['label']}", flush=True)
            dedup_on = c["env"].get("REMI_INTEREST_DEDUP_COSINE", "1.0")
            recall = merged_recall(
                c["root"], args.recall_users, float(dedup_on), float(c["env"].get("REMI_INTEREST_MIN_WEIGHT", "0.0"))
            )
            print(json.dumps(recall), flush=True)
            log = work / "logs" / f"{c['label'].replace(' ', '-')}.log"
            with serve(c["code"], c["root"], prefix, args, c["env"], log) as server:
                http = measure(server, args, users_file)
            index = c["index"]
            result["configs"].append(
                {
                    "label": c["label"],
                    "code": "base" if c["code"] == base else "this",
                    "env": c["env"],
                    "index": {k: index.get(k) for k in ("kind", "params", "recall_at_50", "calibration", "n_items")},
                    "recall": recall,
                    "http": http,
                }
            )
    finally:
        print(f"deleted {delete_prefix(args.redis_url, prefix)} keys under {prefix!r}", flush=True)
    result["meta"]["source_at_end"] = source_fingerprint()
    return result


def report(result: dict[str, Any]) -> str:
    meta = result["meta"]
    rows = result["configs"]
    first = rows[0]["http"]["c32"]["qps"] if rows else 0
    lines = [
        "# Serving a trained model (`python -m benchmarks.serving --trained ...`)",
        "",
        f"Model: {meta['artifacts']} ({rows[0]['index']['n_items']:,} items); {meta['users']:,} users' last "
        f"{meta['args']['history']} events in Redis. Each row: `remi serve`, {meta['args']['workers']} workers, "
        f"micro-batching, wrk -t{meta['args']['wrk_threads']} at C = 32 for {meta['args']['duration']:.0f} s "
        f"and C = 1 for {meta['args']['c1_duration']:.0f} s, one after another in one run on {meta['cpus']} "
        f"cores shared with wrk and Redis (load average before: "
        f"{', '.join(f'{x:.2f}' for x in meta['loadavg_before'])}). Code: `before` = {meta['base']['ref']}, "
        f"others = commit {meta['source']['commit']} (serving code hash {meta['source']['code_sha256']}"
        f"{'' if meta['source'] == meta.get('source_at_end') else ', CHANGED during the run'}).",
        "",
        "`recall@50` = the served gate's (index/gate.py: sample users of every history length, seen items "
        "excluded, answers vs the same engine over an exact index); `searched` = interests searched per user (of "
        "K); `search ms` = in-process search + merge CPU per user in batches of 16, one thread; `x before` = req/s "
        "ratio at C = 32; "
        "`x prev` = ratio to the row above (the lever's own gain); `fallbacks` = answers with `fallback` set "
        "(all `history_unavailable` here: a Redis reply later than REMI_REDIS_TIMEOUT_MS under a saturated CPU); "
        "`other cores` = CPU of everything else on the machine during the C = 32 run (> 0.1: disturbed).",
        "",
        "| config | index | recall@50 | searched | search ms | req/s C=32 | p50 / p99 ms C=32 | errors | fallbacks "
        "| server CPU/req ms | other cores | p50 / p99 ms C=1 | x before | x prev |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    prev = first
    for r in rows:
        h32, h1 = r["http"]["c32"], r["http"]["c1"]
        p = r["index"]["params"]
        index = f"hnsw M{p.get('m')} ef{p.get('ef_search')} {p.get('storage', 'flat')}"
        lat32, lat1 = h32["latency_ms"], h1["latency_ms"]
        lines.append(
            f"| {r['label']} | {index} | {r['recall']['recall_at_50']:.4f} | {r['recall']['searched_per_user']:.2f} "
            f"of {r['recall']['interests_per_user']:.0f} | {r['recall']['search_ms']:.3f} | {h32['qps']:,.0f} | "
            f"{lat32['p50']:.2f} / {lat32['p99']:.2f} "
            f"| {h32['errors']} | {h32.get('fallbacks', 0)} | {h32['server_cpu_ms_per_request']:.3f} | "
            f"{h32['other_cores']:.2f} | "
            f"{lat1['p50']:.2f} / {lat1['p99']:.2f} | {h32['qps'] / max(first, 1e-9):.2f} | "
            f"{h32['qps'] / max(prev, 1e-9):.2f} |"
        )
        prev = h32["qps"]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    result = run(args)
    if args.build_only:
        print(json.dumps(result, indent=1, default=str))
        return
    save_results(args.results, args.name, result, report(result))


if __name__ == "__main__":
    main()
