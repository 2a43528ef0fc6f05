"""Which files an interactions input is: one CSV(.gz), one Parquet file, or a folder of Parquet parts.

Warehouse exports (Spark, BigQuery, Snowflake) write a folder: hive-style ``key=value/`` subfolders
or a flat folder of part files, often named ``part-00000-<uuid>.snappy.parquet`` but sometimes with
no suffix at all, next to marker files (``_SUCCESS``, ``.crc``). The trainer and ``remi history
load`` both read through :func:`interaction_files`, so they accept the same inputs and name the
same file in an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from remi.errors import RemiError

PARQUET_MAGIC = b"PAR1"
PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")

FileKind = Literal["csv", "parquet"]


@dataclass(frozen=True)
class InteractionFiles:
    """The files of one input, in reading order (sorted paths: the order Spark numbers its parts)."""

    kind: FileKind
    files: tuple[Path, ...]
    root: Path

    @property
    def is_folder(self) -> bool:
        return self.root.is_dir()


def is_parquet_file(path: Path) -> bool:
    """A Parquet file by its suffix, or by its magic bytes when it has none (BigQuery / Snowflake parts)."""
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def _hidden(path: Path, root: Path) -> bool:
    """Marker and bookkeeping files of a warehouse export (``_SUCCESS``, ``.part-0.crc``, ``_delta_log/``)."""
    return any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def interaction_files(path: str | Path) -> InteractionFiles:
    """Resolve an input path; RemiError (one line, naming the path) for a missing file or an empty folder."""
    root = Path(path)
    if root.is_dir():
        parts = sorted(p for p in root.rglob("*") if p.is_file() and not _hidden(p, root) and is_parquet_file(p))
        if not parts:
            raise RemiError(f"{root}: a folder without Parquet files (expected *.parquet parts, plain or key=value/)")
        return InteractionFiles("parquet", tuple(parts), root)
    if not root.is_file():
        raise RemiError(f"data file not found: {root}")
    return InteractionFiles("parquet" if is_parquet_file(root) else "csv", (root,), root)
