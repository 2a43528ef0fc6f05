"""`remi history load` against the real local Redis (own key prefix per test), then a real `remi serve`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from service.history import Event, RedisHistory, _encode, encode_many, history_key
from service.history_load import load_history
from tests.service.conftest import SHARED_REDIS, free_port, start_server


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(SHARED_REDIS, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="no Redis on 127.0.0.1:6379")


def interactions(seed: int = 0, users: int = 60, rows: int = 3000) -> pd.DataFrame:
    """Shuffled rows with many equal timestamps (file order decides ties) and users above max_len."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{u}" if u % 7 else f"odd:user {u}" for u in rng.integers(0, users, rows)],
            "item_id": [f"i{i}" for i in rng.integers(0, 500, rows)],
            "timestamp": rng.integers(1_600_000_000, 1_600_000_040, rows),  # 40 distinct: many ties
        }
    )


def expected(df: pd.DataFrame, max_len: int) -> dict[str, list[Event]]:
    """What training's order gives: stable sort by time per user, ties in file order; the last max_len."""
    out: dict[str, list[Event]] = {}
    ordered = df.sort_values("timestamp", kind="stable")
    for user, group in ordered.groupby("user_id", sort=False):
        tail = group.tail(max_len)
        out[str(user)] = [Event(i, int(t)) for i, t in zip(tail["item_id"], tail["timestamp"], strict=True)]
    return out


def stored(prefix: str, users: list[str], max_len: int) -> dict[str, list[Event]]:
    async def go() -> list[list[Event]]:
        store = RedisHistory(SHARED_REDIS, prefix=prefix, max_len=max_len, timeout_s=5)
        try:
            return await store.get_many(users, 10_000)
        finally:
            await store.close()

    return dict(zip(users, asyncio.run(go()), strict=True))


def load(path: Path, prefix: str, max_len: int = 25, **kw: object) -> dict[str, object]:
    options: dict[str, object] = {"prefix": prefix, "max_len": max_len, "ttl_seconds": 3600, **kw}
    return load_history(path, SHARED_REDIS, **options).as_dict()  # type: ignore[arg-type]


def test_encode_many_is_the_services_encoding() -> None:
    items, stamps = ["a", "b:c", "é"], [0, 1_600_000_000, 5]
    assert encode_many(items, stamps) == [_encode(Event(i, t)) for i, t in zip(items, stamps, strict=True)]


def test_load_keeps_the_last_max_len_in_training_order_and_a_rerun_changes_nothing(
    tmp_path: Path, redis_prefix: str
) -> None:
    df = interactions()
    path = tmp_path / "interactions.csv.gz"
    df.to_csv(path, index=False)
    want = expected(df, 25)
    # small partitions: users are spread over several files, the result must not care
    first = load(path, redis_prefix, rows_per_partition=700, batch_events=200)
    assert first["partitions"] > 1 and first["users"] == len(want) and first["rows"] == len(df)
    assert first["events"] == sum(len(v) for v in want.values())
    got = stored(redis_prefix, list(want), 25)
    assert got == want  # order = what the service's get() returns, capped at max_len
    assert max(len(v) for v in got.values()) == 25
    client = redis.Redis.from_url(SHARED_REDIS, decode_responses=True)
    raw_before = {u: client.lrange(history_key(redis_prefix, u), 0, -1) for u in want}
    ttl = client.ttl(history_key(redis_prefix, "u1"))
    assert 3500 < ttl <= 3600

    second = load(path, redis_prefix)
    assert second["events"] == first["events"]
    assert {u: client.lrange(history_key(redis_prefix, u), 0, -1) for u in want} == raw_before  # never doubled
    client.close()


def test_events_posted_after_a_load_join_the_loaded_history_in_timestamp_order(
    tmp_path: Path, redis_prefix: str
) -> None:
    """One rule for both paths (docs/operations.md#scaling-the-api-horizontally, a history's order):
    the loader sorts by timestamp (file order on ties), and an event posted later with an older
    timestamp goes where its timestamp puts it."""
    path = tmp_path / "interactions.csv"
    pd.DataFrame({"user_id": ["u1"] * 4, "item_id": ["c", "a", "tie-1", "b"], "timestamp": [30, 10, 20, 20]}).to_csv(
        path, index=False
    )
    load(path, redis_prefix)

    async def go() -> list[Event]:
        store = RedisHistory(SHARED_REDIS, prefix=redis_prefix, max_len=25)
        try:
            await store.append("u1", [Event("late", 15), Event("tie-2", 20)])
            return await store.get("u1", 25)
        finally:
            await store.close()

    got = asyncio.run(go())
    assert got == [
        Event("a", 10),
        Event("late", 15),
        Event("tie-1", 20),
        Event("b", 20),
        Event("tie-2", 20),
        Event("c", 30),
    ]


def test_a_loaded_user_is_replaced_and_other_users_are_untouched(tmp_path: Path, redis_prefix: str) -> None:
    async def append(user: str) -> None:
        store = RedisHistory(SHARED_REDIS, prefix=redis_prefix, timeout_s=5)
        try:
            await store.append(user, [Event("live", 1)])
        finally:
            await store.close()

    asyncio.run(append("u1"))
    asyncio.run(append("not-in-file"))
    df = interactions(users=5, rows=50)
    path = tmp_path / "i.csv"
    df.to_csv(path, index=False)
    load(path, redis_prefix, max_len=200)
    got = stored(redis_prefix, ["u1", "not-in-file"], 200)
    assert got["u1"] == expected(df, 200)["u1"]
    assert got["not-in-file"] == [Event("live", 1)]


def test_parquet_file_and_folder_of_parts_load_like_the_csv(tmp_path: Path, redis_prefix: str) -> None:
    df = interactions(seed=3)
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, tmp_path / "one.parquet", row_group_size=500)
    parts = tmp_path / "parts"
    parts.mkdir()
    for n, start in enumerate(range(0, len(df), 1000)):
        pq.write_table(table.slice(start, 1000), parts / f"part-{n:03d}.parquet")
    want = expected(df, 25)
    for source, prefix in ((tmp_path / "one.parquet", redis_prefix + "a:"), (parts, redis_prefix + "b:")):
        report = load(source, prefix, rows_per_partition=1000)
        assert report["rows"] == len(df)
        assert stored(prefix, list(want), 25) == want


def test_warehouse_export_folders_load_like_the_csv(tmp_path: Path, redis_prefix: str) -> None:
    """Hive key=value/ subfolders, suffix-less parts (BigQuery) and Spark's _SUCCESS marker."""
    df = interactions(seed=4)
    table = pa.Table.from_pandas(df, preserve_index=False)
    hive, plain = tmp_path / "hive", tmp_path / "plain"
    plain.mkdir()
    (plain / "_SUCCESS").write_text("")
    for n, start in enumerate(range(0, len(df), 1000)):
        (hive / f"day={n}").mkdir(parents=True)
        pq.write_table(table.slice(start, 1000), hive / f"day={n}" / "part-0.snappy.parquet")
        pq.write_table(table.slice(start, 1000), plain / f"{n:012d}")
    want = expected(df, 25)
    for source, prefix in ((hive, redis_prefix + "h:"), (plain, redis_prefix + "p:")):
        report = load(source, prefix, rows_per_partition=1000)
        assert report["rows"] == len(df)
        assert stored(prefix, list(want), 25) == want


def test_a_bad_parquet_part_is_a_one_line_error_naming_it(tmp_path: Path, redis_prefix: str) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(interactions(rows=10), preserve_index=False), folder / "part-0.parquet")
    (folder / "part-1.parquet").write_bytes(b"PAR1" + b"\x00" * 32)
    result = _cli("--data", str(folder), "--redis-url", SHARED_REDIS, "--prefix", redis_prefix)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "part-1.parquet" in result.stderr, result.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "history", "load", "--no-progress", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, redis_prefix: str) -> None:
    good = tmp_path / "i.csv"
    interactions(rows=10).to_csv(good, index=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,time\n1,2,3\n")
    cases = {
        "data file not found": ["--data", str(tmp_path / "nope.csv"), "--redis-url", SHARED_REDIS],
        "missing column(s) user_id, item_id, timestamp": ["--data", str(bad), "--redis-url", SHARED_REDIS],
        "cannot use Redis": ["--data", str(good), "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
        "bad Redis URL": ["--data", str(good), "--redis-url", "http://example/0"],
    }
    for message, args in cases.items():
        result = _cli(*args, "--prefix", redis_prefix)
        assert result.returncode == 2, (message, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_loaded_users_get_personalised_answers_from_a_real_serve(
    artifacts_dir: Path, synth_csv: Path, tmp_path: Path, redis_prefix: str
) -> None:
    result = _cli("--data", str(synth_csv), "--redis-url", SHARED_REDIS, "--prefix", redis_prefix)
    assert result.returncode == 0, result.stderr
    assert "events/s" in result.stderr
    user = pd.read_csv(synth_csv, nrows=1, dtype=str)["user_id"].iloc[0]
    server = start_server(
        tmp_path / "root",
        artifacts_dir,
        REMI_REDIS_URL=SHARED_REDIS,
        REMI_REDIS_PREFIX=redis_prefix,
        REMI_SEED_HISTORY=str(synth_csv),  # ignored with Redis: must say so
    )
    try:
        body = httpx.post(f"{server.url}/recommend", json={"user_id": user}, timeout=10).json()
        assert body["fallback"] is None and body["history_len"] > 0
        unknown = httpx.post(f"{server.url}/recommend", json={"user_id": "nobody-loaded"}, timeout=10).json()
        assert unknown["fallback"] == "cold_start"
        log = server.log.read_text()
        assert "history load" in log and '"level": "warning"' in log
        assert "warning: --seed-history is ignored" in log  # the CLI's stderr line
    finally:
        server.stop()


def test_the_loader_does_not_import_torch_or_training() -> None:
    code = "import sys, service.history_load; assert not {'torch', 'training'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
