"""Does `remi train` get through data preparation and into training on a large set, and at what RSS?

    python -m benchmarks.train_start --data /tmp/data-bench/taobao-100000000/interactions.parquet

Runs `remi train --scheme sampled --min-count 5 --max-steps 50 --optimizer sparse-adam --progress-seconds 2` in a
subprocess, polls its RSS (/proc, every 0.5 s) and its stderr, and stops it 30 s after the first
progress line (training speed at this catalogue size is benchmarks/sparse_optimizer.py's job).
Reports the seconds to the training loop (the first progress line's time minus its "elapsed") and
to the first progress line,
the peak RSS up to then, and the stderr lines with their times. Writes
benchmarks/results/train_start.json and train_start.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import machine, md_table, parser, save_results


def _rss_mb(pid: int, field: str = "VmRSS") -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = re.search(rf"{field}:\s+(\d+)", text)
    return int(found.group(1)) // 1024 if found else None


def main() -> None:
    ap = parser(__doc__, "train_start")
    ap.add_argument("--data", required=True, help="interactions file (CSV.gz or Parquet)")
    ap.add_argument("--limit-s", type=float, default=600, help="give up after this many seconds")
    ap.add_argument("extra", nargs="*", help="more `remi train` flags (after --)")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="remi-train-start-"))
    cmd = [sys.executable, "-m", "cli", "train", "--data", args.data, "--scheme", "sampled", "--min-count", "5",
           "--max-steps", "50", "--optimizer", "sparse-adam", "--progress-seconds", "2", "--eval-every", "1000000",
           "--out", str(out / "run"), *args.extra]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    peak, lines = 0, []
    first: float | None = None
    started: float | None = None  # when the training loop began: first line's time minus its "elapsed"
    while proc.poll() is None and time.monotonic() - start < args.limit_s:
        now = time.monotonic() - start
        if first is not None and now > first + 30:
            break
        peak = max(peak, _rss_mb(proc.pid) or 0)
        for line in (proc.stderr.read() or b"").decode("utf-8", "replace").splitlines():
            lines.append([round(now, 1), peak, line[:240]])
            print(lines[-1], flush=True)
            if first is None and "train step" in line:
                first = now
                elapsed = re.search(r"elapsed (\d+) s", line)
                started = now - int(elapsed.group(1)) if elapsed else None
        time.sleep(0.5)
    hwm = _rss_mb(proc.pid, "VmHWM")
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    shutil.rmtree(out, ignore_errors=True)
    result: dict[str, Any] = {
        "command": " ".join(cmd[1:]),
        "seconds_to_first_progress_line": first,
        "seconds_to_training_loop": started,
        "peak_rss_mb_polled": peak,
        "vm_hwm_mb": hwm,
        "returncode": proc.returncode,
        "stderr": lines,
        "machine": machine(),
    }
    text = (
        f"# `remi train` on {args.data}: through prep into training\n\n`{result['command']}`\n\n"
        + md_table(
            ["seconds to the training loop", "seconds to first progress line", "peak RSS (MB, polled)", "VmHWM (MB)"],
            [
                [
                    f"{started:.0f}" if started is not None else "never",
                    f"{first:.0f}" if first is not None else "never",
                    f"{peak:,}",
                    f"{hwm:,}" if hwm else "n/a",
                ]
            ],
        )
        + "\n"
    )
    save_results(args.results, args.name, result, text)


if __name__ == "__main__":
    main()
