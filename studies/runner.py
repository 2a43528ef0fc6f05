"""Runs many ``remi train`` jobs as subprocesses, a few at a time, and collects their results.

Each job gets one torch thread and the jobs run side by side, which on a 2-core machine uses
the cores better than one 2-thread job at a time. A finished run (``RUN_METRICS`` present) is not
rerun, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from remi.contract import RUN_LOG, RUN_METRICS


@dataclass
class Job:
    name: str  # unique run folder name
    args: dict[str, Any]  # remi train flags, without dashes (underscores ok)
    tags: dict[str, Any] = field(default_factory=dict)  # what the report groups by


def _flags(args: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, str) and value.lower() in ("true", "false"):  # from a KEY=VALUE command line
            value = value.lower() == "true"
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            out += [flag, str(value)]
    return out


def run_folder(root: Path, name: str) -> Path:
    """The folder of the run called ``name`` (a label with "/" or spaces must not nest folders)."""
    return root / re.sub(r"[^\w.+=-]", "_", name)


def run_job(job: Job, root: Path, threads: int = 1) -> dict[str, Any]:
    run_dir = run_folder(root, job.name)
    metrics = run_dir / RUN_METRICS
    if not metrics.is_file():
        # The log lives beside the run: `remi train` writes the run folder whole at the end, and
        # --force replaces what an unfinished older attempt may have left there.
        log_file = run_dir.with_name(run_dir.name + ".log")
        root.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "cli",
            "train",
            "--out",
            str(run_dir),
            "--force",
            "--threads",
            str(threads),
            "--no-progress",
            *_flags(job.args),
        ]
        with log_file.open("w") as fh:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            return {"name": job.name, "tags": job.tags, "error": log_file.read_text()[-500:]}
    result = json.loads(metrics.read_text())
    curve = [json.loads(line) for line in (run_dir / RUN_LOG).read_text().splitlines() if line]
    return {
        "name": job.name,
        "tags": job.tags,
        "result": result,
        "curve": [(c["step"], c["valid"]["recall@50"]) for c in curve],
        "scores": [(c["step"], c["scores"]) for c in curve if c.get("scores")],
    }


def run_all(jobs: list[Job], root: Path, parallel: int = 2) -> list[dict[str, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(parallel) as pool:
        results = list(tqdm(pool.map(lambda j: run_job(j, root), jobs), total=len(jobs), desc="runs"))
    for r in results:
        if "error" in r:
            print(f"run {r['name']} failed: {r['error']}", file=sys.stderr)
    return results
