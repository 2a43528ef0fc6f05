"""A large live blocklist under load: 100k blocked ids, block/unblock churn, real server
(docs/operations.md#blocking-items-without-a-reindex).

    python -m benchmarks.blocklist_churn [--blocked 100000] [--workers 2] [--duration 20] [--churn-every 0.2]

What it measures, on ``remi serve`` (Redis-backed, --workers processes) over the synthetic
100k-item catalogue of the serving benchmark (benchmarks/serving_setup.py, cached under --work):

* wrk (loadtest/recommend.lua, -c --concurrency) POSTs /recommend for users whose histories are in
  Redis, so every answer reads Redis: requests/s and ``history_unavailable`` fallbacks (Redis is
  healthy all along: every fallback is one the service caused);
* three phases of --duration seconds each: no list, --blocked ids and no change, the same list
  with a change every --churn-every seconds (alternately a block of one id and an unblock of
  the oldest id it blocked, so the list stays near --blocked);
* meanwhile a probe asks for one fixed request on a new connection each time (so every worker is
  sampled) and checks each answer against the ids blocked so far, with the time each block call
  returned: the worst age of a blocked item in an answer (the send time of the request minus the
  block's return), and how many answers held an item blocked more than 1 s before they were asked.
  The churn blocks the probe's own current top items, so a late worker shows.

The list is --blocked ids: --known of them catalogue items (the least popular ones, which do not
empty the answers), the rest ids the model does not know (a policy list names more than the
catalogue). Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks import harness
from benchmarks.harness import flags, md_table, save_results
from benchmarks.serving_http import real_server
from benchmarks.serving_setup import build_artifacts, delete_prefix, seed_histories, synthetic_spec, synthetic_users
from loadtest.wrk import WrkRun, ok_and_errors, wrk_argv
from remi.contract import ITEM_IDS

TOKEN = "bench-token"
K = 50


def parser() -> argparse.ArgumentParser:
    ap = harness.parser(__doc__, "blocklist_churn")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "remi-serving-bench",
                    help="cache of the synthetic artifacts and index root (as benchmarks.serving)")  # fmt: skip
    ap.add_argument("--items", type=int, default=100_000, help="catalogue size")
    ap.add_argument("--dim", type=int, default=64, help="embedding size d")
    ap.add_argument("--clusters", type=int, default=2000, help="topic clusters of the synthetic catalogue")
    ap.add_argument("--seed", type=int, default=0, help="seed of the catalogue, model and histories")
    ap.add_argument("--users", type=int, default=2000, help="users with a stored history (wrk's users)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the Redis of the server")
    ap.add_argument("--blocked", type=int, default=100_000, help="ids in the blocklist")
    ap.add_argument("--known", type=int, default=20_000, help="of them, catalogue items (the least popular)")
    ap.add_argument("--workers", type=int, default=2, help="server worker processes")
    ap.add_argument("--concurrency", type=int, default=32, help="wrk connections")
    ap.add_argument("--wrk-threads", type=int, default=2, help="wrk threads")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--churn-every", type=float, default=0.2, help="seconds between two changes in the churn phase")
    ap.add_argument(
        "--env", nargs="*", default=[], help="KEY=VALUE server environment (e.g. REMI_REDIS_TIMEOUT_MS=100)"
    )
    return ap


class Probe:
    """Asks one fixed request again and again on new connections; checks answers against the blocks."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.url, self.body = url, body
        self.blocked_at: dict[str, float] = {}  # id -> when its block call returned (monotonic)
        self.lock = threading.Lock()
        self.top: list[str] = []
        self.stop = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.answers = self.holding = self.late = 0
        self.worst_age = 0.0

    def run(self) -> None:
        with httpx.Client(timeout=30, headers={"connection": "close"}) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                response = client.post(f"{self.url}/recommend", json=self.body)
                if response.status_code != 200:
                    continue
                items = [item["item_id"] for item in orjson.loads(response.content)["items"]]
                with self.lock:
                    self.top = items
                    ages = [sent - self.blocked_at[i] for i in items if i in self.blocked_at]
                    self.answers += 1
                    if ages:
                        self.holding += 1
                        self.worst_age = max(self.worst_age, max(ages))
                        self.late += max(ages) > 1.0
                time.sleep(0.02)


def change(url: str, op: str, ids: list[str]) -> None:
    response = httpx.post(f"{url}/admin/items/{op}", json={"item_ids": ids},
                          headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)  # fmt: skip
    response.raise_for_status()


def churn(url: str, probe: Probe, every: float, stop: threading.Event, counts: dict[str, int]) -> None:
    """Alternately blocks the probe's top unblocked item and unblocks the oldest one it blocked."""
    mine: list[str] = []
    block_next = True
    while not stop.wait(every):
        if block_next or not mine:
            with probe.lock:
                fresh = [i for i in probe.top if i not in probe.blocked_at]
            if not fresh:
                continue
            change(url, "block", [fresh[0]])
            with probe.lock:
                probe.blocked_at[fresh[0]] = time.monotonic()
            mine.append(fresh[0])
            counts["blocks"] += 1
        else:
            item = mine.pop(0)
            with probe.lock:
                del probe.blocked_at[item]  # before the call: it may come back from now on
            change(url, "unblock", [item])
            counts["unblocks"] += 1
        block_next = not block_next


def phase(
    label: str, url: str, users_file: Path, args: argparse.Namespace, probe: Probe, churning: bool
) -> dict[str, Any]:
    probe.reset()
    counts = {"blocks": 0, "unblocks": 0}
    stop = threading.Event()
    changer = threading.Thread(target=churn, args=(url, probe, args.churn_every, stop, counts), daemon=True)
    run = WrkRun(wrk_argv(url, users_file, args.concurrency, args.duration, args.wrk_threads))
    if churning:
        changer.start()
    out = run.finish()
    stop.set()
    if churning:
        changer.join()
    ok, errors = ok_and_errors(out)
    with probe.lock:
        cell = {
            "phase": label,
            "requests": out["requests"],
            "requests_per_s": out["qps"],
            "latency_ms": out.get("latency_ms"),
            "errors": errors,
            "fallbacks": out.get("fallbacks", 0),
            "history_unavailable": out.get("fallbacks_history_unavailable", 0),
            "changes": counts["blocks"] + counts["unblocks"],
            "probe_answers": probe.answers,
            "probe_answers_holding_a_blocked_item": probe.holding,
            "probe_answers_with_an_item_blocked_over_1s_before": probe.late,
            "worst_blocked_item_age_s": round(probe.worst_age, 3),
        }
    print(cell, flush=True)
    return cell


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    import asyncio

    from index.publish import reindex

    spec = synthetic_spec(args.items, args.dim, args.clusters, args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    art = build_artifacts(args.work / f"artifacts-{spec['items']}-{spec['dim']}-{spec['seed']}", spec)
    root = args.work / f"root-{spec['items']}-{spec['dim']}-{spec['seed']}"
    reindex(art, root, "hnsw")
    (root / "blocklist.json").unlink(missing_ok=True)  # no copy of an earlier run's list
    users, histories = synthetic_users(art, spec, args.users)
    users_file = args.work / "churn-users.txt"
    users_file.write_text("\n".join(users) + "\n")
    item_ids = (art / ITEM_IDS).read_text().split("\n")[: args.items]
    known = item_ids[len(item_ids) - args.known :]  # the least popular items (rows by popularity)
    blocked = known + [f"gone-{n}" for n in range(args.blocked - len(known))]
    prefix = f"remi-bench-churn-{os.getpid()}-{int(time.time())}:"
    env = {"REMI_ADMIN_TOKEN": TOKEN, **dict(kv.split("=", 1) for kv in args.env)}
    loadavg = list(os.getloadavg())
    cells = []
    try:
        asyncio.run(seed_histories(args.redis_url, prefix, users, histories))
        log = args.work / "churn-server.log"
        with real_server(args, root, prefix, args.workers, True, log, env) as server:
            url = server.url
            probe = Probe(url, {"user_id": "probe", "k": K, "history": histories[0], "use_stored_history": False})
            prober = threading.Thread(target=probe.run, daemon=True)
            prober.start()
            cells.append(phase("no list", url, users_file, args, probe, churning=False))
            t0 = time.perf_counter()
            for start in range(0, len(blocked), 1000):
                change(url, "block", blocked[start : start + 1000])
            fill_s = time.perf_counter() - t0
            time.sleep(2)
            cells.append(phase(f"{len(blocked):,} ids, no change", url, users_file, args, probe, churning=False))
            cells.append(phase(f"{len(blocked):,} ids, churn", url, users_file, args, probe, churning=True))
            probe.stop.set()
            prober.join()
    finally:
        delete_prefix(args.redis_url, prefix)
    base = cells[1]["requests_per_s"]
    rows = [
        [
            c["phase"],
            f"{c['requests_per_s']:.0f}",
            f"{(c['requests_per_s'] / base - 1) * 100:+.0f}%",
            c["requests"],
            c["history_unavailable"],
            f"{100 * c['history_unavailable'] / max(1, c['requests']):.2f}%",
            c["errors"],
            c["changes"],
            c["probe_answers"],
            c["probe_answers_with_an_item_blocked_over_1s_before"],
            f"{c['worst_blocked_item_age_s']:.3f}",
        ]
        for c in cells
    ]
    columns = ["phase", "req/s", "vs no change", "answers", "history_unavailable", "share", "errors", "changes",
               "probe answers", "probe answers with an id blocked > 1 s before",
               "worst age of a blocked id (s)"]  # fmt: skip
    command = f"python -m benchmarks.blocklist_churn {' '.join(sys.argv[1:] if argv is None else argv)}"
    header = (
        f"# A {args.blocked:,}-id blocklist under load ({args.items:,} items, HNSW, k={K}, "
        f"{args.workers} workers, wrk -t{args.wrk_threads} -c{args.concurrency}, {args.duration:.0f} s per phase)\n\n"
        f"`{command}`; load average at start {loadavg[0]:.1f} (the machine has {os.cpu_count()} cores). "
        f"Healthy Redis throughout: every history_unavailable is a fallback the service caused. "
        f"{args.known:,} of the ids are catalogue items; filling the list took {fill_s:.1f} s "
        f"({len(blocked) // 1000} calls of 1,000). Churn: one change every {args.churn_every} s, blocking the "
        "probe's current top item or unblocking the oldest such. Worst age: send time of a probe request minus "
        "the return of the block call of a blocked id its answer held (0 = none held one).\n\n"
    )
    result = {"args": flags(args), "cells": cells, "fill_s": fill_s,
              "loadavg": loadavg}  # fmt: skip
    save_results(args.results, args.name, result, header + md_table(columns, rows))


if __name__ == "__main__":
    main()
