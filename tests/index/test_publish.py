"""The batch reindex job: versions, the atomic `current` flip, failures and kills, pruning, rollback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from index import publish as publish_module
from index.publish import reindex, rollback
from remi.contract import VERSIONS, ArtifactError, leftover_siblings, read_current, temp_sibling, version_dir
from remi.errors import RemiError
from retrieval.store import list_versions, load_current


def remi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def hidden_leftovers(root: Path) -> list[str]:
    return [p.name for p in (root / VERSIONS).iterdir() if p.name.startswith(".")]


def test_first_run_creates_a_version_and_points_current_at_it(artifacts_dir: Path, tmp_path: Path) -> None:
    result = reindex(artifacts_dir, tmp_path, kind="hnsw")
    assert result.built and result.previous is None
    assert read_current(tmp_path) == result.index_version and list_versions(tmp_path) == [result.index_version]
    loaded = load_current(tmp_path)
    assert loaded.name == result.index_version and loaded.manifest.kind == "hnsw"
    assert loaded.artifacts.model_version == loaded.manifest.model_version  # a self-contained pair


def test_running_twice_is_safe_and_force_builds_a_new_version(artifacts_dir: Path, tmp_path: Path) -> None:
    first = reindex(artifacts_dir, tmp_path, kind="hnsw")
    second = reindex(artifacts_dir, tmp_path, kind="hnsw")
    assert not second.built and second.index_version == first.index_version == read_current(tmp_path)
    third = reindex(artifacts_dir, tmp_path, kind="hnsw", force=True)
    assert third.built and third.previous == first.index_version
    assert read_current(tmp_path) == third.index_version
    assert list_versions(tmp_path) == [first.index_version, third.index_version]
    changed = reindex(artifacts_dir, tmp_path, kind="hnsw", params={"ef_search": 80})
    assert changed.built and changed.manifest.params["ef_search"] == 80


def test_keeps_the_last_n_versions(artifacts_dir: Path, tmp_path: Path) -> None:
    made = [reindex(artifacts_dir, tmp_path, kind="flat", keep=2, force=True).index_version for _ in range(4)]
    assert list_versions(tmp_path) == made[-2:]
    assert read_current(tmp_path) == made[-1]


@pytest.mark.parametrize("step", ["smoke_query", "build_version_index", "_publish_file"])
def test_a_failing_step_leaves_current_untouched(artifacts_dir: Path, tmp_path: Path, monkeypatch, step: str) -> None:
    good = reindex(artifacts_dir, tmp_path, kind="flat").index_version

    def fail(*args, **kwargs):
        raise ArtifactError(f"simulated failure in {step}")

    monkeypatch.setattr(publish_module, step, fail)
    with pytest.raises(ArtifactError, match="simulated"):
        reindex(artifacts_dir, tmp_path, kind="hnsw")
    assert read_current(tmp_path) == good and list_versions(tmp_path) == [good]
    assert hidden_leftovers(tmp_path) == []
    assert load_current(tmp_path).name == good


def test_killed_mid_build_keeps_current_valid_and_the_next_run_recovers(artifacts_dir: Path, tmp_path: Path) -> None:
    good = reindex(artifacts_dir, tmp_path, kind="flat").index_version
    script = textwrap.dedent(
        f"""
        import os, signal
        import index.build
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)   # no cleanup runs, as with kill -9 or an OOM kill
        index.build.build_faiss = killed
        from index.publish import reindex
        reindex({str(artifacts_dir)!r}, {str(tmp_path)!r}, kind="hnsw")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert hidden_leftovers(tmp_path), "the killed job should have left its partial folder"
    assert read_current(tmp_path) == good and load_current(tmp_path).name == good
    after = reindex(artifacts_dir, tmp_path, kind="hnsw")
    assert after.built and read_current(tmp_path) == after.index_version
    assert hidden_leftovers(tmp_path) == []


def test_the_next_run_sweeps_a_killed_swap_and_pointer_temporaries(artifacts_dir: Path, tmp_path: Path) -> None:
    good = reindex(artifacts_dir, tmp_path, kind="flat").index_version
    killed = version_dir(tmp_path, good)
    planted = [temp_sibling(killed, "old"), temp_sibling(killed, "tmp")]  # killed between the two renames
    for folder in planted:
        folder.mkdir()
        (folder / "index.faiss").write_bytes(b"partial")
    temp_sibling(tmp_path / "current").write_text("half-written\n")  # killed while flipping `current`
    assert len(hidden_leftovers(tmp_path)) == 2
    after = reindex(artifacts_dir, tmp_path, kind="hnsw")
    assert after.built and read_current(tmp_path) == after.index_version
    assert hidden_leftovers(tmp_path) == [] and leftover_siblings(tmp_path) == []


def test_cli_failure_exits_nonzero_with_one_line_and_keeps_current(artifacts_dir: Path, tmp_path: Path) -> None:
    good = reindex(artifacts_dir, tmp_path, kind="flat").index_version
    proc = remi("reindex", "--artifacts", str(artifacts_dir), "--root", str(tmp_path), "--kind", "hnsw",
                "--hnsw-m", "2", "--ef-construction", "2", "--ef-search", "1", "--min-recall", "0.999")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: hnsw index recall@50")
    assert read_current(tmp_path) == good


def test_cli_reindex_status_and_rollback(artifacts_dir: Path, tmp_path: Path) -> None:
    first = remi("reindex", "--artifacts", str(artifacts_dir), "--root", str(tmp_path), "--kind", "flat")
    assert first.returncode == 0, first.stderr
    second = remi("reindex", "--artifacts", str(artifacts_dir), "--root", str(tmp_path), "--kind", "hnsw")
    assert second.returncode == 0, second.stderr
    versions = list_versions(tmp_path)
    assert read_current(tmp_path) == versions[-1]
    back = remi("index", "rollback", "--root", str(tmp_path))
    assert back.returncode == 0, back.stderr
    assert read_current(tmp_path) == versions[0]
    assert load_current(tmp_path).manifest.kind == "flat"


def test_rollback_without_an_older_version_is_refused(artifacts_dir: Path, tmp_path: Path) -> None:
    reindex(artifacts_dir, tmp_path, kind="flat")
    with pytest.raises(RemiError, match="no version older"):
        rollback(tmp_path)


def test_broken_artifacts_fail_before_anything_is_built(artifacts_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    with pytest.raises(ArtifactError, match="no such model artifact folder"):
        reindex(tmp_path / "missing", root)
    assert read_current(root) is None and list_versions(root) == []
