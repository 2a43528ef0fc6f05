"""The read side of an index root (retrieval/store.py): loading what ``current`` names; what the service imports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from index.publish import reindex
from remi.contract import ArtifactError, version_dir
from retrieval.store import load_current

WRITE_SIDE = ("index", "training", "torch")  # top-level packages a serving process never loads


def test_current_pointing_at_a_deleted_version_is_a_clear_error(artifacts_dir: Path, tmp_path: Path) -> None:
    index_version = reindex(artifacts_dir, tmp_path, kind="flat").index_version
    shutil.rmtree(version_dir(tmp_path, index_version))
    with pytest.raises(ArtifactError, match="no such version folder"):
        load_current(tmp_path)
    assert (tmp_path / "current").exists()


def test_no_current_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no current index version"):
        load_current(tmp_path)


def test_the_service_imports_only_the_read_side() -> None:
    code = (
        "import sys, service.app, service.versions, retrieval.engine\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {WRITE_SIDE!r})\n"
        "sys.exit(f'loaded: {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_query_path_loads_no_service_module() -> None:
    code = (
        "import sys, retrieval.engine, retrieval.planner, retrieval.store\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('service', 'index', 'training', 'torch'))\n"
        "sys.exit(f'loaded: {bad}' if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
