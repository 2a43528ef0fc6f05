"""A full disk under the batch jobs (docs/operations.md#reindex-cadence-and-rollback): one line,
exit status 2, nothing half-written.

`remi reindex`, `export`, `train` and `history load` on a disk that fills up mid-way print one
`error: ...` line (no traceback) and exit 2; reindex leaves no partial version and `current` as it
was. The disk is a real tmpfs of a few hundred KB where the test may mount one (root), and a write
path that raises ENOSPC in-process everywhere (the failure points a tmpfs cannot aim at).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from index import publish as publish_module
from index.publish import reindex
from remi import contract
from remi.contract import VERSIONS, leftover_siblings, list_versions, read_current, read_previous
from tests.service.tiny_model import TinyModel, write_tiny_artifacts


def remi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})  # fmt: skip


def assert_one_line_disk_full(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no space left" in last.lower(), proc.stderr[-3000:]


def hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_tiny_artifacts(tmp_path_factory.mktemp("tiny") / "artifacts")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB tmpfs (needs root: skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:100]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(folder: Path) -> int:
    info = os.statvfs(folder)
    return info.f_bavail * info.f_frsize


def fill(folder: Path, leave: int) -> Path:
    """A filler file that leaves ``leave`` bytes free on ``folder``'s disk."""
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free_bytes(folder) - leave))
    return filler


@pytest.mark.parametrize("share", [0.0, 0.3, 0.7, 0.95])
def test_reindex_on_a_full_disk_is_one_line_exit_2_no_partial_version_and_current_unchanged(
    tiny: TinyModel, small_disk: Path, share: float
) -> None:
    root = small_disk / "root"
    before = free_bytes(small_disk)
    good = reindex(tiny.artifacts, root, kind="flat").index_version
    one_version = before - free_bytes(small_disk)
    filler = fill(small_disk, int(one_version * share))  # the disk fills up at a different step each time
    proc = remi("reindex", "--artifacts", str(tiny.artifacts), "--root", str(root), "--kind", "flat", "--force")
    assert_one_line_disk_full(proc)
    assert read_current(root) == good and list_versions(root) == [good]
    assert hidden(root / VERSIONS) == [] and leftover_siblings(root) == []
    filler.unlink()
    again = remi("reindex", "--artifacts", str(tiny.artifacts), "--root", str(root), "--kind", "flat", "--force")
    assert again.returncode == 0, again.stderr
    assert read_current(root) != good and read_previous(root) == good


@pytest.mark.parametrize("step", ["_publish_file", "build_version_index", "smoke_query", "_seal"])
def test_disk_full_at_any_reindex_step_leaves_no_partial_version(
    tiny: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    root = tmp_path / "root"
    good = reindex(tiny.artifacts, root, kind="flat").index_version

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "somewhere")

    monkeypatch.setattr(publish_module, step, full)
    with pytest.raises(OSError):
        reindex(tiny.artifacts, root, kind="flat", force=True)
    assert read_current(root) == good and list_versions(root) == [good]
    assert hidden(root / VERSIONS) == [] and leftover_siblings(root) == []


def test_disk_full_while_flipping_current_removes_the_new_version_and_keeps_both_pointers(
    tiny: TinyModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last write of a reindex: neither pointer moves, and the unused new version is not left behind
    (a worker with nothing loaded falls back to the newest version on disk, which would be it)."""
    root = tmp_path / "root"
    first = reindex(tiny.artifacts, root, kind="flat").index_version
    good = reindex(tiny.artifacts, root, kind="flat", force=True).index_version
    real = contract._pointer_temp
    calls: list[str] = []

    def full_on_current(root_: Path, file: str, version: str) -> Path:
        calls.append(file)
        if file == contract.CURRENT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root_ / file))
        return real(root_, file, version)

    monkeypatch.setattr(contract, "_pointer_temp", full_on_current)
    with pytest.raises(OSError):
        reindex(tiny.artifacts, root, kind="flat", force=True)
    assert calls == [contract.PREVIOUS, contract.CURRENT]  # `previous` was written first, then dropped
    assert read_current(root) == good and read_previous(root) == first
    assert list_versions(root) == [first, good]
    assert hidden(root / VERSIONS) == [] and leftover_siblings(root) == []


@pytest.mark.parametrize(
    "raised",
    [
        "OSError(errno.ENOSPC, 'No space left on device', '/x/y')",
        "OSError(errno.EDQUOT, 'Disk quota exceeded', '/x/y')",
        "RuntimeError(\"Error in faiss::FileIOWriter: 'ret == (size)' failed: write error: No space left on device\")",
    ],
)
def test_the_cli_turns_any_disk_full_error_into_one_line_and_exit_2(raised: str) -> None:
    script = textwrap.dedent(
        f"""
        import errno, sys
        import index.publish
        def full(*args, **kwargs):
            raise {raised}
        index.publish.reindex = full
        sys.argv = ["remi", "reindex", "--artifacts", "a", "--root", "r"]
        from cli import main
        main()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_export_on_a_full_disk_is_one_line_exit_2_and_leaves_no_partial_folder(
    trained_run: Path, small_disk: Path
) -> None:
    fill(small_disk, 40_000)
    proc = remi("export", "--run", str(trained_run), "--out", str(small_disk / "art"))
    assert_one_line_disk_full(proc)
    assert not (small_disk / "art").exists() and leftover_siblings(small_disk) == []


def test_train_on_a_full_disk_is_one_line_exit_2(synth_csv: Path, small_disk: Path) -> None:
    fill(small_disk, 20_000)
    proc = remi("train", "--data", str(synth_csv), "--out", str(small_disk / "run"), "--max-steps", "20",
                "--eval-every", "10", "--dim", "16", "--batch-size", "32", "--negatives", "64")  # fmt: skip
    assert_one_line_disk_full(proc)
    assert leftover_siblings(small_disk) == []


def test_history_load_with_a_full_temporary_disk_is_one_line_exit_2(tmp_path: Path, small_disk: Path) -> None:
    data = tmp_path / "events.csv"
    with data.open("w") as fh:
        fh.write("user_id,item_id,timestamp\n")
        for row in range(60_000):
            fh.write(f"user-{row % 5000},item-{row % 997},{1_700_000_000 + row}\n")
    fill(small_disk, 16_000)
    prefix = f"test-diskfull-{uuid.uuid4().hex[:8]}:"
    proc = remi("history", "load", "--data", str(data), "--redis-url", "redis://127.0.0.1:6379/0",
                "--prefix", prefix, "--no-progress", env={"TMPDIR": str(small_disk)})  # fmt: skip
    assert_one_line_disk_full(proc)
    assert [p for p in small_disk.iterdir() if p.name.startswith("remi-history-load-")] == []
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
