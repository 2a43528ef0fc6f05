"""`remi loadtest` against a real (tiny) server: counts, zero errors, ordered percentiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.client import load_user_ids, recommend_url
from loadtest.server import start_remi_serve


@pytest.fixture()
def server(artifacts_dir: Path, synth_csv: Path, tmp_path: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMI_")}  # embedded store, defaults
    args = ["--artifacts", str(artifacts_dir), "--index-root", str(tmp_path / "root")]
    args += ["--seed-history", str(synth_csv), "--log-level", "warning"]
    with start_remi_serve(args, tmp_path / "serve.log", env, timeout=60) as running:
        yield running.url


def test_loadtest_against_server(server: str, synth_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "lt.json"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "loadtest",
        "--url",
        server,
        "--users-from",
        str(synth_csv),
        "--concurrency",
        "4",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result == json.loads(proc.stdout)
    assert result["requests"] > 0 and result["ok"] == result["requests"]
    assert result["errors"] == 0 and result["errors_by_status"] == {} and result["errors_by_exception"] == {}
    assert result["fallbacks"] == {}  # seeded users: every answer comes from the model
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert result["qps"] > 0 and result["concurrency"] == 4 and result["url"] == server + "/recommend"


def test_user_ids_and_url(tmp_path: Path) -> None:
    csv = tmp_path / "u.csv"
    csv.write_text("user_id,item_id,timestamp\nb,1,1\na,2,2\nb,3,3\n007,4,4\n")
    ids = load_user_ids(csv, seed=1)
    assert sorted(ids) == ["007", "a", "b"]  # distinct, kept as strings
    assert ids == load_user_ids(csv, seed=1)
    assert recommend_url("http://h:1/") == "http://h:1/recommend"
    assert recommend_url("http://h:1/recommend") == "http://h:1/recommend"


def test_loadtest_bad_file(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "loadtest",
            "--url",
            "http://127.0.0.1:9",
            "--users-from",
            str(tmp_path / "missing.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no such file" in proc.stderr
