"""What `remi history load` prints: plain progress lines in a log (no carriage-return bars), and
how many rows the per-user cap left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import SHARED_REDIS


def _load(data: Path, prefix: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The command with stderr a pipe, as in a log; read as bytes so a carriage return stays one."""
    cmd = [sys.executable, "-m", "cli", "history", "load", "--data", str(data), "--redis-url", SHARED_REDIS]
    done = subprocess.run([*cmd, "--prefix", prefix, *extra], capture_output=True, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def _csv(path: Path) -> Path:
    rows = ["user_id,item_id,timestamp"]
    rows += [f"heavy,i{t % 40},{t}" for t in range(250)]  # 50 over a cap of 200
    rows += [f"light,i{t},{t}" for t in range(5)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_history_load_writes_plain_progress_lines_when_stderr_is_not_a_terminal(
    tmp_path: Path, redis_prefix: str
) -> None:
    result = _load(_csv(tmp_path / "h.csv"), redis_prefix, "--max-len", "200")
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr, repr(result.stderr)
    lines = result.stderr.split("\n")
    assert any(line.startswith("history load: read 255 rows") for line in lines), lines
    assert any(line.startswith("history load: write 205 events") for line in lines), lines


def test_history_load_says_how_many_rows_the_per_user_cap_left_out(tmp_path: Path, redis_prefix: str) -> None:
    result = _load(_csv(tmp_path / "h.csv"), redis_prefix, "--max-len", "200", "--no-progress")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["rows"], report["events"], report["capped"], report["max_len"]) == (255, 205, 50, 200)
    assert "50 rows beyond the last 200 events of their user left out" in result.stderr.splitlines()[-1]
