"""Synthetic interactions with planted multi-interest structure.

Items belong to topic clusters with Zipf popularity inside each topic; each user follows 2-4
topics and produces an interleaved sequence that sticks to one topic for a few steps, then
switches. A model that learns several interests should recover the topics, which tests and the
quick start check against the ground truth written beside the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SynthConfig:
    users: int = 2000
    items: int = 1000
    topics: int = 20
    min_topics: int = 2
    max_topics: int = 4
    min_len: int = 10
    max_len: int = 60
    stay_prob: float = 0.7
    zipf: float = 1.1
    seed: int = 0


def generate(cfg: SynthConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Returns the interactions (string ids) and the ground truth (item -> topic, user -> topics)."""
    rng = np.random.default_rng(cfg.seed)
    item_topic = rng.integers(0, cfg.topics, cfg.items)
    topic_items = [np.flatnonzero(item_topic == t) for t in range(cfg.topics)]
    topic_probs = []
    for members in topic_items:
        w = 1.0 / np.arange(1, len(members) + 1) ** cfg.zipf
        topic_probs.append(w / w.sum() if len(w) else w)
    topic_weight = 1.0 / np.arange(1, cfg.topics + 1) ** 0.5  # some topics are more popular
    topic_weight /= topic_weight.sum()

    users, items, stamps, user_topics = [], [], [], {}
    for u in range(cfg.users):
        n_topics = int(rng.integers(cfg.min_topics, cfg.max_topics + 1))
        topics = rng.choice(cfg.topics, size=n_topics, replace=False, p=topic_weight)
        length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        current = int(rng.integers(n_topics))
        t = int(rng.integers(1_500_000_000, 1_600_000_000))
        uid = f"u{u}"
        user_topics[uid] = [int(x) for x in topics]
        for _ in range(length):
            if rng.random() > cfg.stay_prob:
                current = int(rng.integers(n_topics))
            topic = topics[current]
            members = topic_items[topic]
            if len(members) == 0:
                continue
            item = members[rng.choice(len(members), p=topic_probs[topic])]
            users.append(uid)
            items.append(f"i{item}")
            stamps.append(t)
            t += int(rng.integers(1, 86_400))
    df = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": stamps})
    truth = {
        "config": cfg.__dict__,
        "item_topic": {f"i{i}": int(item_topic[i]) for i in range(cfg.items)},
        "user_topics": user_topics,
    }
    return df, truth


def write(cfg: SynthConfig, out_dir: str | Path) -> Path:
    """Writes ``interactions.csv.gz`` and ``topics.json`` into out_dir; returns the CSV path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df, truth = generate(cfg)
    path = out / "interactions.csv.gz"
    df.to_csv(path, index=False)
    (out / "topics.json").write_text(json.dumps(truth))
    return path
