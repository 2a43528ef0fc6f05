"""Distributed data-parallel training: 2 CPU processes (torchrun + DDP over gloo) vs one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.runs import load_run

ARGS = ["--max-steps", "120", "--eval-every", "60", "--dim", "16", "--batch-size", "64", "--negatives", "256",
        "--seed", "3", "--no-progress"]  # fmt: skip


def remi_train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli", "train", "--data", str(data), "--out", str(out), *ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def runs(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ddp")
    single = remi_train(synth_csv, base / "single", "--threads", "1")
    assert single.returncode == 0, single.stderr[-2000:]
    double = remi_train(synth_csv, base / "double", "--nproc", "2")
    assert double.returncode == 0, double.stderr[-2000:]
    return base / "single", base / "double"


def test_two_processes_write_one_valid_run_directory(runs: tuple[Path, Path]) -> None:
    _, double = runs
    metrics = json.loads((double / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 120
    assert len((double / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs
    cfg, model = load_run(double)
    assert model.n_items > 0 and cfg.batch_size == 64


def test_two_processes_match_one_process_with_the_same_global_batch(runs: tuple[Path, Path]) -> None:
    """Same global batch and shared negatives, sharded over ranks: the same training, up to float
    reduction order."""
    single, double = (json.loads((run / "metrics.json").read_text()) for run in runs)
    for part in ("valid", "test"):
        for key, value in single[part].items():
            assert double[part][key] == pytest.approx(value, abs=2e-3), (part, key)
    assert double["routing"]["effective_items"] == pytest.approx(single["routing"]["effective_items"], rel=1e-3)


def test_early_stop_reaches_every_rank(synth_csv: Path, tmp_path: Path) -> None:
    """Rank 0 decides to stop; the other rank follows instead of waiting forever in an all-reduce."""
    proc = remi_train(synth_csv, tmp_path / "r", "--nproc", "2", "--patience", "1", "--lr", "0.3",
                      "--max-steps", "2000", "--eval-every", "20")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["steps"] < 2000


def test_batch_that_does_not_split_evenly_is_a_clear_error(synth_csv: Path, tmp_path: Path) -> None:
    proc = remi_train(synth_csv, tmp_path / "r", "--nproc", "2", "--batch-size", "63")
    assert proc.returncode != 0 and "must divide evenly over 2 processes" in proc.stderr
