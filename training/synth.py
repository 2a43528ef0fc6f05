"""Synthetic interactions with planted multi-interest structure, generated vectorised in chunks.

Items belong to topic clusters with Zipf popularity inside each topic; each user follows 2-4
topics and produces an interleaved sequence that sticks to one topic for a few steps, then
switches. A model that learns several interests should recover the topics, which tests and the
quick start check against the ground truth written beside the data (``topics.json``).

Users are generated in fixed chunks of numpy arrays (no Python loop per row) and streamed to a
CSV.gz or a Parquet file, so the Taobao-shaped set (:meth:`SynthConfig.taobao`: 100M rows, 1M
users, 4M items) takes minutes and memory bounded by one chunk. Output is deterministic per seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from remi.contract import INTERACTION_COLUMNS

USERS_PER_CHUNK = 20_000
SynthFormat = Literal["csv", "parquet"]
FILE_NAMES = {"csv": "interactions.csv.gz", "parquet": "interactions.parquet"}


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

    @classmethod
    def taobao(cls, rows: int = 100_000_000, seed: int = 0) -> SynthConfig:
        """The shape of ComiRec's Taobao set scaled to ``rows``: 100 rows per user on average
        (20-180), 4 items per user (4M items at 100M rows), ~4,000 items per topic."""
        users = max(10, rows // 100)
        items = max(10, 4 * users)
        return cls(users=users, items=items, topics=max(20, items // 4000), min_len=20, max_len=180, seed=seed)

    @property
    def expected_rows(self) -> int:
        return self.users * (self.min_len + self.max_len) // 2


@dataclass(frozen=True)
class _Tables:
    """What every chunk shares: topic of each item and the per-topic Zipf sampling tables."""

    item_topic: np.ndarray  # (items,) topic of each item
    members: np.ndarray  # items grouped by topic, ascending within a topic (rank 0 = most popular)
    member_cdf: np.ndarray  # topic + cumulative Zipf probability within the topic, aligned with members
    member_end: np.ndarray  # (topics,) one past each topic's last position in members
    topic_size: np.ndarray  # (topics,)
    topic_cdf: np.ndarray  # (topics,) cumulative topic weights (some topics are more popular)


def _tables(cfg: SynthConfig) -> _Tables:
    rng = np.random.default_rng(cfg.seed)
    item_topic = rng.integers(0, cfg.topics, cfg.items)
    members = np.argsort(item_topic, kind="stable")
    size = np.bincount(item_topic, minlength=cfg.topics)
    end = np.cumsum(size)
    rank = np.arange(cfg.items) - np.repeat(end - size, size)  # position inside the topic
    weight = 1.0 / (rank + 1.0) ** cfg.zipf
    topic_of_slot = item_topic[members]
    total = np.bincount(topic_of_slot, weights=weight, minlength=cfg.topics)
    within = np.cumsum(weight) - np.repeat(np.cumsum(total) - total, size)
    cdf = topic_of_slot + within / np.maximum(total[topic_of_slot], 1e-300)
    cdf[end[size > 0] - 1] = np.flatnonzero(size > 0) + 1.0  # exact topic ends: no slot is skipped
    topic_weight = 1.0 / np.arange(1, cfg.topics + 1) ** 0.5
    return _Tables(item_topic, members, cdf, end, size, np.cumsum(topic_weight / topic_weight.sum()))


def _choose_topics(rng: np.random.Generator, cdf: np.ndarray, n_users: int, k: int) -> np.ndarray:
    """(n_users, k) distinct topics per user drawn by weight without replacement (redraw duplicates:
    the same law as ``rng.choice(replace=False, p=...)``)."""
    out = np.empty((n_users, k), dtype=np.int64)
    for j in range(k):
        todo = np.arange(n_users)
        while len(todo):
            out[todo, j] = np.minimum(np.searchsorted(cdf, rng.random(len(todo)), side="right"), len(cdf) - 1)
            todo = todo[(out[todo, :j] == out[todo, j : j + 1]).any(axis=1)]
    return out


@dataclass(frozen=True)
class _Chunk:
    users: np.ndarray  # (R,) user number of each row
    items: np.ndarray  # (R,) item number
    stamps: np.ndarray  # (R,) Unix seconds
    topics: np.ndarray  # (U, max_topics) the chunk's users' topics (first n_topics valid)
    n_topics: np.ndarray  # (U,)


def _chunk(cfg: SynthConfig, tables: _Tables, first: int, count: int) -> _Chunk:
    rng = np.random.default_rng([cfg.seed, first])
    k_max = min(cfg.max_topics, cfg.topics)
    n_topics = np.minimum(rng.integers(cfg.min_topics, cfg.max_topics + 1, count), k_max)
    topics = _choose_topics(rng, tables.topic_cdf, count, k_max)
    length = rng.integers(cfg.min_len, cfg.max_len + 1, count)
    current0 = (rng.random(count) * n_topics).astype(np.int64)
    t0 = rng.integers(1_500_000_000, 1_600_000_000, count)
    total = int(length.sum())
    user_of = np.repeat(np.arange(count), length)
    start = np.cumsum(length) - length
    pos = np.arange(total)
    # Each step switches to a random one of the user's topics with probability 1 - stay_prob.
    switch = rng.random(total) > cfg.stay_prob
    draw = (rng.random(total) * n_topics[user_of]).astype(np.int64)
    last = np.maximum.accumulate(np.where(switch, pos, -1))
    mine = last >= start[user_of]
    current = np.where(mine, draw[np.maximum(last, 0)], current0[user_of])
    topic = topics[user_of, current]
    r = rng.random(total)
    step = rng.integers(1, 86_400, total)
    keep = tables.topic_size[topic] > 0  # an empty topic yields no row (and no time step)
    slot = np.searchsorted(tables.member_cdf, topic + r, side="right")
    slot = np.minimum(slot, tables.member_end[topic] - 1)
    step = np.where(keep, step, 0)
    elapsed = np.cumsum(step) - step
    stamps = t0[user_of] + elapsed - elapsed[start][user_of]
    return _Chunk(
        users=(first + user_of)[keep],
        items=tables.members[np.maximum(slot, 0)][keep],
        stamps=stamps[keep],
        topics=topics,
        n_topics=n_topics,
    )


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def iter_chunks(cfg: SynthConfig) -> Iterator[tuple[pa.Table, _Chunk]]:
    """(table of user_id, item_id, timestamp rows, raw chunk) per chunk of users, in user order."""
    tables = _tables(cfg)
    for first in range(0, cfg.users, USERS_PER_CHUNK):
        chunk = _chunk(cfg, tables, first, min(USERS_PER_CHUNK, cfg.users - first))
        columns = [_ids("u", chunk.users), _ids("i", chunk.items), pa.array(chunk.stamps, pa.int64())]
        yield pa.table(dict(zip(INTERACTION_COLUMNS, columns, strict=True))), chunk


def generate(cfg: SynthConfig) -> tuple[Any, dict[str, Any]]:
    """The interactions as a pandas frame (string ids) and the ground truth (small configs: tests, demo)."""
    parts, chunks = zip(*iter_chunks(cfg), strict=True) if cfg.users else ((), ())
    df = pa.concat_tables(parts).to_pandas()
    topics = np.concatenate([c.topics for c in chunks])
    n_topics = np.concatenate([c.n_topics for c in chunks])
    truth = {
        "config": asdict(cfg),
        "item_topic": {f"i{i}": int(t) for i, t in enumerate(_tables(cfg).item_topic)},
        "user_topics": {f"u{u}": [int(x) for x in topics[u, : n_topics[u]]] for u in range(cfg.users)},
    }
    return df, truth


def _write_truth(
    cfg: SynthConfig, item_topic: np.ndarray, topics: np.ndarray, n_topics: np.ndarray, f: IO[str]
) -> None:
    """``topics.json`` streamed in slices (4M items would be a 4M-entry dict): same JSON as json.dumps."""
    f.write('{"config": ' + json.dumps(asdict(cfg)) + ', "item_topic": {')
    step = 200_000
    for lo in range(0, len(item_topic), step):
        part = ", ".join(f'"i{lo + j}": {t}' for j, t in enumerate(item_topic[lo : lo + step].tolist()))
        f.write((", " if lo else "") + part)
    f.write('}, "user_topics": {')
    for lo in range(0, len(topics), step):
        rows = topics[lo : lo + step].tolist()
        counts = n_topics[lo : lo + step].tolist()
        part = ", ".join(f'"u{lo + j}": {json.dumps(r[:c])}' for j, (r, c) in enumerate(zip(rows, counts, strict=True)))
        f.write((", " if lo else "") + part)
    f.write("}}")


def write(cfg: SynthConfig, out_dir: str | Path, fmt: SynthFormat = "csv", progress: bool = False) -> Path:
    """Writes the interactions (``interactions.csv.gz`` or ``interactions.parquet``, one row group per
    chunk of users) and ``topics.json`` into out_dir; returns the data path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILE_NAMES[fmt]
    topics, n_topics = [], []
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])
    bar = tqdm(total=cfg.expected_rows, unit="rows", unit_scale=True, desc="synth", disable=not progress)
    writer: Any
    if fmt == "parquet":
        writer = pq.ParquetWriter(path, schema, compression="zstd")
    else:
        sink = pa.CompressedOutputStream(str(path), "gzip")
        writer = pacsv.CSVWriter(sink, schema, write_options=pacsv.WriteOptions(quoting_style="none"))
    try:
        for table, chunk in iter_chunks(cfg):
            writer.write_table(table)
            topics.append(chunk.topics)
            n_topics.append(chunk.n_topics)
            bar.update(table.num_rows)
    finally:
        writer.close()
        if fmt == "csv":
            sink.close()
        bar.close()
    with (out / "topics.json").open("w") as f:
        _write_truth(cfg, _tables(cfg).item_topic, np.concatenate(topics), np.concatenate(n_topics), f)
    return path
