"""A ~1M-item planted-topic interaction set in seconds (vectorised), for the 1M-item service chain.

``remi data synth`` draws one row at a time (9 minutes for 6M rows; far longer at 1M items,
where each draw walks a topic's whole popularity table). This script draws the same kind of data,
users following 2-4 topics with sticky switches and Zipf popularity inside a topic, with numpy
in one pass, and with a flatter Zipf exponent so that nearly every item of a 1M catalogue is
seen at least once (``--min-count 1`` then keeps ~1M items). Used by the 1M-item runs of
``benchmarks/worker_memory.py`` and ``benchmarks/serving_1m.py``; see docs/operations.md.

    python -m benchmarks.scale_data --out /tmp/scale-1m/data --users 150000 --items 1040000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.harness import flags, timed


def generate(users: int, items: int, topics: int, mean_len: int, zipf: float, seed: int) -> pd.DataFrame:
    """Rows (user_id, item_id, timestamp), each user's rows in time order."""
    rng = np.random.default_rng(seed)
    per_topic = -(-items // topics)
    lengths = rng.integers(mean_len // 2, mean_len * 3 // 2 + 1, users)
    n = int(lengths.sum())
    user = np.repeat(np.arange(users), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # each user follows 2-4 topics; a row stays on the previous row's topic with probability 0.7
    n_topics = rng.integers(2, 5, users)
    user_topics = rng.integers(0, topics, (users, 4))
    switch = rng.random(n) > 0.7
    switch[starts] = True
    slot = (rng.random(n) * n_topics[user]).astype(np.int64)
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(n), 0))
    topic = user_topics[user, slot[last_switch]]
    # Zipf rank inside the topic by inverse CDF; item = topic + topics * rank (equal-size topics)
    cdf = np.cumsum(1.0 / np.arange(1, per_topic + 1) ** zipf)
    rank = np.searchsorted(cdf, rng.random(n) * cdf[-1])
    item = topic + topics * np.minimum(rank, per_topic - 1)
    item = np.where(item < items, item, topic)
    gaps = rng.integers(1, 86_400, n)
    t0 = rng.integers(1_500_000_000, 1_600_000_000, users)
    stamp = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - gaps[starts], lengths) + np.repeat(t0, lengths)
    return pd.DataFrame(
        {
            "user_id": np.char.add("u", user.astype(str)),
            "item_id": np.char.add("i", item.astype(str)),
            "timestamp": stamp,
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder; gets interactions.csv")
    ap.add_argument("--users", type=int, default=150_000, help="users")
    ap.add_argument("--items", type=int, default=1_040_000, help="catalogue size before k-core")
    ap.add_argument("--topics", type=int, default=200, help="planted topics")
    ap.add_argument("--mean-len", type=int, default=60, help="mean history length")
    ap.add_argument("--zipf", type=float, default=0.5, help="Zipf exponent of popularity inside a topic")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    args = ap.parse_args()
    with timed() as took:
        df = generate(args.users, args.items, args.topics, args.mean_len, args.zipf, args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out / "interactions.csv", index=False)
    info = {
        "rows": len(df),
        "users": int(df.user_id.nunique()),
        "items": int(df.item_id.nunique()),
        "seconds": round(took.wall_s, 1),
        "args": flags(args),
    }
    (args.out / "scale_data.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
