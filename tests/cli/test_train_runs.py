"""`remi train` run folders as a user meets them (README.md#training-on-your-data): overwrite,
failure, paths, progress."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = [
    "--scheme",
    "sampled",
    "--max-steps",
    "400",
    "--eval-every",
    "200",
    "--dim",
    "8",
    "--negatives",
    "32",
    "--batch-size",
    "32",
]


def remi(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **env},
    )


def one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary siblings a run may have left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def relative_run(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """A tiny run trained from the data's folder with a RELATIVE --data, stderr a pipe (not a TTY)."""
    work = tmp_path_factory.mktemp("relative")
    shutil.copy(synth_csv, work / "interactions.csv.gz")
    proc = remi(
        "--log-level", "INFO", "train", "--data", "interactions.csv.gz", "--out", "runs/r", "--progress-seconds",
        "0.02", *TINY, cwd=work,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return work / "runs" / "r", proc


def test_train_refuses_a_folder_that_holds_a_run_unless_force(relative_run, tmp_path: Path) -> None:
    run, _ = relative_run
    before = (run / "model.pt").read_bytes()
    proc = remi("train", "--data", str(run.parent.parent / "interactions.csv.gz"), "--out", str(run), *TINY)
    one_line_error(proc, "--force")
    assert (run / "model.pt").read_bytes() == before  # untouched

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    one_line_error(remi("train", "--data", "x.csv", "--out", str(mine)), "--force")
    assert (mine / "notes.txt").read_text() == "my notes"


def test_train_with_force_replaces_the_run(synth_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    proc = remi("train", "--data", str(synth_csv), "--out", str(out), "--force", *TINY, "--max-steps", "20")
    assert proc.returncode == 0, proc.stderr
    assert (out / "metrics.json").is_file() and not (out / "stale.txt").exists()
    assert leftovers(tmp_path) == []


def test_failed_train_leaves_no_run_folder(tmp_path: Path) -> None:
    (tmp_path / "tiny.csv").write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{u},i{k},{k}\n" for u in range(5) for k in range(6))
    )
    proc = remi("train", "--data", str(tmp_path / "tiny.csv"), "--out", str(tmp_path / "run"))
    one_line_error(proc, "too small to split")
    assert not (tmp_path / "run").exists()
    assert leftovers(tmp_path) == []


def test_interrupted_train_leaves_no_partial_run_and_keeps_the_replaced_one(synth_csv: Path, tmp_path: Path) -> None:
    """Ctrl-C mid-training with --force: the old run is intact, no half-written folder remains."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("previous run")
    # The child's output goes to a file, not an unread pipe (which could fill and block it), and a
    # hang shows it.
    err_path = tmp_path.parent / f"{tmp_path.name}.stderr"
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "train", "--data", str(synth_csv), "--out", str(out), "--force",
             "--scheme", "sampled", "--max-steps", "10000000", "--eval-every", "1000000", "--dim", "8",
             "--negatives", "32"],
            stdout=subprocess.DEVNULL, stderr=err, text=True,
            # A shell starts background jobs with SIGINT ignored, and Python then leaves it ignored
            # in the child (no KeyboardInterrupt): give the child the default an interactive user has.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any((p / "config.json").is_file() for p in tmp_path.iterdir() if p.name.startswith(".")):
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(0.5)  # well inside the training loop
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit 60 s after SIGINT; stderr:\n{err_path.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err_path.read_text()[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path) == []


def test_run_records_an_absolute_data_path_so_evaluate_works_from_another_directory(
    relative_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.runs import evaluate_run

    run, _ = relative_run
    recorded = json.loads((run / "config.json").read_text())
    assert Path(recorded["data"]).is_absolute() and Path(recorded["data"]).is_file()
    monkeypatch.chdir(tmp_path)  # `remi evaluate` from elsewhere (in process: torch loads once)
    assert "recall@50" in evaluate_run(run)["test"]


def test_an_old_run_with_a_relative_data_path_is_found_or_named_clearly(
    relative_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs from before the fix recorded `--data` as typed: resolved from where they trained."""
    from remi.errors import RemiError
    from training.runs import evaluate_run

    run, _ = relative_run
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    monkeypatch.chdir(tmp_path)
    cfg = json.loads((old / "config.json").read_text())
    cfg["data"] = "interactions.csv.gz"
    (old / "config.json").write_text(json.dumps(cfg))  # recorded cwd = the data's folder
    assert "recall@50" in evaluate_run(old)["test"]

    del cfg["cwd"]
    cfg["data"] = "nowhere/interactions.csv.gz"
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RemiError, match="pass --data"):
        evaluate_run(old)


def test_redirected_training_prints_progress_lines_at_the_set_interval(relative_run) -> None:
    _, proc = relative_run
    lines = [line for line in proc.stderr.splitlines() if line.startswith("train step ")]
    assert len(lines) >= 2, proc.stderr[-2000:]
    assert all(" loss " in line and "steps/s" in line and "valid recall@50" in line for line in lines)
    assert any("(step 200)" in line for line in lines)  # the last valid recall once there is one
    assert "\r" not in proc.stderr  # no progress bar drawn into a pipe
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    progress = [r for r in records if r.get("event") == "train progress"]
    assert progress and {"step", "loss", "steps_per_second"} <= set(progress[0])
