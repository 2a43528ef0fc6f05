"""The benchmarks' shared harness: the flags every benchmark takes, the machine notes, the timing
and the two result files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks import harness


def test_a_benchmark_names_its_results_and_can_write_them_elsewhere(tmp_path: Path) -> None:
    ap = harness.parser("Doc of the benchmark.", "serving")
    ap.add_argument("--users", type=int, default=10)
    assert (ap.parse_args([]).name, ap.parse_args([]).results) == ("serving", harness.RESULTS)
    args = ap.parse_args(["--name", "serving_rerun", "--results", str(tmp_path)])
    assert (args.name, args.results, args.users) == ("serving_rerun", tmp_path, 10)
    assert ap.description == "Doc of the benchmark."


def test_results_are_the_raw_json_and_the_printed_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = harness.md_table(["kind", "recall@50", "req/s"], [["hnsw", 0.95123, 1234.5]])
    harness.save_results(tmp_path / "out", "index", {"root": tmp_path, "rows": [1]}, table)
    assert json.loads((tmp_path / "out" / "index.json").read_text()) == {"root": str(tmp_path), "rows": [1]}
    assert (tmp_path / "out" / "index.md").read_text() == table
    assert table.splitlines() == ["| kind | recall@50 | req/s |", "|---|---|---|", "| hnsw | 0.9512 | 1234 |"]
    assert table in capsys.readouterr().out


def test_run_and_save_runs_with_the_parsed_flags(tmp_path: Path) -> None:
    ap = harness.parser(None, "tiny")
    ap.add_argument("--n", type=int, default=1)
    argv = ["--n", "3", "--results", str(tmp_path)]
    harness.run_and_save(ap, lambda a: {"n": a.n}, lambda r: f"n = {r['n']}\n", argv)
    assert json.loads((tmp_path / "tiny.json").read_text()) == {"n": 3}


def test_machine_notes_and_flags_are_json_ready(tmp_path: Path) -> None:
    notes = harness.machine()
    assert {"cpus", "machine", "python", "loadavg", "commit"} <= set(notes)
    args = harness.parser(None, "x").parse_args(["--results", str(tmp_path)])
    recorded = json.loads(json.dumps({**notes, "args": harness.flags(args)}))
    assert recorded["args"] == {"name": "x", "results": str(tmp_path)}


def test_timed_gives_wall_and_cpu_seconds_of_the_block() -> None:
    with harness.timed() as slept:
        time.sleep(0.05)
    with harness.timed() as spun:
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass
    assert slept.wall_s >= 0.05 and slept.cpu_s < slept.wall_s
    assert spun.wall_s >= 0.05 and spun.cpu_s > 0
    assert harness.median([3.0, 1.0, 2.0]) == 2.0
