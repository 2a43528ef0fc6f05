"""Moved: the quality study is ``python -m studies.quality`` (studies/quality.py); this forwards to it.

Kept so that commands written before the move (queued training scripts, notes) still run with the
same flags. A path argument under benchmarks/results/ that is no longer there is read from
studies/results/, where the quality results moved; the results of a forwarded run go to
studies/results/ as well.
"""

from __future__ import annotations

import sys
from pathlib import Path

from studies import quality

ROOT = Path(__file__).resolve().parents[1]
OLD, NEW = "benchmarks/results/", "studies/results/"


def moved(arg: str) -> str:
    """``arg`` with benchmarks/results/ replaced by studies/results/ when only the latter exists."""
    if OLD not in arg or (ROOT / arg).exists() or Path(arg).exists():
        return arg
    new = arg.replace(OLD, NEW)
    return new if (ROOT / new).exists() or Path(new).exists() else arg


if __name__ == "__main__":
    sys.argv[1:] = [moved(a) for a in sys.argv[1:]]
    quality.main()
