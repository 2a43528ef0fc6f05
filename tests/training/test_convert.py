"""Raw-format converters on small hand-written fixtures in each real format."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from remi.contract import temp_sibling
from remi.errors import RemiError
from training.convert import (
    EARLY_CHECK_ROWS,
    MAX_EXAMPLES,
    convert,
    convert_amazon_reviews,
    convert_movielens,
    convert_retailrocket,
)
from training.data import read_interactions


def remi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120)


def _write_lines(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _rows(path: Path) -> list[tuple[str, str, int]]:
    df = read_interactions(path)
    return list(zip(df["user_id"], df["item_id"], df["timestamp"].tolist(), strict=True))


def _header(path: Path) -> str:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.readline().rstrip("\n")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


AMAZON_2018 = [
    json.dumps(
        {
            "reviewerID": "A2SUAM1J3GNN3B",
            "asin": "0000013714",
            "overall": 5.0,
            "unixReviewTime": 1393545600,
            "reviewText": 'Great, with "quotes", commas and\nnewlines',
        }
    ),  # fmt: skip
    json.dumps({"reviewerID": "A18C9SNLZWVBIE", "asin": "0000013714", "overall": 2.0, "unixReviewTime": 1400630400}),
    json.dumps({"reviewerID": "A2SUAM1J3GNN3B", "asin": "B00ABC1234", "overall": 4.0, "unixReviewTime": 1410307200}),
]
AMAZON_2023 = [
    json.dumps(
        {
            "rating": 5.0,
            "asin": "B00YQ6X8EO",
            "parent_asin": "B00YQ6X8EO",
            "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
            "timestamp": 1588687728923,
            "verified_purchase": True,
        }
    ),  # fmt: skip
    json.dumps(
        {
            "rating": 3.0,
            "asin": "B081TJ8YS3",
            "parent_asin": "B08BBQ29N5",
            "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
            "timestamp": 1588615855070,
        }
    ),  # fmt: skip
    json.dumps(
        {"rating": 1.0, "asin": "B07PNNCSP9", "user_id": "AE74DYR3QUGVPZJ3P7RFWBGIX7XQ", "timestamp": 1589665266052}
    ),
]


def test_amazon_2018_and_2023_gzipped_inputs_convert_to_exact_rows(tmp_path: Path) -> None:
    old = _write_lines(tmp_path / "Beauty_5.json.gz", AMAZON_2018, gz=True)
    new = _write_lines(tmp_path / "All_Beauty.jsonl.gz", AMAZON_2023, gz=True)

    report = convert_amazon_reviews(old, tmp_path / "old.csv.gz")
    assert (report.rows_read, report.rows_written, report.malformed, report.skipped_by_filter) == (3, 3, 0, 0)
    assert _header(tmp_path / "old.csv.gz") == "user_id,item_id,timestamp"
    assert _rows(tmp_path / "old.csv.gz") == [
        ("A2SUAM1J3GNN3B", "0000013714", 1393545600),  # leading zeros of the ASIN kept: ids are strings
        ("A18C9SNLZWVBIE", "0000013714", 1400630400),
        ("A2SUAM1J3GNN3B", "B00ABC1234", 1410307200),
    ]

    report = convert_amazon_reviews(new, tmp_path / "new.csv")
    assert report.rows_written == 3 and report.malformed == 0
    assert _rows(tmp_path / "new.csv") == [
        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", 1588687728),  # ms -> s (floor)
        ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B08BBQ29N5", 1588615855),  # parent_asin preferred
        ("AE74DYR3QUGVPZJ3P7RFWBGIX7XQ", "B07PNNCSP9", 1589665266),  # asin when there is no parent_asin
    ]
    assert not (tmp_path / "new.csv").read_bytes().startswith(b"\x1f\x8b")  # plain output for a plain name

    mixed = _write_lines(tmp_path / "mixed.json", AMAZON_2018 + AMAZON_2023)  # plain input, both schemas
    report = convert("amazon-reviews", mixed, tmp_path / "rated.csv", min_rating=4)
    assert (report.rows_written, report.skipped_by_filter) == (3, 3)
    assert [r[1] for r in _rows(tmp_path / "rated.csv")] == ["0000013714", "B00ABC1234", "B00YQ6X8EO"]


def test_parquet_output_holds_the_csv_rows_and_trains(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from training.prep_engine import PrepEngine

    src = _write_lines(tmp_path / "in.json.gz", AMAZON_2018 * 3, gz=True)
    convert_amazon_reviews(src, tmp_path / "out.csv")
    report = convert_amazon_reviews(src, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.names == ["user_id", "item_id", "timestamp"] and str(table.schema.field(2).type) == "int64"
    got = list(zip(*(table.column(c).to_pylist() for c in table.schema.names), strict=True))
    assert got == _rows(tmp_path / "out.csv") and report.rows_written == len(got)
    with PrepEngine() as engine:  # what `remi train --data out.parquet` reads
        assert len(engine.encode(tmp_path / "out.parquet", min_count=1).items) == len(got)


def test_gzip_output_is_deterministic(tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "r.json.gz", AMAZON_2018, gz=True)
    convert_amazon_reviews(src, tmp_path / "a.csv.gz")
    convert_amazon_reviews(src, tmp_path / "b.csv.gz")
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()


def test_amazon_malformed_rows_are_counted_with_reasons_and_the_rest_converted(tmp_path: Path) -> None:
    good = [
        json.dumps({"reviewerID": f"U{i}", "asin": f"I{i % 3}", "unixReviewTime": 1_000_000 + i}) for i in range(40)
    ]
    bad = [
        '{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 5',  # truncated JSON
        json.dumps({"reviewerID": "U1", "unixReviewTime": 5}),  # no asin
        json.dumps({"reviewerID": "U1", "asin": "I1", "unixReviewTime": "09/01/2014"}),  # not an integer
        json.dumps({"reviewerID": "", "asin": "I1", "unixReviewTime": 5}),  # empty id
        json.dumps({"user_id": "U1", "asin": "I1", "timestamp": 1.5e12 + 0.5}),  # fractional
        json.dumps(["U1", "I1", 5]),  # JSON but not an object
    ]
    src = _write_lines(tmp_path / "r.json", good[:20] + bad + [""] + good[20:])  # a blank line is not a row
    src.write_bytes(src.read_bytes() + b'{"reviewerID": "\xff\xfe", "asin": "I1", "unixReviewTime": 5}\n')

    report = convert_amazon_reviews(src, tmp_path / "out.csv.gz", max_malformed_share=0.2)
    assert report.rows_read == 47 and report.rows_written == 40 and report.malformed == 7
    assert report.malformed_by_reason == {
        "bad JSON": 1,
        "missing field 'asin'": 1,
        "non-integer timestamp": 2,
        "empty user id": 1,
        "not a JSON object": 1,
        "not UTF-8": 1,
    }
    assert len(report.malformed_examples) == MAX_EXAMPLES
    assert report.malformed_examples[0] == (21, "bad JSON", bad[0])  # line numbers are 1-based file lines
    assert report.malformed_examples[1][:2] == (22, "missing field 'asin'")
    assert len(_rows(tmp_path / "out.csv.gz")) == 40


def test_another_format_is_one_line_error_and_leaves_no_file(tmp_path: Path) -> None:
    dat = _write_lines(tmp_path / "ratings.dat", [f"{u}::{u * 7 % 50}::4::97830076{u % 10}" for u in range(1, 31)])
    with pytest.raises(RemiError) as err:
        convert_amazon_reviews(dat, tmp_path / "out" / "x.csv.gz")
    message = str(err.value)
    assert "\n" not in message
    assert "30 of 30 rows malformed" in message and "line 1: bad JSON" in message and "1::7::4" in message
    assert _leftovers(tmp_path / "out") == []  # neither the output nor its temporary file

    (tmp_path / "keep.csv").write_text("old content\n")  # a failed run keeps an existing output as it was
    with pytest.raises(RemiError):
        convert_amazon_reviews(dat, tmp_path / "keep.csv")
    assert (tmp_path / "keep.csv").read_text() == "old content\n"


def test_a_killed_conversions_temporary_is_removed_by_the_next_one(tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "Beauty_5.json", AMAZON_2018)
    out = tmp_path / "out.csv"
    left = temp_sibling(out)  # what a conversion killed mid-write leaves beside its output
    left.write_text("user_id,item_id\npartial")
    convert_amazon_reviews(src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Beauty_5.json", "out.csv"]


def test_malformed_share_threshold_and_early_stop(tmp_path: Path) -> None:
    lines = [f"{u}::{u}::4::978300760" for u in range(1, 10)] + ["1::2::3"]  # 1 of 10 malformed
    src = _write_lines(tmp_path / "ratings.dat", lines)
    assert convert_movielens(src, tmp_path / "ok.csv").malformed == 1  # 10% is not more than the default 0.1
    with pytest.raises(RemiError, match=r"1 of 10 rows malformed .*line 10: wrong field count"):
        convert_movielens(src, tmp_path / "strict.csv", max_malformed_share=0.05)
    assert not (tmp_path / "strict.csv").exists()

    # all of the first 1,000 rows malformed: stop there instead of reading the rest of a huge file
    src = _write_lines(tmp_path / "big.json", ["not json"] * (EARLY_CHECK_ROWS + 500))
    with pytest.raises(RemiError, match=rf"{EARLY_CHECK_ROWS} of {EARLY_CHECK_ROWS} rows malformed"):
        convert_amazon_reviews(src, tmp_path / "big.csv")
    with pytest.raises(RemiError, match="out of range|must be in"):
        convert_movielens(src, tmp_path / "x.csv", max_malformed_share=1.5)


def test_movielens_dat_csv_and_tab_layouts(tmp_path: Path) -> None:
    dat = _write_lines(
        tmp_path / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109", "2::1357::2::978298709"]
    )
    report = convert_movielens(dat, tmp_path / "dat.csv.gz")
    assert (report.rows_read, report.rows_written, report.skipped_by_filter) == (3, 3, 0)  # implicit: keep all
    assert _rows(tmp_path / "dat.csv.gz") == [
        ("1", "1193", 978300760),
        ("1", "661", 978302109),
        ("2", "1357", 978298709),
    ]

    csv_lines = ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,3,4.0,964981247", "2,318,3.5,1445714835"]
    report = convert_movielens(_write_lines(tmp_path / "ratings.csv", csv_lines), tmp_path / "csv.csv", min_rating=4)
    assert (report.rows_read, report.rows_written, report.skipped_by_filter) == (3, 2, 1)  # header is not a row
    assert _rows(tmp_path / "csv.csv") == [("1", "1", 964982703), ("1", "3", 964981247)]

    udata = _write_lines(tmp_path / "u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742"])
    assert convert_movielens(udata, tmp_path / "u.csv").rows_written == 2  # ml-100k u.data: tab-separated
    assert _rows(tmp_path / "u.csv") == [("196", "242", 881250949), ("186", "302", 891717742)]


def test_movielens_malformed_rows(tmp_path: Path) -> None:
    lines = [f"{u}::{u % 4}::{u % 5 + 1}::97830{u:04d}" for u in range(1, 41)]
    lines[3] = "4::12::5"  # wrong field count
    lines[7] = "8::12::5::yesterday"  # non-integer timestamp
    lines[11] = "::12::5::978300760"  # empty user id
    lines[15] = "16::12::five::978300760"  # rating not a number
    report = convert_movielens(_write_lines(tmp_path / "ratings.dat", lines), tmp_path / "out.csv")
    assert (report.rows_read, report.rows_written, report.malformed) == (40, 36, 4)
    assert report.malformed_by_reason == {
        "wrong field count (expected 4)": 1,
        "non-integer timestamp": 1,
        "empty user id": 1,
        "non-numeric rating": 1,
    }
    assert [e[0] for e in report.malformed_examples] == [4, 8, 12, 16]


RETAILROCKET = [
    "timestamp,visitorid,event,itemid,transactionid",
    "1433221332117,257597,view,355908,",
    "1433224214164,992329,view,248676,",
    "1433221955914,599528,addtocart,356475,",
    "1433222147345,599528,transaction,356475,4000",
    "1433222147345,599528,like,356475,",  # unknown event type
    "1433222147345,599528,view,356475",  # 4 fields
    "2015-06-02 05:02:12,599528,view,356475,",  # not a Unix timestamp
    "1433222147345,599528,view,,",  # empty item id
]


def test_retailrocket_events_filter_and_malformed(tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "events.csv", RETAILROCKET)
    report = convert_retailrocket(src, tmp_path / "all.csv.gz", max_malformed_share=0.5)
    assert (report.rows_read, report.rows_written, report.malformed, report.skipped_by_filter) == (8, 4, 4, 0)
    assert report.malformed_by_reason == {
        "unknown event": 1,
        "wrong field count (expected 5)": 1,
        "non-integer timestamp": 1,
        "empty item id": 1,
    }
    assert _rows(tmp_path / "all.csv.gz") == [
        ("257597", "355908", 1433221332),
        ("992329", "248676", 1433224214),
        ("599528", "356475", 1433221955),
        ("599528", "356475", 1433222147),
    ]
    report = convert(
        "retailrocket", src, tmp_path / "buy.csv", events=["addtocart", "transaction"], max_malformed_share=0.5
    )
    assert (report.rows_written, report.skipped_by_filter) == (2, 2)

    with pytest.raises(RemiError, match="subset"):
        convert("retailrocket", src, tmp_path / "x.csv", events=["click"])
    with pytest.raises(RemiError, match="retailrocket format only"):
        convert("movielens", src, tmp_path / "x.csv", events=["view"])
    with pytest.raises(RemiError, match="not a RetailRocket events file"):
        convert_retailrocket(tmp_path / "all.csv.gz", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_user_errors_are_remi_errors(tmp_path: Path) -> None:
    with pytest.raises(RemiError, match="input file not found"):
        convert_movielens(tmp_path / "missing.dat", tmp_path / "x.csv")
    with pytest.raises(RemiError, match="no data rows"):
        convert_movielens(_write_lines(tmp_path / "empty.csv", ["userId,movieId,rating,timestamp"]), tmp_path / "x.csv")
    src = _write_lines(tmp_path / "ratings.dat", ["1::2::3::4"])
    with pytest.raises(RemiError, match="no rows left"):
        convert_movielens(src, tmp_path / "x.csv", min_rating=5)
    with pytest.raises(RemiError, match="overwrite the input"):
        convert_movielens(src, src)
    packed = gzip.compress("\n".join(AMAZON_2018 * 200).encode())
    truncated = packed[: len(packed) // 2]  # a download cut short
    (tmp_path / "broken.json.gz").write_bytes(truncated)
    with pytest.raises(RemiError, match="cannot read line"):
        convert_amazon_reviews(tmp_path / "broken.json.gz", tmp_path / "x.csv")
    assert _leftovers(tmp_path) == ["broken.json.gz", "empty.csv", "ratings.dat"]


def test_cli_convert_prints_report_and_fails_in_one_line(tmp_path: Path) -> None:
    src = _write_lines(tmp_path / "events.csv", RETAILROCKET[:5])
    proc = remi("data", "convert", "--format", "retailrocket", "--input", str(src), "--out", str(tmp_path / "o.csv.gz"),
                "--events", "view,transaction")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["rows_read"], report["rows_written"], report["skipped_by_filter"]) == (4, 3, 1)
    assert proc.stderr.strip().splitlines()[-1] == "converted 3 rows, 0 malformed (skipped), 1 filtered"

    proc = remi("data", "convert", "--format", "movielens", "--input", str(tmp_path / "nope.dat"), "--out", "x.csv")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: input file not found"), proc.stderr


def test_a_converted_movielens_file_trains(tmp_path: Path) -> None:
    rows = [f"{u}::{(u * 7 + j * 3) % 80 + 1}::{(u + j) % 5 + 1}::{978300000 + 60 * j + u}" for u in range(1, 61)
            for j in range(12)]  # fmt: skip
    src = _write_lines(tmp_path / "ratings.dat", rows)
    data = tmp_path / "ml.csv.gz"
    proc = remi("data", "convert", "--format", "movielens", "--input", str(src), "--out", str(data))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows_written"] == 720
    assert pd.read_csv(data, dtype=str).shape == (720, 3)
    proc = remi("train", "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "20", "--eval-every", "10",
                "--scheme", "sampled", "--dim", "8", "--min-count", "1", "--negatives", "32",
                "--batch-size", "32")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 20
