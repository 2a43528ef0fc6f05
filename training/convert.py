"""Converters from public raw interaction dumps to the normalized ``user_id,item_id,timestamp`` CSV.

Supported formats (``FORMATS``):

* ``amazon-reviews``: Amazon reviews JSON lines, the 2014/2018 schema (``reviewerID``, ``asin``,
  ``unixReviewTime`` in seconds, rating ``overall``) and the 2023 schema (``user_id``,
  ``parent_asin`` or else ``asin``, ``timestamp`` in milliseconds, rating ``rating``), mixed
  freely, one object per line.
* ``movielens``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``ratings.csv``
  (header ``userId,movieId,rating,timestamp``) or ``u.data`` (tab-separated, no header); the
  layout is detected from the first line.
* ``retailrocket``: ``events.csv`` (header ``timestamp,visitorid,event,itemid,transactionid``,
  timestamp in milliseconds), keeping the chosen event types.

Every input is streamed line by line (gzip or plain, detected by its magic bytes), so a file of
several GB needs a few MB of memory. A row that cannot be converted (bad JSON, a missing field,
a wrong field count, an empty id, a timestamp that is not an integer, ...) is counted under its
reason, its first examples are kept, and it is skipped; rows left out on purpose (rating below
``min_rating``, an event type not kept) are counted separately. If more than
``max_malformed_share`` of the rows are malformed the input is probably not this format and the
conversion fails with one :class:`RemiError` line; so does an input where all of the first
1,000 rows are malformed, without reading the rest. The output is written to a hidden temporary
sibling and renamed into place only on success: a failed conversion leaves no file behind.

Example:
    >>> report = convert("movielens", "ml-1m/ratings.dat", "data/ml-1m.csv.gz", min_rating=4)
    >>> report.rows_written, report.malformed, report.skipped_by_filter
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from remi.contract import INTERACTION_COLUMNS, sweep_leftovers, temp_sibling
from remi.datafiles import PARQUET_SUFFIXES
from remi.errors import RemiError

log = logging.getLogger("remi.convert")

FORMATS = ("amazon-reviews", "movielens", "retailrocket")
RETAILROCKET_EVENTS = ("view", "addtocart", "transaction")

MAX_EXAMPLES = 5  # malformed rows kept verbatim in the report
RAW_CHARS = 120  # raw text kept per example
EARLY_CHECK_ROWS = 1000  # all of the first N rows malformed: stop, the input is not this format
_WRITE_BATCH = 8192
_PARQUET_GROUP = 1 << 20  # rows per Parquet row group
_GZIP_MAGIC = b"\x1f\x8b"

Row = tuple[str, str, int]


class _Header:
    """Returned by a row parser for a header line: neither a row nor malformed."""


HEADER = _Header()


class Malformed(Exception):
    """A raw row that cannot be converted; ``reason`` is a short fixed phrase (counted per reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ConvertReport:
    """What a conversion read, wrote and skipped.

    Attributes:
        format: the raw format converted.
        input: the raw file.
        output: the normalized CSV written.
        rows_read: non-blank data lines read (headers and blank lines excluded).
        rows_written: rows in the output.
        malformed: rows skipped because they could not be converted.
        malformed_by_reason: those rows counted per reason.
        malformed_examples: the first ``MAX_EXAMPLES`` as (line number, reason, raw text truncated).
        skipped_by_filter: valid rows left out on purpose (rating below the threshold, event type).
        seconds: wall-clock time of the conversion.
    """

    format: str
    input: str
    output: str
    rows_read: int = 0
    rows_written: int = 0
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    malformed_examples: list[tuple[int, str, str]] = field(default_factory=list)
    skipped_by_filter: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for humans: ``converted N rows, M malformed (skipped), K filtered``."""
        return (
            f"converted {self.rows_written} rows, {self.malformed} malformed (skipped), "
            f"{self.skipped_by_filter} filtered"
        )


# --- field parsing -------------------------------------------------------------------------------


def _id(value: Any, what: str) -> str:
    """A non-empty id as a string (JSON strings or integers)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Malformed(f"{what} is not a string")
    text = str(value).strip()
    if not text:
        raise Malformed(f"empty {what}")
    return text


def _int_timestamp(value: Any) -> int:
    """An integer timestamp from an int, an integral float or their text (``"978300760"``, ``"1.0"``)."""
    if isinstance(value, bool):
        raise Malformed("non-integer timestamp")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise Malformed("non-integer timestamp") from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise Malformed("non-integer timestamp")


def _rating(value: Any) -> float:
    if isinstance(value, bool):
        raise Malformed("non-numeric rating")
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise Malformed("non-numeric rating") from None
    if math.isnan(rating):
        raise Malformed("non-numeric rating")
    return rating


def _fields(line: str, sep: str, expected: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) != expected:
        raise Malformed(f"wrong field count (expected {expected})")
    return parts


# --- row parsers: line -> Row, None (filtered), HEADER, or raise Malformed ------------------------

RowParser = Callable[[str], "Row | None | _Header"]


def amazon_parser(min_rating: float | None = None) -> RowParser:
    """Parser of Amazon reviews JSON lines (2014/2018 and 2023 schemas, detected per row)."""

    def parse(line: str) -> Row | None:
        try:
            obj = json.loads(line)
        except ValueError:
            raise Malformed("bad JSON") from None
        if not isinstance(obj, dict):
            raise Malformed("not a JSON object")
        if "reviewerID" in obj:  # 2014 / 2018: seconds
            keys, ms, rating_key = ("reviewerID", "asin", "unixReviewTime"), False, "overall"
        elif "user_id" in obj:  # 2023: milliseconds, items grouped by parent_asin
            item_key = "parent_asin" if obj.get("parent_asin") not in (None, "") else "asin"
            keys, ms, rating_key = ("user_id", item_key, "timestamp"), True, "rating"
        else:
            raise Malformed("missing field 'reviewerID' or 'user_id'")
        for key in keys:
            if obj.get(key) is None:
                raise Malformed(f"missing field '{key}'")
        user, item = _id(obj[keys[0]], "user id"), _id(obj[keys[1]], "item id")
        ts = _int_timestamp(obj[keys[2]])
        if min_rating is not None:
            if obj.get(rating_key) is None:
                raise Malformed(f"missing field '{rating_key}'")
            if _rating(obj[rating_key]) < min_rating:
                return None
        return user, item, ts // 1000 if ms else ts

    return parse


def movielens_parser(min_rating: float | None = None) -> RowParser:
    """Parser of MovieLens ratings; the layout (``::``, CSV with header, tab) is fixed by the first line."""
    layout: dict[str, Any] = {}

    def parse(line: str) -> Row | None | _Header:
        if not layout:
            cols = [c.strip() for c in line.split(",")]
            if {"userId", "movieId", "timestamp"} <= set(cols):
                rating_col = cols.index("rating") if "rating" in cols else None
                layout.update(sep=",", n=len(cols), user=cols.index("userId"), item=cols.index("movieId"),
                              ts=cols.index("timestamp"), rating=rating_col)  # fmt: skip
                return HEADER
            sep = "::" if "::" in line else "\t" if "\t" in line else "," if "," in line else "::"
            layout.update(sep=sep, n=4, user=0, item=1, ts=3, rating=2)
        parts = _fields(line, layout["sep"], layout["n"])
        user, item = _id(parts[layout["user"]], "user id"), _id(parts[layout["item"]], "item id")
        ts = _int_timestamp(parts[layout["ts"]])
        if layout["rating"] is not None:
            rating = _rating(parts[layout["rating"]])
            if min_rating is not None and rating < min_rating:
                return None
        elif min_rating is not None:
            raise Malformed("missing field 'rating'")
        return user, item, ts

    return parse


def retailrocket_parser(events: Iterable[str] = RETAILROCKET_EVENTS) -> RowParser:
    """Parser of RetailRocket ``events.csv`` keeping the given event types (timestamps ms -> s)."""
    keep = set(events)
    layout: dict[str, int] = {}

    def parse(line: str) -> Row | None | _Header:
        if not layout:
            cols = [c.strip() for c in line.split(",")]
            if not {"timestamp", "visitorid", "event", "itemid"} <= set(cols):
                raise RemiError(
                    f"not a RetailRocket events file: first line {line[:RAW_CHARS]!r}, "
                    "expected the header timestamp,visitorid,event,itemid,transactionid"
                )
            layout.update({c: cols.index(c) for c in ("timestamp", "visitorid", "event", "itemid")}, n=len(cols))
            return HEADER
        parts = _fields(line, ",", layout["n"])
        user, item = _id(parts[layout["visitorid"]], "user id"), _id(parts[layout["itemid"]], "item id")
        ts = _int_timestamp(parts[layout["timestamp"]])
        event = parts[layout["event"]].strip()
        if event not in RETAILROCKET_EVENTS:
            raise Malformed("unknown event")
        if event not in keep:
            return None
        return user, item, ts // 1000

    return parse


# --- streaming I/O -------------------------------------------------------------------------------


def _open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed if it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, str | None, bytes]]:
    """(line number, decoded text without the line end or None if not UTF-8, raw bytes) per line."""
    line_no = 0
    try:
        with _open_binary(path) as f:
            for line_no, raw in enumerate(f, start=1):  # noqa: B007 (line_no is read in the except)
                raw = raw.rstrip(b"\r\n")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    yield line_no, None, raw
                    continue
                yield line_no, text.lstrip("\ufeff") if line_no == 1 else text, raw
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a truncated stream an EOFError
        raise RemiError(f"{path}: cannot read line {line_no + 1} ({type(exc).__name__}: {exc})") from exc


@contextmanager
def _open_output(path: Path, gz: bool) -> Iterator[TextIO]:
    """Text writer of ``path``; with ``gz`` a deterministic gzip stream (no file name, mtime 0: same rows,
    same bytes)."""
    with ExitStack() as stack:
        raw: BinaryIO | gzip.GzipFile = stack.enter_context(open(path, "wb"))
        if gz:
            raw = stack.enter_context(gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0))
        yield stack.enter_context(io.TextIOWrapper(raw, encoding="utf-8", newline=""))


class _ParquetRows:
    """Rows -> a Parquet file (zstd), one row group per batch of rows: what the trainer reads fastest."""

    SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])

    def __init__(self, path: Path) -> None:
        self.writer = pq.ParquetWriter(path, self.SCHEMA, compression="zstd")
        self.pending: list[Row] = []

    def writerows(self, rows: list[Row]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= _PARQUET_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            users, items, stamps = zip(*self.pending, strict=True)
            self.writer.write_table(pa.table([list(users), list(items), list(stamps)], schema=self.SCHEMA))
            self.pending.clear()


@contextmanager
def _open_writer(path: Path, kind: str) -> Iterator[Any]:
    """A ``writerows`` sink of the normalized rows: CSV (gzipped for ``gz``) with its header, or Parquet."""
    if kind == "parquet":
        rows = _ParquetRows(path)
        try:
            yield rows
            rows.flush()
        finally:
            rows.writer.close()
        return
    with _open_output(path, kind == "gz") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(INTERACTION_COLUMNS)
        yield writer


def output_kind(path: Path) -> str:
    """parquet (``.parquet``, ``.parq``, ``.pq``), gz (``.gz``) or csv, by the output's name."""
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "gz" if name.endswith(".gz") else "csv"


def _too_many_malformed(report: ConvertReport, share: float) -> RemiError:
    line_no, reason, raw = report.malformed_examples[0]
    return RemiError(
        f"{report.input}: {report.malformed} of {report.rows_read} rows malformed "
        f"(more than {share:.0%}; is it really {report.format}?); first: line {line_no}: {reason}: {raw!r}"
    )


def _stream(src: Path, tmp: Path, kind: str, parse: RowParser, report: ConvertReport, share: float) -> None:
    """Parse every line of ``src`` into ``tmp``, counting into ``report``; stops early on an input of another format."""
    with _open_writer(tmp, kind) as writer:
        batch: list[Row] = []
        for line_no, text, raw in _lines(src):
            if not raw.strip():
                continue  # blank lines are not rows
            try:
                if text is None:
                    raise Malformed("not UTF-8")
                row = parse(text)
            except Malformed as bad:
                report.rows_read += 1
                report.malformed += 1
                report.malformed_by_reason[bad.reason] = report.malformed_by_reason.get(bad.reason, 0) + 1
                if len(report.malformed_examples) < MAX_EXAMPLES:
                    shown = raw[:RAW_CHARS].decode("utf-8", errors="replace")
                    report.malformed_examples.append((line_no, bad.reason, shown))
                if report.malformed == report.rows_read == EARLY_CHECK_ROWS and share < 1.0:
                    raise _too_many_malformed(report, share) from None
                continue
            if row is HEADER:
                continue
            report.rows_read += 1
            if row is None:
                report.skipped_by_filter += 1
                continue
            batch.append(row)  # type: ignore[arg-type]
            if len(batch) >= _WRITE_BATCH:
                writer.writerows(batch)
                report.rows_written += len(batch)
                batch.clear()
        writer.writerows(batch)
        report.rows_written += len(batch)


def _convert(
    fmt: str, input_path: str | Path, out: str | Path, parse: RowParser, max_malformed_share: float
) -> ConvertReport:
    """Stream ``input_path`` through ``parse`` into ``out`` (atomically); the shared driver of every format."""
    start = time.perf_counter()
    src, dst = Path(input_path), Path(out)
    if not 0.0 <= max_malformed_share <= 1.0:
        raise RemiError(f"max_malformed_share must be in [0, 1], got {max_malformed_share}")
    if not src.is_file():
        raise RemiError(f"input file not found: {src}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise RemiError(f"{dst}: the output would overwrite the input")
    if dst.is_dir():
        raise RemiError(f"{dst}: the output is a directory")
    report = ConvertReport(format=fmt, input=str(src), output=str(dst))
    tmp = temp_sibling(dst)  # a sibling: the rename stays on one disk
    try:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            sweep_leftovers(dst.parent, dst.name)  # what a killed conversion to ``dst`` left
            _stream(src, tmp, output_kind(dst), parse, report, max_malformed_share)
        except OSError as exc:  # read errors are RemiErrors already: this is the output side
            raise RemiError(f"{dst}: cannot write the output ({exc})") from exc
        if report.rows_read == 0:
            raise RemiError(f"{src}: no data rows")
        if report.malformed > max_malformed_share * report.rows_read:
            raise _too_many_malformed(report, max_malformed_share)
        if report.rows_written == 0:
            raise RemiError(
                f"{src}: no rows left to write ({report.skipped_by_filter} filtered, {report.malformed} malformed)"
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    report.seconds = round(time.perf_counter() - start, 3)
    log.info(
        "convert done", extra={k: v for k, v in report.to_dict().items() if k not in ("format", "input", "output")}
    )
    return report


# --- public API ----------------------------------------------------------------------------------


def convert_amazon_reviews(
    input_path: str | Path, out: str | Path, *, min_rating: float | None = None, max_malformed_share: float = 0.1
) -> ConvertReport:
    """Amazon reviews JSON lines (2014/2018 or 2023 schema, gzip or plain) to the normalized CSV.

    Args:
        input_path: the raw ``*.json(l)(.gz)`` file.
        out: the file to write: CSV, gzipped for ``.gz``, Parquet for ``.parquet``.
        min_rating: keep only reviews rated >= this (``overall`` / ``rating``); None keeps all.
        max_malformed_share: fail if a larger share of the rows is malformed.
    """
    return _convert("amazon-reviews", input_path, out, amazon_parser(min_rating), max_malformed_share)


def convert_movielens(
    input_path: str | Path, out: str | Path, *, min_rating: float | None = None, max_malformed_share: float = 0.1
) -> ConvertReport:
    """MovieLens ``ratings.dat`` / ``ratings.csv`` / ``u.data`` to the normalized CSV.

    Args:
        min_rating: keep only ratings >= this; None keeps every rating (implicit feedback).
    """
    return _convert("movielens", input_path, out, movielens_parser(min_rating), max_malformed_share)


def convert_retailrocket(
    input_path: str | Path,
    out: str | Path,
    *,
    events: Iterable[str] = RETAILROCKET_EVENTS,
    max_malformed_share: float = 0.1,
) -> ConvertReport:
    """RetailRocket ``events.csv`` to the normalized CSV (visitor = user, ms -> s).

    Args:
        events: event types to keep, a subset of ``RETAILROCKET_EVENTS``.
    """
    events = tuple(events)
    unknown = sorted(set(events) - set(RETAILROCKET_EVENTS))
    if unknown or not events:
        raise RemiError(f"events must be a non-empty subset of {','.join(RETAILROCKET_EVENTS)}; got {','.join(events)}")
    return _convert("retailrocket", input_path, out, retailrocket_parser(events), max_malformed_share)


def convert(
    fmt: str,
    input_path: str | Path,
    out: str | Path,
    *,
    min_rating: float | None = None,
    events: Iterable[str] | None = None,
    max_malformed_share: float = 0.1,
) -> ConvertReport:
    """Dispatch on ``fmt`` (one of ``FORMATS``); options that do not apply to the format are an error."""
    if fmt not in FORMATS:
        raise RemiError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if events is not None and fmt != "retailrocket":
        raise RemiError("--events applies to the retailrocket format only")
    if min_rating is not None and fmt == "retailrocket":
        raise RemiError("--min-rating does not apply to retailrocket (it has no ratings)")
    if fmt == "amazon-reviews":
        return convert_amazon_reviews(input_path, out, min_rating=min_rating, max_malformed_share=max_malformed_share)
    if fmt == "movielens":
        return convert_movielens(input_path, out, min_rating=min_rating, max_malformed_share=max_malformed_share)
    return convert_retailrocket(
        input_path,
        out,
        events=RETAILROCKET_EVENTS if events is None else events,
        max_malformed_share=max_malformed_share,
    )
