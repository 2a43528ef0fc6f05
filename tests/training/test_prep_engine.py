"""The DuckDB prep path against the pandas path (the oracle), on every input layout; bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remi.contract import ItemVocabulary
from remi.errors import RemiError
from training.config import TrainConfig
from training.data import (
    Interactions,
    encode,
    eval_set,
    kcore_mask,
    read_interactions,
    read_split_file,
    split_users,
)
from training.prep_engine import PrepEngine, strings_to_numpy
from training.prepare import prepare
from training.synth import SynthConfig, generate, write


def _frame(rows: int = 6000, seed: int = 0) -> pd.DataFrame:
    """Shuffled rows with many timestamp ties and repeated (user, item) pairs: what the sort must keep."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in rng.integers(0, rows // 15, rows)],
            "item_id": [f"i{x}" for x in np.minimum(rng.zipf(1.4, rows), 800)],
            "timestamp": rng.integers(0, 40, rows),
        }
    )


def _main_encode(df: pd.DataFrame, min_count: int = 5, iterative: bool = True) -> Interactions:
    """training.data.encode as it was before the DuckDB engine (commit 3537b03), verbatim: the oracle."""
    user_codes, user_uniques = pd.factorize(df["user_id"], sort=False)
    item_codes, item_uniques = pd.factorize(df["item_id"], sort=False)
    keep = kcore_mask(user_codes, item_codes, min_count, iterative)
    u, it, ts = user_codes[keep], item_codes[keep], df["timestamp"].to_numpy()[keep]
    order = np.lexsort((ts, u))  # stable: ties keep file order
    u, it = u[order], it[order]
    counts = np.bincount(it, minlength=len(item_uniques))
    present = np.flatnonzero(counts)
    by_pop = present[np.argsort(-counts[present], kind="stable")]
    remap = np.zeros(len(item_uniques), dtype=np.int64)
    remap[by_pop] = ItemVocabulary.rows_to_indices(np.arange(len(by_pop)))
    users_present, user_index = np.unique(u, return_inverse=True)
    offsets = np.zeros(len(users_present) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_index), out=offsets[1:])
    return Interactions(
        user_ids=np.asarray(user_uniques, dtype=object)[users_present],
        item_ids=np.asarray(item_uniques, dtype=object)[by_pop],
        offsets=offsets,
        items=remap[it],
    )


def _same(a: Interactions, b: Interactions) -> None:
    assert list(a.user_ids) == list(b.user_ids)
    assert list(a.item_ids) == list(b.item_ids)
    assert np.array_equal(a.offsets, b.offsets) and a.offsets.dtype == np.int64
    assert np.array_equal(a.items, b.items) and a.items.dtype == np.int32 and len(a.items) == len(b.items)


def _engine(path: Path, min_count: int = 5, iterative: bool = True) -> Interactions:
    with PrepEngine(memory_limit_gb=0.5, threads=2) as engine:
        return engine.encode(path, min_count=min_count, iterative=iterative)


def _layouts(df: pd.DataFrame, root: Path) -> dict[str, Path]:
    """The same rows as CSV, CSV.gz, one Parquet file, hive-partitioned and plain folders of parts."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    paths = {"csv": root / "d.csv", "csv.gz": root / "d.csv.gz", "parquet": root / "d.parquet"}
    df.to_csv(paths["csv"], index=False)
    df.to_csv(paths["csv.gz"], index=False)
    pq.write_table(table, paths["parquet"], row_group_size=777)
    hive = root / "hive"
    plain = root / "plain"
    plain.mkdir()
    (plain / "_SUCCESS").write_text("")  # Spark's marker: not data
    for n, start in enumerate(range(0, len(df), 1000)):
        part = hive / f"day=2024-01-{n + 1:02d}"
        part.mkdir(parents=True)
        pq.write_table(table.slice(start, 1000), part / f"part-{n:05d}.snappy.parquet")
        pq.write_table(table.slice(start, 1000), plain / f"{n:012d}")  # BigQuery-style: no suffix
    paths["hive folder"] = hive
    paths["plain folder"] = plain
    return paths


@pytest.mark.parametrize(("min_count", "iterative"), [(5, True), (3, False), (1, True)])
def test_engine_equals_the_pandas_path_on_every_layout(tmp_path: Path, min_count: int, iterative: bool) -> None:
    df = _frame()
    want = _main_encode(df, min_count=min_count, iterative=iterative)
    _same(encode(df, min_count=min_count, iterative=iterative), want)  # the refactored pandas path, too
    for name, path in _layouts(df, tmp_path).items():
        got = _engine(path, min_count, iterative)
        try:
            _same(got, want)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def test_split_eval_cuts_and_split_file_equal_the_pandas_path(tmp_path: Path) -> None:
    df = _frame(seed=1)
    path = tmp_path / "d.parquet"
    df.to_parquet(path)
    old = _main_encode(df, min_count=3)
    users = df["user_id"].unique()
    split_csv = tmp_path / "split.csv"
    parts = np.array(["train", "valid", "test"])[np.arange(len(users)) % 3]
    pd.DataFrame({"user_id": users, "part": parts}).to_csv(split_csv, index=False)
    cfg = TrainConfig(data=str(path), min_count=3, seq_len=8)
    prep = prepare(cfg)
    _same(prep.data, old)
    old_split = split_users(old, seed=cfg.split_seed)
    for part in ("train", "valid", "test"):
        assert np.array_equal(prep.split.part(part), old_split.part(part))
    want = eval_set(old, old_split.valid, 8)
    assert np.array_equal(prep.valid.history, want.history) and prep.valid.history.dtype == np.int64
    assert all(np.array_equal(a, b) for a, b in zip(prep.valid.truth, want.truth, strict=True))
    by_file = prepare(cfg.model_copy(update={"split_file": str(split_csv)}))
    want_split = read_split_file(split_csv, old, raw_users=set(users))
    for part in ("train", "valid", "test"):
        assert np.array_equal(by_file.split.part(part), want_split.part(part))


def test_split_file_naming_unknown_users_is_an_error_in_the_engine(tmp_path: Path) -> None:
    df = _frame(seed=2)
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    split_csv = tmp_path / "split.csv"
    pd.DataFrame({"user_id": ["nobody"], "part": ["train"]}).to_csv(split_csv, index=False)
    with pytest.raises(RemiError, match="not in the data"):
        prepare(TrainConfig(data=str(path), split_file=str(split_csv)))


def test_parquet_integer_ids_and_timestamp_types_read_like_the_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 3000
    users, items, stamps = rng.integers(0, 200, n), rng.integers(0, 100, n), rng.integers(10**9, 10**9 + 50, n)
    csv = tmp_path / "d.csv"
    pd.DataFrame({"user_id": users, "item_id": items, "timestamp": stamps}).to_csv(csv, index=False)
    typed = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "item_id": pa.array(items, pa.int32()),
            "timestamp": pa.array(stamps * 1000, pa.timestamp("ms", tz="UTC")),
        }
    )
    pq.write_table(typed, tmp_path / "typed.parquet")
    _same(_engine(tmp_path / "typed.parquet", 2), _main_encode(read_interactions(csv), min_count=2))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("user_id,item_id\nu,i\n", "missing column"),
        ("user_id,item_id,timestamp\nu,i,yesterday\n", "timestamp must be an integer"),
        ("user_id,item_id,timestamp\nu,i,1\nu,i,1.5\n", r"row 3 has '1.5'"),
        ("user_id,item_id,timestamp\n", "no interactions"),
        ("user_id,item_id,timestamp\nu,,1\n", "empty item_id on row 2"),
        ("", "empty"),
    ],
)
def test_bad_csv_raises_the_same_one_line_errors_as_before(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    for read in (read_interactions, _engine):
        with pytest.raises(RemiError, match=message) as info:
            read(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def _bad_parquet(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """(path to give, file the error must name)."""
    good = pa.table({"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3]})
    folder = tmp_path / "export"
    folder.mkdir()
    pq.write_table(good, folder / "part-0.parquet")
    bad = folder / "part-1.parquet"
    if case == "missing column":
        pq.write_table(good.drop_columns(["timestamp"]), bad)
    elif case == "wrong type":
        pq.write_table(good.set_column(1, "item_id", pa.array([1.5, 2.5, 3.5])), bad)
    elif case == "wrong timestamp type":
        pq.write_table(good.set_column(2, "timestamp", pa.array([True, False, True])), bad)
    elif case == "empty":
        pq.write_table(good.slice(0, 0), bad)
        (folder / "part-0.parquet").unlink()
        return folder, folder
    elif case == "corrupt":
        bad.write_bytes(b"PAR1" + b"\x00" * 64)
    elif case == "fractional timestamp":
        pq.write_table(good.set_column(2, "timestamp", pa.array([1.0, 2.5, 3.0])), bad)
    elif case == "null user":
        pq.write_table(good.set_column(0, "user_id", pa.array(["u", None, "u"])), bad)
    return folder, bad


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing column", "missing column(s) timestamp"),
        ("wrong type", "column item_id has type double"),
        ("wrong timestamp type", "column timestamp has type bool"),
        ("empty", "no interactions"),
        ("corrupt", "not a readable Parquet file"),
        ("fractional timestamp", "timestamp must be an integer (Unix seconds); row 2 has '2.5'"),
        ("null user", "empty user_id on row 2"),
    ],
)
def test_bad_parquet_raises_a_one_line_error_naming_file_and_column(tmp_path: Path, case: str, message: str) -> None:
    path, named = _bad_parquet(tmp_path, case)
    with pytest.raises(RemiError) as info:
        _engine(path, 1)
    text = str(info.value)
    assert message in text and str(named) in text and "\n" not in text, text


def test_a_folder_without_parquet_parts_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(RemiError, match="a folder without Parquet files"):
        _engine(tmp_path)


def test_training_on_parquet_parts_gives_the_metrics_of_the_csv(synth_csv: Path, tmp_path: Path) -> None:
    from training.trainer import train

    parts = tmp_path / "parts"
    parts.mkdir()
    table = pa.Table.from_pandas(pd.read_csv(synth_csv, dtype={"user_id": str, "item_id": str}), preserve_index=False)
    for n, start in enumerate(range(0, table.num_rows, 4000)):
        pq.write_table(table.slice(start, 4000), parts / f"part-{n:05d}.parquet")
    small = {"max_steps": 60, "eval_every": 30, "batch_size": 32, "negatives": 64, "dim": 16, "seed": 1}
    metrics = []
    for data, out in ((synth_csv, tmp_path / "csv"), (parts, tmp_path / "pq")):
        train(TrainConfig(data=str(data), scheme="sampled", **small), out, show_progress=False)
        metrics.append(json.loads((out / "metrics.json").read_text()))
        metrics[-1].pop("seconds", None)
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["valid"] == metrics[1]["valid"]
    assert (tmp_path / "csv" / "item_ids.txt").read_text() == (tmp_path / "pq" / "item_ids.txt").read_text()
    # A run trained on a folder evaluates and exports from it (recorded path, data fingerprint over the parts).
    from training.export import export_run
    from training.runs import evaluate_run

    assert evaluate_run(tmp_path / "pq")["test"] == metrics[1]["test"]
    print_ = export_run(tmp_path / "pq", tmp_path / "art").data_fingerprint
    assert print_["path"] == str(parts.resolve()) and print_["interactions"] == metrics[1]["data"]["interactions"]
    assert print_["bytes"] == sum(p.stat().st_size for p in parts.iterdir())


def test_arrow_strings_become_numpy_strings_without_objects() -> None:
    values = pa.chunked_array([["a", "ünï", ""], ["long-identifier-" * 3]])
    got = strings_to_numpy(values)
    assert got.dtype != object and list(got) == ["a", "ünï", "", "long-identifier-" * 3]


def test_synth_is_deterministic_and_plants_the_topics(tmp_path: Path) -> None:
    cfg = SynthConfig(users=300, items=400, topics=12, min_len=5, max_len=30, seed=4)
    a = write(cfg, tmp_path / "a", fmt="parquet")
    b = write(cfg, tmp_path / "b", fmt="parquet")
    c = write(cfg, tmp_path / "c", fmt="csv")
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.equals(tb)
    assert (tmp_path / "a" / "topics.json").read_text() == (tmp_path / "b" / "topics.json").read_text()
    df = ta.to_pandas()
    assert df.equals(pd.read_csv(c, dtype={"user_id": str, "item_id": str}))
    other = pq.read_table(write(SynthConfig(**{**cfg.__dict__, "seed": 5}), tmp_path / "d", fmt="parquet"))
    assert not other.equals(ta)
    truth = json.loads((tmp_path / "a" / "topics.json").read_text())
    assert len(truth["item_topic"]) == cfg.items and len(truth["user_topics"]) == cfg.users
    assert all(truth["item_topic"][i] in truth["user_topics"][u] for u, i in zip(df.user_id, df.item_id, strict=True))
    lengths = df.groupby("user_id", sort=False).size()
    assert lengths.between(cfg.min_len, cfg.max_len).all() and len(lengths) == cfg.users
    assert (df.groupby("user_id")["timestamp"].diff().dropna() > 0).all()  # time moves forward per user
    top = df["item_id"].value_counts()
    assert top.iloc[0] > 5 * top.median()  # Zipf: a few items dominate
    frame, gen_truth = generate(cfg)
    assert frame.equals(df) and gen_truth == truth


def test_taobao_shape_scales_with_rows() -> None:
    cfg = SynthConfig.taobao(100_000_000)
    assert (cfg.users, cfg.items, cfg.topics) == (1_000_000, 4_000_000, 1000)
    assert cfg.expected_rows == 100_000_000
