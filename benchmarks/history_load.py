"""How fast does `remi history load` fill Redis? 1M synthetic interactions into the local Redis.

    python -m benchmarks.history_load [--rows 1000000] [--redis-url redis://127.0.0.1:6379/0]

Writes a gzipped CSV of `--rows` interactions (uniform users, Zipf items, random timestamps),
loads it twice under a private key prefix (the second run shows the idempotent re-run costs the
same), deletes that prefix's keys with SCAN + DEL (never a FLUSH) and saves
benchmarks/results/history_load.{json,md}.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import redis

from benchmarks.harness import machine, parser, save_results, timed
from remi.contract import INTERACTION_COLUMNS
from service.history_load import load_history


def synth(path: Path, rows: int, users: int, items: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, users, rows)  # ~10 events a user: nearly every row is kept
    item = (rng.zipf(1.2, rows) % items).astype(np.int64)
    stamp = 1_600_000_000 + rng.integers(0, 86400 * 365, rows)
    pd.DataFrame(dict(zip(INTERACTION_COLUMNS, (user, item, stamp), strict=True))).to_csv(path, index=False)


def delete_prefix(url: str, prefix: str) -> int:
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


def main() -> None:
    ap = parser(__doc__, "history_load")
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic interactions")
    ap.add_argument("--users", type=int, default=100_000, help="distinct users")
    ap.add_argument("--items", type=int, default=50_000, help="distinct items")
    ap.add_argument("--max-len", type=int, default=200, help="events kept per user")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the Redis to load into")
    args = ap.parse_args()

    prefix = f"remi-bench-load:{uuid.uuid4().hex[:8]}:"
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "interactions.csv.gz"
        with timed() as took:
            synth(data, args.rows, args.users, args.items)
        print(f"generated {args.rows:,} rows in {took.wall_s:.1f} s ({data.stat().st_size / 1e6:.1f} MB)")
        try:
            for run in ("first", "re-run"):
                report = load_history(data, args.redis_url, prefix=prefix, max_len=args.max_len, ttl_seconds=3600)
                runs.append({"run": run, **report.as_dict()})
                print(run, report.line())
        finally:
            deleted = delete_prefix(args.redis_url, prefix)
            print(f"deleted {deleted:,} keys under {prefix}")
    info = redis.Redis.from_url(args.redis_url).info("server")
    result = {
        "rows": args.rows,
        "users": args.users,
        "items": args.items,
        "max_len": args.max_len,
        "runs": runs,
        "redis_version": info.get("redis_version"),
        **machine(),
    }
    lines = [
        "# `remi history load` throughput",
        "",
        f"{args.rows:,} synthetic interactions (CSV.gz, {args.users:,} users, {args.items:,} items), "
        f"max_len {args.max_len}, into a local Redis {result['redis_version']} on {result['machine']}, "
        f"{result['cpus']} cores (shared with other jobs).",
        "",
        "| run | users | events written | rows read | partitions | seconds | events/s | rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['run']} | {r['users']:,} | {r['events']:,} | {r['rows']:,} | {r['partitions']} | "
            f"{r['seconds']:.1f} | {r['events_per_s']:,.0f} | {r['rows'] / r['seconds']:,.0f} |"
        )
    lines += ["", "events/s counts events written over the whole command (read + partition + sort + write)."]
    save_results(args.results, args.name, result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
