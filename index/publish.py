"""The write side of an index root: build, validate, publish, prune and roll back versions (the batch job).

The reindex job is safe to run from cron or twice in a row: one job at a time holds a lock on
the root, everything is built and validated in a hidden folder, and ``current`` changes by one
rename only after validation passed. Whatever fails, or wherever the job is killed, the old
``current`` stays as it was and keeps pointing at a complete version; the next job removes what
the killed one left (its ``.tmp-*`` and ``.old-*`` siblings).

A published version is immutable whatever happens to the folder it was built from: the
artifacts are copied into it (a reflink clone where the filesystem can, else a real copy; never
a hard link, which ``cp new.npy artifacts/...`` would rewrite in place), the index is built from
the copy, not the source, and every file is made read-only.

The service never imports this module: it only reads versions (:mod:`retrieval.store`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from index.build import build_index_folder, choose_kind
from index.compat import check_replacement
from index.params import KEEP, MIN_CATALOGUE_OVERLAP, MIN_HISTORY_COVERAGE, MIN_RECALL, RECALL_OF
from index.probe import smoke_query
from index.served import GateSettings, build_version_index, up_to_date
from remi.artifacts import Artifacts, load_artifacts
from remi.contract import (
    CURRENT,
    MANIFEST,
    PREVIOUS,
    VERSION_ARTIFACTS,
    VERSIONS,
    ArtifactError,
    ArtifactManifest,
    IndexManifest,
    atomic_folder,
    check_real_folder,
    list_versions,
    read_artifact_manifest,
    read_current,
    read_index_manifest,
    sweep_leftovers,
    version_dir,
    write_current,
)
from remi.errors import RemiError

log = logging.getLogger("remi.reindex")


def build_from_artifacts(
    artifacts_dir: str | Path,
    out: str | Path,
    kind: str = "auto",
    params: dict[str, Any] | None = None,
    min_recall: float = MIN_RECALL,
    use_interests: bool = True,
    force: bool = False,
    recall_of: str = RECALL_OF,
    gate: GateSettings | None = None,
) -> IndexManifest:
    """``remi index build``: one index folder from an artifact folder (written atomically)."""
    arts = load_artifacts(artifacts_dir)
    with atomic_folder(Path(out), replace=force) as tmp:
        if use_interests:
            manifest = build_version_index(arts, tmp, kind, params, min_recall, recall_of, gate)
        else:
            manifest = build_index_folder(arts.item_vectors, tmp, kind, arts.model_version, None, params, min_recall)
    return manifest


def answers_of(arts: Any, recall_of: str) -> int:
    """The build's ``answers_of``: K for a gate on merged answers (interest_queries keeps a user's K in a row)."""
    if recall_of not in ("interests", "answers"):
        raise RemiError(f"unknown recall_of {recall_of!r}; choose interests or answers")
    return int(arts.manifest.interests) if recall_of == "answers" else 1


FICLONE = 0x40049409  # linux/fs.h _IOW(0x94, 9, int): share the blocks copy-on-write (btrfs, XFS)


def _publish_file(src: Path, dst: Path) -> None:
    """A private copy of ``src`` at ``dst``: a reflink clone where supported, else a real copy.

    Never a hard link: a link shares the inode, so an in-place rewrite of the source (``cp``,
    ``shutil.copyfile``, an editor) would change the published version behind its checksums.
    A clone is copy-on-write, so it is as private as a copy. The source is opened without
    following a symbolic link (the manifest check refuses links; this closes the race).
    """
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fin, dst.open("xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return
        except OSError:  # EOPNOTSUPP/EXDEV/EINVAL: this filesystem (or pair) cannot clone
            pass
        shutil.copyfileobj(fin, fout, 1 << 22)
        fout.flush()


def _seal(folder: Path) -> None:
    """Makes every file of a version read-only (folders stay writable so pruning can remove it)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def seal_version(folder: Path) -> None:
    """:func:`_seal` for the other backends' publishing (index/milvus_publish.py)."""
    _seal(folder)


def new_version_name(model_version: str, kind: str) -> str:
    """``<UTC timestamp>-<model>-<kind>``: names sort by age (list_versions, pruning, rollback)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{model_version[:8]}-{kind}"


def copy_artifacts(artifacts_dir: str | Path, folder: Path, source: ArtifactManifest) -> Artifacts:
    """The artifacts listed by ``source`` copied into ``folder/artifacts`` (private copies, :func:`_publish_file`)
    and loaded from there: everything after reads the copy, so the version holds exactly what was checked."""
    published = folder / VERSION_ARTIFACTS
    published.mkdir()
    for name in [*source.files, MANIFEST]:
        _publish_file(Path(artifacts_dir) / name, published / name)
    arts = load_artifacts(published)
    if arts.model_version != source.model_version:
        raise ArtifactError(f"{artifacts_dir}: changed while being copied (run the reindex again)")
    return arts


@contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """One reindex job per root at a time (a second one waits)."""
    with (root / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def clean_partial(root: Path) -> list[str]:
    """Removes what a killed job left: version temporaries and swapped-out folders, pointer temporaries.

    Safe under the lock: no other writer of this root runs, and no reader opens a hidden name.
    """
    removed = sweep_leftovers(root / VERSIONS)
    for pointer in (CURRENT, PREVIOUS):
        removed += sweep_leftovers(root, pointer)
    return removed


def _prune(root: Path, keep: int, current: str) -> list[str]:
    versions = list_versions(root)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    for name in doomed:
        shutil.rmtree(version_dir(root, name), ignore_errors=True)
    return doomed


def check_serving_replacement(
    root: Path, previous: str, artifacts_dir: str | Path, min_overlap: float, min_coverage: float
) -> None:
    """The replacement check against the serving version; skipped (logged) when that one is unreadable,
    since replacing a broken version is a repair, and when the model is the same."""
    try:
        serving = check_real_folder(version_dir(root, previous), "version")
        old_manifest = read_artifact_manifest(serving / VERSION_ARTIFACTS, check_hash=False)
    except ArtifactError as exc:
        log.warning("serving version unreadable: replacement check skipped", extra={"error": str(exc)})
        return
    if old_manifest.model_version == read_artifact_manifest(artifacts_dir, check_hash=False).model_version:
        return
    figures = check_replacement(serving / VERSION_ARTIFACTS, artifacts_dir, min_overlap, min_coverage)
    log.info(
        "replacement check passed",
        extra={
            "catalogue_overlap": round(figures.catalogue_overlap, 4),
            "history_coverage": round(figures.history_coverage, 4),
        },
    )


@dataclass(frozen=True)
class ReindexResult:
    index_version: str
    previous: str | None
    built: bool  # False when current was already built from these artifacts with these settings
    manifest: IndexManifest
    pruned: list[str]
    seconds: float


def reindex(
    artifacts_dir: str | Path,
    root: str | Path,
    kind: str = "auto",
    params: dict[str, Any] | None = None,
    min_recall: float = MIN_RECALL,
    keep: int = KEEP,
    force: bool = False,
    recall_of: str = RECALL_OF,
    min_catalogue_overlap: float = MIN_CATALOGUE_OVERLAP,
    min_history_coverage: float = MIN_HISTORY_COVERAGE,
    gate: GateSettings | None = None,
) -> ReindexResult:
    """Builds, validates and activates a new index version under ``root``.

    A model that would drastically change what the serving one answers (another catalogue, the
    users' histories unreadable, item attributes dropped) is refused before anything is built
    unless ``force`` (index/compat.py).
    """
    if keep < 1:
        raise RemiError("--keep must be at least 1 (the version being activated)")
    t0 = time.perf_counter()
    root = Path(root)
    (root / VERSIONS).mkdir(parents=True, exist_ok=True)
    with root_lock(root):
        removed = clean_partial(root)
        if removed:
            log.warning("removed partial folders of an interrupted job", extra={"removed": removed})
        source = read_artifact_manifest(artifacts_dir)  # names, sizes and hashes, before any work
        previous = read_current(root)
        # auto on the served gate names its versions "auto" (the kind it picks is in the manifest)
        named = choose_kind(source.n_items) if kind == "auto" and recall_of != "answers" else kind
        if previous and not force:
            try:
                folder = check_real_folder(version_dir(root, previous), "version")  # never "up to date" via a link
                old: IndexManifest | None = read_index_manifest(folder, check_hash=False)
            except ArtifactError:
                old = None
            if old and up_to_date(old, source, kind, params, min_recall, recall_of, gate):
                log.info("index up to date", extra={"version": previous})
                return ReindexResult(previous, previous, False, old, [], time.perf_counter() - t0)
        if previous and not force:
            check_serving_replacement(root, previous, artifacts_dir, min_catalogue_overlap, min_history_coverage)

        index_version = new_version_name(source.model_version, named)
        with atomic_folder(version_dir(root, index_version)) as tmp:
            arts = copy_artifacts(artifacts_dir, tmp, source)
            manifest = build_version_index(arts, tmp, kind, params, min_recall, recall_of, gate)
            smoke_query(arts, tmp)
            _seal(tmp)
        try:
            write_current(root, index_version)
        except BaseException:
            # Never activated (a full disk, say): not left behind, where a worker with nothing loaded
            # would take it for the newest good version (service/versions.py, fallback_order).
            shutil.rmtree(version_dir(root, index_version), ignore_errors=True)
            raise
        pruned = _prune(root, keep, index_version)
    seconds = time.perf_counter() - t0
    log.info(
        "reindex done",
        extra={"version": index_version, "previous": previous, "pruned": pruned, "seconds": round(seconds, 2)},
    )
    return ReindexResult(index_version, previous, True, manifest, pruned, seconds)


def publish_first(artifacts_dir: str | Path, root: str | Path) -> ReindexResult | None:
    """The quick-start path of ``remi serve --artifacts``: a first version when the root has none.

    Run by the command before the service starts (the service itself only reads versions);
    returns None when ``current`` already names a version.
    """
    if read_current(root) is not None:
        return None
    log.info("no index version yet: building one", extra={"artifacts": str(artifacts_dir)})
    return reindex(artifacts_dir, root)


def rollback_target(root: Path, versions: list[str], current: str | None, to: str | None, what: str = "") -> str:
    """The version a rollback moves to: ``to`` when it is one of ``versions``, else the newest one
    older than ``current``; one rule for FAISS versions and Milvus collections (``what`` names
    the kind in the error)."""
    if to is None:
        older = [v for v in versions if current is None or v < current]
        if not older:
            raise RemiError(f"{root}: no {what}version older than {current} to roll back to")
        to = older[-1]
    if to not in versions:
        raise RemiError(f"{root}: no {what or 'complete '}version {to!r} (have: {', '.join(versions) or 'none'})")
    return to


def rollback(root: str | Path, to: str | None = None) -> str:
    """Points ``current`` at an older complete version (default: the one before current)."""
    root = Path(root)
    with root_lock(root):
        to = rollback_target(root, list_versions(root), read_current(root), to)
        read_index_manifest(version_dir(root, to))
        read_artifact_manifest(version_dir(root, to) / VERSION_ARTIFACTS)
        write_current(root, to)
    return to
