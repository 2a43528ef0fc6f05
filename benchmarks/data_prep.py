"""How long loading and preparing 1M interactions takes (read CSV.gz, k-core, sort, encode, split, cut).

    python benchmarks/data_prep.py --rows 1000000

Writes benchmarks/results/data_prep.json and data_prep.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.report import md_table
from remi.contract import INTERACTION_COLUMNS
from training.data import encode, eval_set, read_interactions, split_users

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="interactions to generate")
    ap.add_argument("--users", type=int, default=60_000, help="distinct users")
    ap.add_argument("--items", type=int, default=50_000, help="distinct items (Zipf popularity)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    users = rng.integers(0, args.users, args.rows)
    items = np.minimum(rng.zipf(1.2, args.rows), args.items) - 1
    stamps = rng.integers(1_500_000_000, 1_600_000_000, args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "interactions.csv.gz"
        columns = [[f"u{u}" for u in users], [f"i{i}" for i in items], stamps]
        pd.DataFrame(dict(zip(INTERACTION_COLUMNS, columns, strict=True))).to_csv(path, index=False)
        timings = {}
        t = time.perf_counter()
        df = read_interactions(path)
        timings["read + validate"] = time.perf_counter() - t
        t = time.perf_counter()
        data = encode(df, min_count=5)
        timings["k-core + sort + encode"] = time.perf_counter() - t
        t = time.perf_counter()
        split = split_users(data)
        ev = eval_set(data, split.test, 20)
        timings["split + eval cut"] = time.perf_counter() - t
    timings["total"] = sum(timings.values())
    out = {
        "rows": args.rows,
        "users_after": data.n_users,
        "items_after": data.n_items,
        "interactions_after": len(data.items),
        "eval_users": len(ev.users),
        "seconds": timings,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_prep.json").write_text(json.dumps(out, indent=2))
    text = (
        f"# Data preparation of {args.rows:,} interactions (CSV.gz)\n\n"
        f"After the 5-core filter: {data.n_users:,} users, {data.n_items:,} items, {len(data.items):,} rows.\n\n"
        + md_table(["stage", "seconds"], [[k, v] for k, v in timings.items()])
    )
    (RESULTS / "data_prep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
