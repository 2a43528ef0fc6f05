"""What every performance benchmark repeats, in one place: its flags, the machine it ran on, its
timing and its report.

A benchmark script keeps its own measurement; the harness gives it

* ``parser(__doc__, "name")``: the command line with the module docstring as ``--help`` text and
  the two flags every benchmark takes, ``--name`` (the results file stem) and ``--results`` (the
  folder, benchmarks/results/ by default), so a rerun can be written beside the committed result
  instead of over it;
* ``machine()``: the notes a figure needs to be read (cores, CPU, Python, load average, commit),
  recorded the same way in every result, with ``flags(args)`` and ``command()`` (what was run);
* ``timed()``: wall and CPU seconds of a block, and ``median`` for repeated blocks;
* ``save_results`` / ``run_and_save``: ``<name>.json`` (the raw result) and ``<name>.md`` (the
  table, also printed), with ``md_table`` for the table.

The model-quality studies (studies/) use the same tables and result files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# the shared public datasets, beside the repository (../shared/data/<name>/interactions.csv.gz)
SHARED_DATA = REPO.parent / "shared" / "data"


def parser(doc: str | None, name: str, results: Path = RESULTS) -> argparse.ArgumentParser:
    """The benchmark's command line: ``doc`` (its module docstring) as the help text, ``--name``
    (default ``name``) and ``--results`` (default ``results``); the script adds its own flags."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default=name, help="results file stem: <results>/<name>.{json,md}")
    ap.add_argument("--results", type=Path, default=results, help="folder of the results files")
    return ap


def commit(ref: str = "HEAD") -> str:
    """The short hash of ``ref`` in the repository ("unknown" outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "--short", ref], capture_output=True, text=True, cwd=REPO)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def machine() -> dict[str, Any]:
    """Where a figure was measured: cores, CPU, Python, the 1-minute load average and the commit."""
    return {
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "loadavg": round(os.getloadavg()[0], 2),
        "commit": commit(),
    }


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as a result records them (paths as strings, the rest as parsed)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def command() -> str:
    """The command line that ran this benchmark, as a result records it (``python -m benchmarks.x ...``)."""
    module = Path(sys.argv[0]).stem
    return " ".join(["python -m benchmarks." + module, *sys.argv[1:]])


@dataclass
class Timing:
    """Seconds of a timed block: wall clock and this process's CPU (all its threads)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def timed() -> Iterator[Timing]:
    """``with timed() as t: ...`` then ``t.wall_s`` / ``t.cpu_s`` hold the block's seconds."""
    timing = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield timing
    finally:
        timing.wall_s, timing.cpu_s = time.perf_counter() - wall, time.process_time() - cpu


def median(values: Iterable[float]) -> float:
    """The median of repeated measurements (machine noise only ever adds time, rarely removes it)."""
    return float(statistics.median(values))


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; floats get 4 decimals below 100, none above."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_results(folder: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """``<name>.json`` (the raw result) and ``<name>.md`` (the table) under ``folder``, and the table printed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)


def run_and_save(
    ap: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
) -> None:
    """A benchmark's main: parse the flags, run it, save ``--results``/``--name`` with its report."""
    args = ap.parse_args(argv)
    result = run(args)
    save_results(args.results, args.name, result, report(result))
