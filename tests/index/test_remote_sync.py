"""Publish once, sync everywhere, over a local-folder object store (file://): the rules, fast.

The same code runs against S3 (moto's server) in test_remote_s3.py: kills, replicas under load,
conditional moves of the remote `current`.
"""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from index import sync as sync_module
from index.publish import reindex
from index.remote import Remote, version_key
from index.sync import publish, remote_status, rollback_remote, seed_from_remote, sync_forever, sync_once
from remi.contract import (
    ITEM_EMBEDDINGS,
    MANIFEST,
    VERSION_ARTIFACTS,
    VERSIONS,
    ArtifactError,
    list_versions,
    read_current,
    version_dir,
)
from remi.errors import RemiError
from retrieval.store import load_current
from tests.service.tiny_model import write_model_folder, write_tiny_artifacts


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two models over one catalogue (a retrain) and one over another catalogue (refused as a replacement)."""
    base = tmp_path_factory.mktemp("models")
    other_ids = [f"other-{i:03d}" for i in range(40)]
    write_model_folder(base / "other", other_ids, np.random.default_rng(5))
    return {
        "v1": write_tiny_artifacts(base / "v1", seed=0).artifacts,
        "v2": write_tiny_artifacts(base / "v2", seed=1).artifacts,
        "other": base / "other",
    }


def published(artifacts: Path, url: str, root: Path, force: bool = False) -> str:
    """``remi reindex --publish``'s steps: take the remote current, build, upload and move the remote current."""
    seed_from_remote(url, root)
    version = reindex(artifacts, root, kind="flat", force=force).index_version
    publish(url, root, version)
    return version


def hidden(root: Path) -> list[str]:
    return [p.name for p in (root / VERSIONS).iterdir() if p.name.startswith(".")]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return (tmp_path / "bucket" / "prefix").as_uri()


def test_publish_uploads_the_manifests_after_their_files_and_the_version_manifest_last(
    models: dict[str, Path], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploaded: list[str] = []
    real = Remote.upload
    monkeypatch.setattr(Remote, "upload", lambda self, key, src: (uploaded.append(key), real(self, key, src))[1])
    version = published(models["v1"], url, tmp_path / "job")
    arts = [k for k in uploaded if f"/{VERSION_ARTIFACTS}/" in k]
    assert arts[-1] == version_key(version, MANIFEST, artifacts=True) and len(arts) >= 6
    assert uploaded.index(arts[-1]) < uploaded.index(version_key(version, "index.faiss"))
    assert uploaded[-1] == version_key(version)
    assert remote_status(url) == {"current": version, "previous": None, "versions": [version]}


def test_sync_downloads_a_sealed_copy_and_flips_current_only_when_complete(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    version = published(models["v1"], url, tmp_path / "job")
    replica = tmp_path / "replica"
    result = sync_once(url, replica)
    assert result.changed and result.downloaded and read_current(replica) == version
    loaded = load_current(replica)  # the service's own load: hashes, pairing
    assert loaded.name == version and loaded.artifacts.model_version == loaded.manifest.model_version
    files = [p for p in version_dir(replica, version).rglob("*") if p.is_file()]
    assert files and all(not p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) for p in files)
    again = sync_once(url, replica)
    assert not again.changed and not again.downloaded and hidden(replica) == []


def test_a_new_version_reaches_the_replica_and_a_rollback_follows_without_a_download(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    job, replica = tmp_path / "job", tmp_path / "replica"
    first = published(models["v1"], url, job)
    sync_once(url, replica)
    second = published(models["v2"], url, job)
    assert second != first and sync_once(url, replica).current == second
    assert rollback_remote(url) == first
    back = sync_once(url, replica)
    assert back.current == first == read_current(replica) and not back.downloaded  # kept locally
    assert remote_status(url)["previous"] == second
    assert rollback_remote(url, to=second) == second and sync_once(url, replica).current == second


def test_a_tampered_remote_file_is_refused_and_nothing_flips(models: dict[str, Path], url: str, tmp_path: Path) -> None:
    job, replica = tmp_path / "job", tmp_path / "replica"
    first = published(models["v1"], url, job)
    sync_once(url, replica)
    second = published(models["v2"], url, job)
    remote_file = Path(url.removeprefix("file://")) / version_key(second, ITEM_EMBEDDINGS, artifacts=True)
    data = bytearray(remote_file.read_bytes())
    data[-1] ^= 0xFF  # same size, other content: only the hash can tell
    remote_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        sync_once(url, replica)
    assert read_current(replica) == first and list_versions(replica) == [first] and hidden(replica) == []
    remote_file.write_bytes(bytes(data[:-10]))  # truncated: refused on its size, before any byte is read
    with pytest.raises(ArtifactError, match="truncated or replaced"):
        sync_once(url, replica)
    assert read_current(replica) == first and list_versions(replica) == [first] and hidden(replica) == []


def test_a_tampered_manifest_naming_a_path_outside_the_version_is_refused(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    version = published(models["v1"], url, tmp_path / "job")
    manifest = Path(url.removeprefix("file://")) / version_key(version)
    manifest.write_text(manifest.read_text().replace('"index.faiss"', '"../../escape"'))
    with pytest.raises(ArtifactError, match="escape"):
        sync_once(url, tmp_path / "replica")
    assert read_current(tmp_path / "replica") is None and not (tmp_path / "replica" / "escape").exists()


def test_a_model_over_another_catalogue_is_refused_unless_forced(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    job, replica = tmp_path / "job", tmp_path / "replica"
    first = published(models["v1"], url, job)
    sync_once(url, replica)
    other = published(models["other"], url, job, force=True)  # the publisher forced it: replicas still check
    with pytest.raises(RemiError, match="catalogue"):
        sync_once(url, replica)
    assert read_current(replica) == first and list_versions(replica) == [first] and hidden(replica) == []
    assert sync_once(url, replica, force=True).current == other


def test_an_incomplete_remote_version_is_neither_listed_nor_synced(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    job, replica = tmp_path / "job", tmp_path / "replica"
    first = published(models["v1"], url, job)
    sync_once(url, replica)
    second = reindex(models["v2"], job, kind="flat").index_version
    remote = Remote(url)
    for name in [n for n in (version_dir(job, second) / VERSION_ARTIFACTS).iterdir()]:
        remote.upload(version_key(second, name.name, artifacts=True), name)  # a publisher killed mid-upload
    assert remote.versions() == [first]
    with pytest.raises(RemiError, match="no complete version"):
        rollback_remote(url, to=second)
    (Path(url.removeprefix("file://")) / "current").write_text(second + "\n")  # moved by hand, wrongly
    with pytest.raises(ArtifactError, match="incomplete"):
        sync_once(url, replica)
    assert read_current(replica) == first and hidden(replica) == []


def test_publishing_again_uploads_nothing_and_a_different_version_under_the_same_name_is_refused(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    job = tmp_path / "job"
    version = published(models["v1"], url, job)
    again = publish(url, job, version)
    assert not again.uploaded and not again.moved
    manifest = Path(url.removeprefix("file://")) / version_key(version)
    manifest.write_text(manifest.read_text().replace('"created_at"', '"created_at" ', 1))
    with pytest.raises(RemiError, match="another manifest"):
        publish(url, job, version)


def test_a_fresh_job_root_takes_the_remote_current_so_an_unchanged_model_is_not_published_again(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    first = published(models["v1"], url, tmp_path / "job-1")
    assert seed_from_remote(url, tmp_path / "job-2") == first
    assert not reindex(models["v1"], tmp_path / "job-2", kind="flat").built  # "up to date" against the replicas


def test_old_versions_are_pruned_remotely_and_locally_but_never_current_or_previous(
    models: dict[str, Path], url: str, tmp_path: Path
) -> None:
    job, replica = tmp_path / "job", tmp_path / "replica"
    made = []
    for i in range(4):
        seed_from_remote(url, job)
        made.append(reindex(models["v1" if i % 2 == 0 else "v2"], job, kind="flat", keep=2).index_version)
        publish(url, job, made[-1], keep=2)
        sync_once(url, replica, keep=2)
    assert Remote(url).versions() == made[-2:] and list_versions(replica) == made[-2:]
    assert read_current(replica) == made[-1]


def test_the_sync_loop_keeps_going_after_a_failure_and_backs_off_the_failed_version(
    models: dict[str, Path], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = published(models["v1"], url, tmp_path / "job")
    calls: list[float] = []
    real = sync_module.sync_once

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RemiError("network cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(sync_module, "sync_once", flaky)
    monkeypatch.setattr(sync_module, "MAX_BACKOFF_S", 0.2)
    replica = tmp_path / "replica"
    sync_forever(url, replica, 0.05, stop=lambda: read_current(replica) is not None or len(calls) > 20)
    assert read_current(replica) == version and len(calls) == 2


def test_a_replica_that_waits_for_a_synced_version_starts_on_a_missing_root_and_never_builds(
    models: dict[str, Path], tmp_path: Path
) -> None:
    from cli.serve import _check_serve_paths

    root = tmp_path / "replica" / "index"
    with pytest.raises(RemiError, match="no such folder"):
        _check_serve_paths(root, None)
    _check_serve_paths(root, models["v1"], wait=True)  # --artifacts is ignored: nothing is built
    assert root.is_dir() and list_versions(root) == [] and read_current(root) is None
