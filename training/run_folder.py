"""Rules for a run folder that need no torch, so `remi train` can refuse one before loading it."""

from __future__ import annotations

from pathlib import Path

from remi.errors import RemiError


def check_run_folder(out: Path, force: bool) -> None:
    """Refuses to train into a folder that holds anything unless ``force`` (as export does).

    An empty folder is taken over (a fresh ``mkdir`` or a temporary directory); a folder with
    anything in it may be a previous run or the user's own files, which are never replaced
    without ``--force``.
    """
    if out.exists() and not out.is_dir():
        raise RemiError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RemiError(f"{out}: already holds a run or other files (pass --force to replace it)")
