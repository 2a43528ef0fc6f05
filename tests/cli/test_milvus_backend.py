"""`remi reindex|serve|index rollback --backend milvus` end to end: real processes, a real Milvus Lite server.

The Milvus Lite server (``milvus-lite server``, the embedded engine behind the cluster's gRPC API)
holds its data in a folder of this test; the reindex job, the rollback and the `remi serve` worker
are separate processes talking to it, as they would to a Milvus cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.server import ServerProcess, free_port, is_ready, remi_serve_argv
from tests.service.attr_model import AttrModel, write_attr_artifacts
from tests.service.conftest import wait_for

N_ITEMS = 1500


class MilvusLite:
    """A Milvus Lite gRPC server process on a fixed port, its data in one folder: stoppable and restartable."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MilvusLite:
        from pymilvus import MilvusClient

        exe = Path(sys.executable).with_name("milvus-lite")
        command = [str(exe)] if exe.exists() else [shutil.which("milvus-lite") or "milvus-lite"]
        with (self.folder / "milvus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "server", "--data-dir", str(self.folder / "milvus-data"), "--host", "127.0.0.1",
                 "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

        def up() -> bool:
            try:
                MilvusClient(uri=self.uri, timeout=2).close()
                return True
            except Exception:
                assert self.proc is not None and self.proc.poll() is None, (self.folder / "milvus.log").read_text()
                return False

        wait_for(up, timeout=60)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


@pytest.fixture
def milvus(tmp_path: Path) -> Iterator[MilvusLite]:
    server = MilvusLite(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def milvus_uri(milvus: MilvusLite) -> str:
    return milvus.uri


def remi(*args: str) -> dict[str, Any]:
    """A `remi` command of this interpreter; its JSON output."""
    import json

    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def served_version(server: ServerProcess) -> str | None:
    index: str | None = httpx.get(server.url + "/version").json().get("index_version")
    return index


def test_reindex_serve_follow_the_alias_and_roll_back(milvus_uri: str, tmp_path: Path) -> None:
    first_model: AttrModel = write_attr_artifacts(tmp_path / "first", n_items=N_ITEMS, seed=1)
    second_model: AttrModel = write_attr_artifacts(tmp_path / "second", n_items=N_ITEMS, seed=2)  # same catalogue
    root = tmp_path / "root"
    milvus = ["--backend", "milvus", "--milvus-uri", milvus_uri, "--milvus-alias", "shop"]
    first = remi("reindex", "--artifacts", str(first_model.artifacts), "--root", str(root), "--kind", "flat", *milvus)
    assert first["built"] and first["backend"] == "milvus" and first["recall@50"] == 1.0

    port = free_port()
    env = {**os.environ, "REMI_POLL_SECONDS": "0.2", "REMI_BACKEND": "milvus", "REMI_MILVUS_URI": milvus_uri,
           "REMI_MILVUS_ALIAS": "shop"}  # fmt: skip
    with ServerProcess(remi_serve_argv(port, ["--index-root", str(root)]), port, tmp_path / "serve.log", env) as server:
        server.start().wait_ready(timeout=90, ready=is_ready)
        version = httpx.get(server.url + "/version").json()
        assert version["index_version"] == first["current"] and version["index_kind"] == "flat"
        history = first_model.item_ids[:5]
        body = {"user_id": "ann", "k": 10, "history": history, "use_stored_history": False}
        answer = httpx.post(server.url + "/recommend", json=body)
        assert answer.status_code == 200, answer.text
        got = [item["item_id"] for item in answer.json()["items"]]
        assert len(got) == 10 and set(got) <= set(first_model.item_ids) and not set(got) & set(history)
        assert answer.json()["index_version"] == first["current"]

        filtered = {**body, "filter": {"category": {"in": ["shoes"]}}, "exclude_items": got[:3]}
        answer = httpx.post(server.url + "/recommend", json=filtered)
        assert answer.status_code == 200, answer.text
        table = first_model.table
        shoes = set(table.loc[table["category"] == "shoes", "item_id"])
        got_filtered = [item["item_id"] for item in answer.json()["items"]]
        assert len(got_filtered) == 10 and set(got_filtered) <= shoes - set(got[:3]) - set(history)
        assert answer.json()["filter"]["path"] == "exact"  # a FLAT collection answers exactly

        second = remi("reindex", "--artifacts", str(second_model.artifacts), "--root", str(root), "--kind", "flat",
                      *milvus)  # fmt: skip
        assert second["built"] and second["previous"] == first["current"]
        wait_for(lambda: served_version(server) == second["current"], timeout=60)
        assert httpx.post(server.url + "/recommend", json=body).json()["index_version"] == second["current"]

        back = remi("index", "rollback", "--root", str(root), *milvus)
        assert back == {"current": first["current"], "alias": "shop"}
        wait_for(lambda: served_version(server) == first["current"], timeout=60)
        status = remi("index", "status", "--root", str(root), *milvus)
        assert status["current"] == first["current"] and status["versions"] == [first["current"], second["current"]]
        assert httpx.get(server.url + "/readyz").json()["status"] == "ready"


def test_a_milvus_backend_needs_a_uri_and_a_lite_file_one_process() -> None:
    from pydantic import ValidationError

    from service.config import ServiceSettings

    with pytest.raises(ValidationError, match="needs REMI_MILVUS_URI"):
        ServiceSettings(backend="milvus")
    with pytest.raises(ValidationError, match="one process"):
        ServiceSettings(backend="milvus", milvus_uri="./serving.db", workers=2, redis_url="redis://127.0.0.1:6379/0")
    assert ServiceSettings(backend="milvus", milvus_uri="http://milvus:19530", workers=2,
                           redis_url="redis://127.0.0.1:6379/0").backend == "milvus"  # fmt: skip


def test_the_token_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from service.config import ServiceSettings

    token = tmp_path / "token"
    token.write_text("root:Milvus\n")
    assert ServiceSettings(milvus_token_file=token).milvus_credential() == "root:Milvus"
    assert ServiceSettings(milvus_token=SecretStr("key"), milvus_token_file=token).milvus_credential() == "key"
    assert ServiceSettings().milvus_credential() is None


def test_a_replica_answers_503_while_milvus_is_down_says_why_and_answers_again_when_it_is_back(
    milvus: MilvusLite, tmp_path: Path
) -> None:
    model = write_attr_artifacts(tmp_path / "model", n_items=800, seed=4)
    root = tmp_path / "root"
    remi("reindex", "--artifacts", str(model.artifacts), "--root", str(root), "--backend", "milvus",
         "--milvus-uri", milvus.uri, "--kind", "flat")  # fmt: skip
    port = free_port()
    env = {**os.environ, "REMI_POLL_SECONDS": "0.2", "REMI_BACKEND": "milvus", "REMI_MILVUS_URI": milvus.uri}
    body = {"user_id": "bo", "k": 5, "history": model.item_ids[:3], "use_stored_history": False}
    with ServerProcess(remi_serve_argv(port, ["--index-root", str(root)]), port, tmp_path / "serve.log", env) as server:
        server.start().wait_ready(timeout=90, ready=is_ready)
        assert httpx.post(server.url + "/recommend", json=body).status_code == 200
        milvus.stop()
        down = httpx.post(server.url + "/recommend", json=body, timeout=30)
        assert down.status_code == 503 and down.headers["retry-after"] == "1", down.text  # never a 500
        assert "index backend unavailable" in down.json()["detail"]
        assert httpx.get(server.url + "/healthz").status_code == 200  # the process stays up
        error = wait_for(lambda: httpx.get(server.url + "/readyz").json()["last_reload_error"], timeout=60)
        assert milvus.uri in error and "describe alias failed" in error
        milvus.start()  # a restarted Milvus Lite has released its collections: the replica loads it again
        wait_for(lambda: httpx.post(server.url + "/recommend", json=body, timeout=30).status_code == 200, timeout=60)
        wait_for(lambda: httpx.get(server.url + "/readyz").json()["last_reload_error"] is None, timeout=60)
