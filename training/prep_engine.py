"""Out-of-core data preparation with DuckDB: read, validate, encode and time-sort interactions.

Why DuckDB (and not the pandas path of :mod:`training.data`, nor Polars): raw ids are strings, and
holding 100M of them as Python objects costs ~260 bytes per interaction, so the pandas path ran out
of this machine's 24 GB near 90M rows. DuckDB reads CSV(.gz) and (partitioned) Parquet natively,
hashes the string ids into dense codes, and sorts under a ``memory_limit``, spilling to a temporary
folder instead of failing; its ``row_number() OVER ()`` is a streaming, order-preserving window,
which gives every row its file position so the result equals the pandas path exactly (first
appearance order of users and items, stable time sort per user). What comes back to Python is two
int32 code arrays (8 bytes per interaction) already in user-major time order; the k-core filter
and the popularity ranking then run in numpy on those (:func:`training.data.build_interactions`),
the same code the pandas path runs. Raw ids come back only for the survivors, as numpy string
arrays (no Python object per id).

Usage::

    with PrepEngine(memory_limit_gb=4) as engine:
        data = engine.encode(path, min_count=5)
        split = engine.read_split_file(split_path, data)   # optional
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from remi.contract import INTERACTION_COLUMNS
from remi.datafiles import InteractionFiles, interaction_files
from remi.errors import RemiError
from training.data import Interactions, UserSplit, assign_split_parts, build_interactions, read_split_table

FETCH_ROWS = 1 << 20  # rows per Arrow batch when the codes stream back


def strings_to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow strings -> a numpy string array without a Python object per value.

    numpy >= 2 gets ``StringDType`` (16 bytes per short id); the bytes are gathered into a
    fixed-width ``S`` array and decoded in C. Iterating the result yields ``str``.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    values = values.cast(pa.large_string())
    n = len(values)
    if n == 0:
        return np.array([], dtype=_string_dtype())
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + n + 1]
    data = (
        np.frombuffer(values.buffers()[2], dtype=np.uint8) if values.buffers()[2] is not None else np.zeros(1, np.uint8)
    )
    lengths = np.diff(offsets)
    width = max(1, int(lengths.max()))
    out = np.empty(n, dtype=_string_dtype())
    pos = np.arange(width)
    step = max(1, (64 << 20) // (width * 8))  # slices of ~64 MB of gather indices: long ids stay bounded
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        inside = pos[None, :] < lengths[lo:hi, None]
        matrix = np.zeros((hi - lo, width), dtype=np.uint8)
        matrix[inside] = data[(offsets[lo:hi, None] + pos[None, :])[inside]]
        out[lo:hi] = np.char.decode(matrix.view(f"S{width}").ravel(), "utf-8")
    return out


def _string_dtype() -> Any:
    dtypes = getattr(np, "dtypes", None)
    return dtypes.StringDType() if dtypes is not None and hasattr(dtypes, "StringDType") else object


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_ID_TYPES = ("is_string", "is_large_string", "is_string_view", "is_integer")
_TS_TYPES = ("is_integer", "is_floating", "is_timestamp", "is_string", "is_large_string", "is_string_view")


def _is(kind: pa.DataType, checks: tuple[str, ...]) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return any(getattr(pa.types, check)(kind) for check in checks if hasattr(pa.types, check))


def check_parquet_schema(path: Path) -> int:
    """Column names and types of one Parquet file (metadata only); returns its row count."""
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as exc:
        raise RemiError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from exc
    names = schema.names
    missing = [c for c in INTERACTION_COLUMNS if c not in names]
    if missing:
        raise RemiError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(INTERACTION_COLUMNS)} "
            f"(found {', '.join(names)})"
        )
    for name, allowed, want in (
        ("user_id", _ID_TYPES, "text or integer ids"),
        ("item_id", _ID_TYPES, "text or integer ids"),
        ("timestamp", _TS_TYPES, "integer Unix seconds (or a timestamp type)"),
    ):
        kind = schema.field(name).type
        if not _is(kind, allowed):
            raise RemiError(f"{path}: column {name} has type {kind}; expected {want}")
    return int(meta.num_rows)


def _csv_is_empty(path: Path) -> bool:
    try:
        opener: Any = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            return not f.read(4096).strip()
    except (OSError, EOFError):
        return False


class PrepEngine:
    """One DuckDB database in a temporary folder (spill files included), removed on exit."""

    def __init__(self, memory_limit_gb: float = 4.0, threads: int | None = None, temp_dir: str | None = None):
        import duckdb  # the train extra; imported here so `remi --help` stays fast

        self._duckdb = duckdb
        self.folder = Path(tempfile.mkdtemp(prefix="remi-prep-", dir=temp_dir))
        self.con = duckdb.connect(str(self.folder / "prep.duckdb"))
        self.con.execute(f"SET memory_limit = '{float(memory_limit_gb) * 1024:.0f}MB'")
        self.con.execute(f"SET temp_directory = '{self.folder / 'spill'}'")
        self.con.execute("SET preserve_insertion_order = true")
        self.con.execute("SET TimeZone = 'UTC'")
        # DuckDB draws its own progress bar on the terminal for queries past 2 s: noise beside the
        # trainer's progress lines, and bytes a caller reading our stderr did not ask for.
        self.con.execute("SET enable_progress_bar = false")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        self.timings: dict[str, float] = {}
        self.source: InteractionFiles | None = None
        self._user_index: np.ndarray | None = None  # raw user code -> user index (-1: filtered out)

    def __enter__(self) -> PrepEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _timed(self, stage: str, started: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    # --- reading -------------------------------------------------------------------------------

    def _source_sql(self, src: InteractionFiles) -> tuple[str, list[Any]]:
        files = [str(p) for p in src.files]
        if src.kind == "csv":
            return "read_csv(?, header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"')", [
                files[0]
            ]
        return "read_parquet(?, union_by_name = true, hive_partitioning = false)", [files]

    def _columns(self, src: InteractionFiles) -> dict[str, str]:
        sql, params = self._source_sql(src)
        try:
            rows = self.con.execute(f"DESCRIBE SELECT * FROM {sql}", params).fetchall()
        except self._duckdb.Error as exc:
            what = "cannot parse as CSV" if src.kind == "csv" else "cannot read the Parquet data"
            raise RemiError(f"{src.root}: {what} ({_first_line(exc)})") from exc
        return {str(r[0]): str(r[1]).upper() for r in rows}

    @staticmethod
    def _timestamp_sql(kind: str) -> tuple[str, str]:
        """(value, is-bad) SQL of the timestamp column by its DuckDB type; bad rows get a NULL value."""
        col = '"timestamp"'
        if kind in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"):
            return f"TRY_CAST({col} AS BIGINT)", f"TRY_CAST({col} AS BIGINT) IS NULL"
        if kind.startswith("TIMESTAMP"):
            value = f"CAST(epoch_ms(CAST({col} AS TIMESTAMP)) // 1000 AS BIGINT)"
            return value, f"{col} IS NULL"
        if kind in ("FLOAT", "DOUBLE") or kind.startswith("DECIMAL") or kind == "VARCHAR":
            as_double = f"TRY_CAST({col} AS DOUBLE)"
            bad = f"({as_double} IS NULL OR NOT isfinite({as_double}) OR {as_double} <> floor({as_double}))"
            return f"CASE WHEN {bad} THEN NULL ELSE TRY_CAST({col} AS BIGINT) END", bad
        raise RemiError(f"timestamp has type {kind}; expected integer Unix seconds")

    def load(self, path: str | Path) -> None:
        """Read and validate ``path`` into the database: one row per interaction with its file position."""
        started = time.perf_counter()
        src = interaction_files(path)
        row_counts: list[int] = []
        if src.kind == "parquet":
            row_counts = [check_parquet_schema(p) for p in src.files]
        elif _csv_is_empty(src.root):
            raise RemiError(f"{src.root}: the file is empty")
        columns = self._columns(src)
        missing = [c for c in INTERACTION_COLUMNS if c not in columns]
        if missing:
            raise RemiError(
                f"{src.root}: missing column(s) {', '.join(missing)}; expected header user_id,item_id,timestamp"
            )
        for name in ("user_id", "item_id"):
            if columns[name] not in ("VARCHAR",) and "INT" not in columns[name]:
                raise RemiError(f"{src.root}: column {name} has type {columns[name]}; expected text or integer ids")
        value, _ = self._timestamp_sql(columns["timestamp"])
        sql, params = self._source_sql(src)
        try:
            self.con.execute(
                "CREATE OR REPLACE TABLE raw AS SELECT row_number() OVER () AS rn, "
                "CAST(user_id AS VARCHAR) AS user_id, CAST(item_id AS VARCHAR) AS item_id, "
                f'{value} AS ts FROM (SELECT user_id, item_id, "timestamp" FROM {sql})',
                params,
            )
        except self._duckdb.Error as exc:
            what = "cannot parse as CSV" if src.kind == "csv" else "cannot read"
            raise RemiError(f"{src.root}: {what} ({_first_line(exc)})") from exc
        self.source = src
        self._validate(src, row_counts)
        self._timed("read + validate", started)

    def _where(self, src: InteractionFiles, row_counts: list[int], rn: int) -> tuple[Path, str]:
        """Where a 1-based global row number is: the CSV line, or the Parquet file and its row."""
        if src.kind == "csv":
            return src.root, f"row {rn + 1}"  # line 1 is the header
        ends = np.cumsum(row_counts)
        part = int(np.searchsorted(ends, rn, side="left"))
        before = int(ends[part - 1]) if part else 0
        return src.files[part], f"row {rn - before}"

    def _validate(self, src: InteractionFiles, row_counts: list[int]) -> None:
        rows, bad_ts, empty_user, empty_item = self.con.execute(
            "SELECT count(*), min(rn) FILTER (WHERE ts IS NULL), "
            "min(rn) FILTER (WHERE user_id IS NULL OR user_id = ''), "
            "min(rn) FILTER (WHERE item_id IS NULL OR item_id = '') FROM raw"
        ).fetchall()[0]
        if rows == 0:
            raise RemiError(
                f"{src.root}: no interactions (only a header)"
                if src.kind == "csv"
                else f"{src.root}: no interactions (0 rows)"
            )
        if bad_ts is not None:
            sql, params = self._source_sql(src)
            shown = self.con.execute(
                f'SELECT CAST("timestamp" AS VARCHAR) FROM (SELECT row_number() OVER () AS rn, "timestamp" '
                f"FROM {sql}) WHERE rn = ?",
                [*params, bad_ts],
            ).fetchall()
            value = "" if not shown or shown[0][0] is None else shown[0][0]
            file, row = self._where(src, row_counts, int(bad_ts))
            raise RemiError(f"{file}: timestamp must be an integer (Unix seconds); {row} has {value!r}")
        for name, rn in (("user_id", empty_user), ("item_id", empty_item)):
            if rn is not None:
                file, row = self._where(src, row_counts, int(rn))
                raise RemiError(f"{file}: empty {name} on {row}")

    # --- encoding ------------------------------------------------------------------------------

    def encode(self, path: str | Path, min_count: int = 5, iterative: bool = True) -> Interactions:
        """Load ``path`` and encode it exactly as :func:`training.data.encode` encodes the pandas frame."""
        self.load(path)
        started = time.perf_counter()
        # Dense codes in first-appearance order: what pd.factorize(sort=False) gives the pandas path.
        for table, col in (("users", "user_id"), ("items", "item_id")):
            self.con.execute(
                f"CREATE OR REPLACE TABLE {table} AS SELECT {col} AS id, "
                f"CAST(row_number() OVER (ORDER BY first) - 1 AS INTEGER) AS code "
                f"FROM (SELECT {col}, min(rn) AS first FROM raw GROUP BY {col})"
            )
        counts = self.con.execute(
            "SELECT (SELECT count(*) FROM raw), (SELECT count(*) FROM users), (SELECT count(*) FROM items)"
        ).fetchall()[0]
        n_rows, n_users_raw, n_items_raw = (int(c) for c in counts)
        self._timed("encode ids", started)

        started = time.perf_counter()
        # User-major, time-ordered, ties in file order: the stable lexsort((ts, user)) of the pandas path.
        reader = self.con.sql(
            "SELECT u.code AS u, i.code AS i FROM raw JOIN users u ON raw.user_id = u.id "
            "JOIN items i ON raw.item_id = i.id ORDER BY u.code, raw.ts, raw.rn"
        ).to_arrow_reader(FETCH_ROWS)
        user_codes = np.empty(n_rows, dtype=np.int32)
        item_codes = np.empty(n_rows, dtype=np.int32)
        at = 0
        for batch in reader:
            n = batch.num_rows
            user_codes[at : at + n] = batch.column(0).to_numpy()
            item_codes[at : at + n] = batch.column(1).to_numpy()
            at += n
        assert at == n_rows, (at, n_rows)
        self.con.execute("DROP TABLE raw")
        self._timed("sort by user, time", started)

        started = time.perf_counter()
        built = build_interactions(user_codes, item_codes, n_users_raw, n_items_raw, min_count, iterative, sorted_=True)
        del user_codes, item_codes
        self._timed("k-core + CSR", started)

        started = time.perf_counter()
        user_ids = self._ids("users", built.user_codes)
        item_ids = self._ids("items", built.item_codes)
        index = np.full(n_users_raw, -1, dtype=np.int64)
        index[built.user_codes] = np.arange(len(built.user_codes))
        self._user_index = index
        self._timed("raw ids", started)
        return Interactions(user_ids=user_ids, item_ids=item_ids, offsets=built.offsets, items=built.items)

    def _ids(self, table: str, codes: np.ndarray) -> np.ndarray:
        every = self.con.sql(f"SELECT id FROM {table} ORDER BY code").to_arrow_table().column(0)
        return strings_to_numpy(every.take(pa.array(codes)))

    def read_split_file(self, path: str | Path, data: Interactions) -> UserSplit:
        """:func:`training.data.read_split_file` against this engine's raw users (no set of raw ids in Python)."""
        if self._user_index is None:
            raise RuntimeError("encode() first")
        df = read_split_table(path)
        names = pa.table({"pos": np.arange(len(df)), "id": pa.array(df["user_id"].to_numpy(dtype=object), pa.string())})
        self.con.register("split_names", names)
        found = self.con.execute(
            "SELECT coalesce(u.code, -1) AS code FROM split_names s LEFT JOIN users u ON s.id = u.id ORDER BY s.pos"
        ).fetchnumpy()
        self.con.unregister("split_names")
        codes = np.asarray(found["code"], dtype=np.int64)
        known = codes >= 0
        user_index = np.where(known, self._user_index[np.maximum(codes, 0)], -1)
        return assign_split_parts(path, df, known, user_index)
