"""A hostile or damaged index root against a real `remi serve` process
(docs/operations.md#reindex-cadence-and-rollback).

What reaches an HTTP response names versions and files, never a path of the machine, and a
pointer file is read with a size cap (a `current` linked to a 50 MB file made a 100 MB /readyz
and showed /etc/passwd). A published file edited in place under a running worker must never
kill it: the worker answers from the copy it loaded (or a clean 503), it does not die of SIGBUS.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from index.publish import reindex
from remi.contract import (
    CURRENT,
    INDEX_FILE,
    ITEM_EMBEDDINGS,
    MANIFEST,
    MODEL_DATA,
    MODEL_FILE,
    VERSION_ARTIFACTS,
    ArtifactManifest,
    file_entries,
    model_version,
    version_dir,
    write_current,
    write_manifest,
)
from tests.service.conftest import start_server, wait_for
from tests.service.tiny_model import TinyModel


def fresh_root(tiny_model: TinyModel, tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "root"
    return root, reindex(tiny_model.artifacts, root, kind="flat").index_version


def truncate_in_place(path: Path) -> None:
    """What `truncate -s 0` or `: > file` does to a published file: same inode, new size."""
    path.chmod(0o644)
    os.truncate(path, 0)


def ask(url: str, items: list[str]) -> httpx.Response:
    body = {"user_id": "zoe", "history": items, "use_stored_history": False, "k": 10}
    return httpx.post(url + "/recommend", json=body, timeout=30)


def test_readyz_shows_no_path_and_refuses_a_current_linked_to_a_big_file(tiny_model: TinyModel, tmp_path: Path) -> None:
    root, good = fresh_root(tiny_model, tmp_path)
    server = start_server(root, None)
    try:
        secret = tmp_path / "secret-50mb.txt"
        secret.write_text("top-secret-line\n" * (3 * 2**20))  # ~50 MB, one "name" per line
        (root / CURRENT).unlink()
        (root / CURRENT).symlink_to(secret)
        ready = wait_for(lambda: (r := httpx.get(server.url + "/readyz")).json()["last_reload_error"] and r)
        assert ready.status_code == 200 and ready.json()["index"] == good  # keeps serving what it loaded
        assert len(ready.content) < 2000, len(ready.content)
        error = ready.json()["last_reload_error"]
        assert "top-secret" not in error and str(tmp_path) not in ready.text and "symbolic link" in error
    finally:
        server.stop()


def test_readyz_names_versions_and_files_not_paths_of_a_refused_version(tiny_model: TinyModel, tmp_path: Path) -> None:
    root, good = fresh_root(tiny_model, tmp_path)
    broken = "99990101T000000000000Z-broken-flat"
    shutil.copytree(version_dir(root, good), version_dir(root, broken))
    truncate_in_place(version_dir(root, broken) / INDEX_FILE)
    write_current(root, broken)
    server = start_server(root, None)
    try:
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["index"] == good
        error = ready.json()["last_reload_error"]
        assert broken in error and INDEX_FILE in error and "truncated" in error
        assert str(tmp_path) not in ready.text and str(root) not in ready.text
    finally:
        server.stop()


def test_a_version_folder_that_is_a_symlink_is_not_served(tiny_model: TinyModel, tmp_path: Path) -> None:
    root, good = fresh_root(tiny_model, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(version_dir(root, good), elsewhere)
    linked = "99990101T000000000000Z-linked-flat"
    version_dir(root, linked).symlink_to(elsewhere, target_is_directory=True)
    write_current(root, linked)
    server = start_server(root, None)
    try:
        ready = httpx.get(server.url + "/readyz")
        assert ready.json()["index"] == good, ready.text  # the fallback, never the linked folder
        assert linked in ready.json()["last_reload_error"] and "symbolic link" in ready.json()["last_reload_error"]
        assert str(elsewhere) not in ready.text
    finally:
        server.stop()


def with_external_weights(model: TinyModel, out: Path) -> Path:
    """A copy of the tiny artifacts whose ONNX weights live in user_tower.onnx.data (as above 64 MB)."""
    shutil.copytree(model.artifacts, out)
    proto = onnx.load(str(out / MODEL_FILE))
    onnx.save(proto, str(out / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
              location=MODEL_DATA, size_threshold=256)  # fmt: skip
    manifest = ArtifactManifest.model_validate(json.loads((out / MANIFEST).read_text()))
    names = [*manifest.files, MODEL_DATA]
    files = file_entries(out, names)
    write_manifest(out, manifest.model_copy(update={"files": files, "model_version": model_version(out, files)}))
    return out


@pytest.mark.parametrize("damaged", [INDEX_FILE, ITEM_EMBEDDINGS, MODEL_DATA])
def test_truncating_a_published_file_in_place_never_kills_the_worker(
    tiny_model: TinyModel, tmp_path: Path, damaged: str
) -> None:
    artifacts = with_external_weights(tiny_model, tmp_path / "artifacts")
    root = tmp_path / "root"
    good = reindex(artifacts, root, kind="flat").index_version
    folder = version_dir(root, good)
    assert (folder / VERSION_ARTIFACTS / MODEL_DATA).stat().st_size > 0
    server = start_server(root, None)  # the defaults, as deployed
    try:
        items = tiny_model.item_ids[:5]
        assert ask(server.url, items).status_code == 200
        target = folder / damaged if damaged == INDEX_FILE else folder / VERSION_ARTIFACTS / damaged
        truncate_in_place(target)
        for round_ in range(20):
            answer = ask(server.url, [*items, tiny_model.item_ids[-1 - round_]])
            assert answer.status_code in (200, 503), answer.text
            assert server.proc.poll() is None, (
                f"the worker died (exit {server.proc.poll()}) after {damaged} was truncated"
            )
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


def test_the_tiny_model_with_external_weights_is_a_valid_version(tiny_model: TinyModel, tmp_path: Path) -> None:
    """The fixture above is what `remi export` writes for a large model (checks the test's own setup)."""
    from retrieval.store import load_current

    artifacts = with_external_weights(tiny_model, tmp_path / "artifacts")
    root = tmp_path / "root"
    reindex(artifacts, root, kind="flat")
    loaded = load_current(root)
    ids, mask = np.ones((1, 12), dtype=np.int64), np.ones((1, 12), dtype=bool)
    assert loaded.artifacts.tower.run(ids, mask)[0].shape[0] == 1


def test_public_errors_name_versions_and_files_never_paths_and_are_capped() -> None:
    from service.versions import ERROR_MAX_CHARS, public_error

    root = Path("/srv/remi/root")
    assert public_error("v1 refused: /srv/remi/root/versions/v1/index.faiss: 0 bytes", root) == (
        "v1 refused: v1/index.faiss: 0 bytes"
    )
    assert public_error("/srv/remi/root: no current index version", root) == "INDEX_ROOT: no current index version"
    assert public_error("[Errno 13] Permission denied: '/srv/remi/root/current'", root).endswith("'current'")
    assert public_error("linked to /etc/passwd and /srv/remi/rootless/x.txt", root) == "linked to passwd and x.txt"
    unchanged = "Error 111 connecting to redis://127.0.0.1:6380/0. Connection refused; 1/2 of the calls"
    assert public_error(unchanged, root) == unchanged
    assert len(public_error("x" * 100_000, root)) == ERROR_MAX_CHARS
