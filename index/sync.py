"""Publish once, sync everywhere: index versions through object storage (index/remote.py).

The reindex job builds and validates a version in its local root as before, then
:func:`publish` uploads it (every file hash-checked against its manifest first; files before
manifests, the version's own manifest last, so a version is complete remotely only once all of
it is there) and moves the remote ``current`` with a conditional write. Every replica runs
:func:`sync_once` in a loop (``remi index sync --every``): when the remote ``current`` names a
version its local root does not serve, it downloads that version into a hidden folder beside the
versions (same disk), checks every size and SHA-256 against the manifests while streaming,
checks that model and index pair, runs the reindex job's replacement check (index/compat.py)
against the version it serves, seals the files read-only, renames the folder into place and
only then flips the local ``current``. The service follows its local root as always
(service/versions.py): it never talks to the object store, and replicas never build.

Whatever kills a sync (SIGKILL, a node drain, a network cut) it leaves no version folder that
looks complete and ``current`` as it was; the next run removes the hidden leftover. A rollback
is moving the remote ``current`` back (:func:`rollback_remote`); replicas follow it like any
other move. A move to an *older* version is an operator's rollback and is not held to the
replacement check (as ``remi index rollback`` on a local root); a move to a newer one is.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from index.compat import check_replacement
from index.params import KEEP, MIN_CATALOGUE_OVERLAP, MIN_HISTORY_COVERAGE
from index.remote import Pointer, Remote, version_key
from remi.contract import (
    CURRENT,
    MANIFEST,
    MANIFEST_MAX_BYTES,
    PREVIOUS,
    VERSION_ARTIFACTS,
    VERSIONS,
    ArtifactError,
    ArtifactManifest,
    IndexManifest,
    atomic_folder,
    check_file_name,
    check_pair,
    check_real_folder,
    list_versions,
    read_artifact_manifest,
    read_current,
    read_index_manifest,
    read_previous,
    sweep_leftovers,
    version_dir,
    write_current,
)
from remi.errors import RemiError

log = logging.getLogger("remi.sync")

MAX_BACKOFF_S = 600.0  # a version that failed to download is retried at most this far apart


@contextmanager
def root_lock(root: Path) -> Iterator[None]:
    """One writer per local root: the same lock file as the reindex job's, so a sync and a reindex
    of one root never interleave."""
    with (root / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def seal(folder: Path) -> None:
    """Every file of a version read-only, as the reindex job leaves its own (folders stay writable for pruning)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


ManifestT = TypeVar("ManifestT", IndexManifest, ArtifactManifest)


def _parse_manifest(data: bytes, schema: type[ManifestT], where: str) -> ManifestT:
    """A downloaded manifest whose file names are plain names (the full check runs on the folder)."""
    try:
        manifest = schema.model_validate_json(data)
    except ValueError as exc:
        raise ArtifactError(f"{where}: unreadable manifest ({str(exc).splitlines()[0]})") from exc
    for name in manifest.files:
        check_file_name(name, where)
    return manifest


# ---------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class PublishResult:
    url: str
    version: str
    uploaded: bool  # False when the remote already held this complete version
    previous: str | None  # the remote current before the move
    moved: bool  # False when the remote current already named it
    pruned: list[str]


def upload_version(remote: Remote, root: Path, version: str) -> bool:
    """Uploads one sealed local version (hash-checked first); False when the remote already has it complete."""
    folder = check_real_folder(version_dir(root, version), "version")
    index = read_index_manifest(folder)  # sizes and hashes: never upload a version that changed on disk
    arts = read_artifact_manifest(folder / VERSION_ARTIFACTS)
    check_pair(arts, index)
    local_manifest = (folder / MANIFEST).read_bytes()
    there = remote.read_small(version_key(version), MANIFEST_MAX_BYTES)
    if there is not None:
        if there != local_manifest:
            raise RemiError(f"{remote.url}: version {version} exists with another manifest (refused to overwrite it)")
        return False
    for name in arts.files:
        remote.upload(version_key(version, name, artifacts=True), folder / VERSION_ARTIFACTS / name)
    remote.upload(version_key(version, MANIFEST, artifacts=True), folder / VERSION_ARTIFACTS / MANIFEST)
    for name in index.files:
        remote.upload(version_key(version, name), folder / name)
    remote.upload(version_key(version), folder / MANIFEST)  # last: now the version is complete
    return True


def move_current(remote: Remote, version: str, expected: Pointer | None = None) -> Pointer:
    """Points the remote ``current`` at a complete remote version; the old value goes to ``previous``.

    Conditional on ``current`` still being ``expected`` (read now when not given): a second
    publisher or a rollback racing this one makes it fail, not silently win.
    """
    if version not in remote.versions():
        raise RemiError(f"{remote.url}: no complete version {version!r} (its manifest is not there)")
    expected = expected or remote.pointer(CURRENT)
    if expected.version == version:
        return expected
    remote.write_pointer(CURRENT, version, expected)
    if expected.version:
        try:
            remote.write_pointer(PREVIOUS, expected.version, remote.pointer(PREVIOUS))
        except RemiError as exc:  # `previous` only orders rollbacks: current has moved, say so and go on
            log.warning("remote previous not written", extra={"error": str(exc)})
    log.info("remote current moved", extra={"url": remote.url, "version": version, "previous": expected.version})
    return expected


def prune_remote(remote: Remote, keep: int) -> list[str]:
    """Removes remote versions older than the last ``keep``, never ``current`` or ``previous``.

    A version's manifest goes first, so a replica that lists it at that moment sees it incomplete.
    """
    versions = remote.versions()
    spared = {remote.pointer(CURRENT).version, remote.pointer(PREVIOUS).version}
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in spared]
    for version in doomed:
        remote.delete([version_key(version)])
        remote.delete(remote.keys(f"{VERSIONS}/{version}/"))
    return doomed


def publish(url: str, root: str | Path, version: str | None = None, keep: int = KEEP) -> PublishResult:
    """Uploads ``version`` (default: the local ``current``) of ``root`` and moves the remote ``current`` to it."""
    root = Path(root)
    version = version or read_current(root)
    if version is None:
        raise RemiError(f"{root}: no current version to publish")
    remote = Remote(url)
    expected = remote.pointer(CURRENT)
    uploaded = upload_version(remote, root, version)
    before = move_current(remote, version, expected)
    pruned = prune_remote(remote, keep)
    log.info("published", extra={"url": url, "version": version, "uploaded": uploaded, "pruned": pruned})
    return PublishResult(url, version, uploaded, before.version, before.version != version, pruned)


def seed_from_remote(url: str, root: str | Path) -> str | None:
    """Makes the remote ``current`` the local one, without the replacement check (it is what serves).

    The reindex job runs it before building into a fresh root (a Kubernetes job's empty folder),
    so that "up to date" and the replacement check compare against what replicas serve.
    """
    result = sync_once(url, root, force=True)
    return result.current


# ---------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class SyncResult:
    current: str | None  # the local current after this run
    changed: bool
    downloaded: bool
    remote: str | None  # what the remote current named
    pruned: list[str]
    seconds: float


def _download_version(remote: Remote, version: str, dest: Path) -> None:
    """Every file of one remote version into ``dest`` (artifacts first), each size- and hash-checked."""
    where = f"{remote.url}/{version_key(version)}"
    index_bytes = remote.read_small(version_key(version), MANIFEST_MAX_BYTES)
    if index_bytes is None:
        raise ArtifactError(f"{where}: missing (the version is incomplete or was removed)")
    index = _parse_manifest(index_bytes, IndexManifest, where)
    arts_key = version_key(version, MANIFEST, artifacts=True)
    arts_bytes = remote.read_small(arts_key, MANIFEST_MAX_BYTES)
    if arts_bytes is None:
        raise ArtifactError(f"{remote.url}/{arts_key}: missing (the version is incomplete)")
    arts = _parse_manifest(arts_bytes, ArtifactManifest, f"{remote.url}/{arts_key}")
    arts_dir = dest / VERSION_ARTIFACTS
    arts_dir.mkdir()
    for name, entry in arts.files.items():
        remote.download(version_key(version, name, artifacts=True), arts_dir / name, entry)
    (arts_dir / MANIFEST).write_bytes(arts_bytes)
    for name, entry in index.files.items():
        remote.download(version_key(version, name), dest / name, entry)
    (dest / MANIFEST).write_bytes(index_bytes)
    # The contract's own readers over the folder (required files, names, sizes; hashes were checked
    # while streaming), then the pairing the service checks on load.
    check_pair(read_artifact_manifest(arts_dir, check_hash=False), read_index_manifest(dest, check_hash=False))


def _replacement_check(
    root: Path, serving: str | None, candidate: Path, name: str, limits: tuple[float, float]
) -> None:
    """The reindex job's check of a new model against the one served (skipped for a rollback or the same model)."""
    if serving is None or name < serving:
        return
    try:
        old = check_real_folder(version_dir(root, serving), "version") / VERSION_ARTIFACTS
        old_model = read_artifact_manifest(old, check_hash=False).model_version
    except ArtifactError as exc:
        log.warning("served version unreadable: replacement check skipped", extra={"error": str(exc)})
        return
    if old_model == read_artifact_manifest(candidate / VERSION_ARTIFACTS, check_hash=False).model_version:
        return
    check_replacement(old, candidate / VERSION_ARTIFACTS, *limits)


def _usable_local(root: Path, version: str) -> bool:
    """A complete local copy that still checks (a rollback to a version this replica kept)."""
    if version not in list_versions(root):
        return False
    try:
        folder = check_real_folder(version_dir(root, version), "version")
        check_pair(read_artifact_manifest(folder / VERSION_ARTIFACTS), read_index_manifest(folder))
        return True
    except ArtifactError as exc:
        log.warning("local copy refused: downloading it again", extra={"version": version, "error": str(exc)})
        shutil.rmtree(version_dir(root, version), ignore_errors=True)
        return False


def _prune_local(root: Path, keep: int) -> list[str]:
    versions = list_versions(root)
    spared = {read_current(root), read_previous(root)}
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in spared]
    for name in doomed:
        shutil.rmtree(version_dir(root, name), ignore_errors=True)
    return doomed


def sync_once(
    url: str,
    root: str | Path,
    keep: int = KEEP,
    force: bool = False,
    min_catalogue_overlap: float = MIN_CATALOGUE_OVERLAP,
    min_history_coverage: float = MIN_HISTORY_COVERAGE,
    remote: Remote | None = None,
) -> SyncResult:
    """Makes the local root serve what the remote ``current`` names (see the module docstring)."""
    t0 = time.perf_counter()
    root = Path(root)
    (root / VERSIONS).mkdir(parents=True, exist_ok=True)
    remote = remote or Remote(url)
    with root_lock(root):
        removed = sweep_leftovers(root / VERSIONS) + sweep_leftovers(root, CURRENT) + sweep_leftovers(root, PREVIOUS)
        if removed:
            log.warning("removed partial folders of an interrupted sync", extra={"removed": removed})
        wanted, local = remote.pointer(CURRENT).version, read_current(root)
        if wanted is None or wanted == local:
            return SyncResult(local, False, False, wanted, [], time.perf_counter() - t0)
        downloaded = not _usable_local(root, wanted)
        limits = (min_catalogue_overlap, min_history_coverage)
        if downloaded:
            with atomic_folder(version_dir(root, wanted)) as tmp:
                _download_version(remote, wanted, tmp)
                if not force:
                    _replacement_check(root, local, tmp, wanted, limits)
                seal(tmp)
        elif not force:
            _replacement_check(root, local, version_dir(root, wanted), wanted, limits)
        write_current(root, wanted)
        pruned = _prune_local(root, keep)
    seconds = time.perf_counter() - t0
    log.info(
        "synced",
        extra={"version": wanted, "previous": local, "downloaded": downloaded, "seconds": round(seconds, 3)},
    )
    return SyncResult(wanted, True, downloaded, wanted, pruned, seconds)


def sync_forever(
    url: str, root: str | Path, every_s: float, stop: Callable[[], bool] = lambda: False, **options: Any
) -> None:
    """:func:`sync_once` every ``every_s`` seconds until ``stop()``; never raises for a failed round.

    A remote ``current`` that failed (a tampered file, a refused replacement, a network cut) is
    tried again after a backoff that doubles per failure up to :data:`MAX_BACKOFF_S`, so a refused
    multi-GB version is not downloaded every few seconds; a new move of the remote ``current`` is
    still seen within ``every_s`` (the pointer is read every round: one small GET).
    """
    remote: Remote | None = None
    failed: str | None = None
    retry_at, backoff = 0.0, every_s
    while not stop():
        target: str | None = None
        try:
            remote = remote or Remote(url)
            target = remote.pointer(CURRENT).version
            if target != failed or time.monotonic() >= retry_at:
                result = sync_once(url, root, remote=remote, **options)
                failed, backoff = None, every_s
                if result.changed:
                    log.info("now serving", extra={"version": result.current, "seconds": round(result.seconds, 3)})
        except (RemiError, OSError) as exc:
            backoff = min(backoff * 2, MAX_BACKOFF_S) if target == failed else every_s
            failed, retry_at = target, time.monotonic() + backoff
            log.error("sync failed", extra={"url": url, "version": target, "error": str(exc), "retry_s": backoff})
        deadline = time.monotonic() + every_s
        while not stop() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))


# ---------------------------------------------------------------------------- remote rollback and status


def rollback_remote(url: str, to: str | None = None) -> str:
    """Moves the remote ``current`` back (default: the complete version before it); replicas follow."""
    remote = Remote(url)
    expected = remote.pointer(CURRENT)
    versions = remote.versions()
    if to is None:
        older = [v for v in versions if expected.version is None or v < expected.version]
        if not older:
            raise RemiError(f"{url}: no version older than {expected.version} to roll back to")
        to = older[-1]
    if to not in versions:
        raise RemiError(f"{url}: no complete version {to!r} (have: {', '.join(versions) or 'none'})")
    move_current(remote, to, expected)
    return to


def remote_status(url: str) -> dict[str, object]:
    remote = Remote(url)
    return {
        "current": remote.pointer(CURRENT).version,
        "previous": remote.pointer(PREVIOUS).version,
        "versions": remote.versions(),
    }
