"""Generated settings flags: precedence (flag > config file > REMI_* environment > default), and how
`remi serve` hands its one validated ServiceSettings to the server processes (REMI_* variables).

In process (typer's CliRunner) with the heavy work replaced by a recorder, so it runs in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from cli import app
from remi.errors import RemiError
from service.config import ServiceSettings

runner = CliRunner()


@pytest.fixture
def clean_env() -> Iterator[None]:
    """No REMI_* variable from outside, and the environment restored afterwards (serve exports to it)."""
    saved = dict(os.environ)
    for var in [v for v in os.environ if v.startswith("REMI_")]:
        del os.environ[var]
    yield
    os.environ.clear()
    os.environ.update(saved)


def recorder(calls: list[dict[str, Any]], returns: Any = None) -> Any:
    def record(*args: Any, **kwargs: Any) -> Any:
        calls.append({"args": args, **kwargs})
        return returns

    return record


# ---------------------------------------------------------------------------- ServiceSettings <-> REMI_*


def test_to_env_rebuilds_the_same_settings_in_another_process(clean_env: None) -> None:
    settings = ServiceSettings(
        index_root=Path("/srv/index"), artifacts=Path("/srv/art"), port=9123, workers=3, microbatch=False,
        redis_url="redis://127.0.0.1:6379/0", redis_timeout_ms=12.5, history_ttl_days=0.5,
        admin_token=SecretStr("s3cret"), log_level="debug",
    )  # fmt: skip
    env = settings.to_env()
    assert env["REMI_MICROBATCH"] == "false" and env["REMI_ADMIN_TOKEN"] == "s3cret" and env["REMI_PORT"] == "9123"
    assert ServiceSettings() != settings  # (the environment of this process is clean)
    os.environ.update(env)
    assert ServiceSettings() == settings  # secrets included
    code = "from service.config import ServiceSettings as S; import json; print(json.dumps(S().to_env()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == env  # a worker process rebuilds the same settings


def test_export_env_removes_the_variables_of_unset_fields(clean_env: None) -> None:
    environ = {"REMI_ARTIFACTS": "/old", "REMI_TRAIN_DIM": "8", "PATH": "/bin"}
    ServiceSettings(index_root=Path("r")).export_env(environ)
    assert "REMI_ARTIFACTS" not in environ and environ["REMI_INDEX_ROOT"] == "r"
    assert environ["REMI_TRAIN_DIM"] == "8" and environ["PATH"] == "/bin"  # not the service's: untouched


def test_a_none_that_is_not_the_default_cannot_be_exported() -> None:
    with pytest.raises(ValueError, match="history_ttl_days"):
        ServiceSettings(history_ttl_days=None).to_env()


# ---------------------------------------------------------------------------- remi serve


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records the one-process server's start (service.workers.serve_one) instead of listening and serving."""
    import cli.serve
    import service.workers

    calls: list[dict[str, Any]] = []
    listens: list[dict[str, Any]] = []
    monkeypatch.setattr(service.workers, "listen", recorder(listens, service.workers.Listeners("h", 8000, [])))
    monkeypatch.setattr(service.workers, "serve_one", recorder(calls))
    monkeypatch.setattr(cli.serve, "_check_serve_paths", lambda root, artifacts, wait=False: None)
    return calls


def test_serve_flags_win_over_env_and_every_server_process_reads_the_same_settings(
    clean_env: None, no_server: list[dict[str, Any]]
) -> None:
    os.environ.update({"REMI_PORT": "9001", "REMI_MICROBATCH": "false", "REMI_K_MAX": "50", "REMI_ARTIFACTS": "/a"})
    result = runner.invoke(app, ["serve", "--index-root", "/srv/index", "--port", "9002", "--batch-max", "8"])
    assert result.exit_code == 0, result.output
    assert len(no_server) == 1  # one process: the app factory reads the settings back from REMI_*
    served = ServiceSettings()  # what create_app reads in this process, and each worker in its own
    assert (served.port, served.batch_max, served.index_root) == (9002, 8, Path("/srv/index"))  # flags
    assert (served.microbatch, served.k_max, served.artifacts) == (False, 50, Path("/a"))  # environment
    assert served.compute_threads == ServiceSettings.model_fields["compute_threads"].default
    assert os.environ["OMP_NUM_THREADS"]


def test_serve_workers_get_the_settings_through_the_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, no_server: list[dict[str, Any]]
) -> None:
    import service.workers

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(service.workers, "serve_workers", recorder(calls))
    redis = "redis://127.0.0.1:6379/0"
    args = ["serve", "--index-root", "r", "--workers", "2", "--redis-url", redis, "--no-microbatch"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls[0]["args"][:3] == (2, "127.0.0.1", 8000) and not no_server
    assert os.environ["REMI_WORKERS"] == "2" and os.environ["REMI_MICROBATCH"] == "false"
    assert ServiceSettings().redis_url == redis


def test_serve_refuses_bad_settings_with_one_message(clean_env: None, no_server: list[dict[str, Any]]) -> None:
    result = runner.invoke(app, ["serve", "--index-root", "r", "--workers", "2"])
    assert isinstance(result.exception, RemiError) and "embedded history store" in str(result.exception)
    result = runner.invoke(app, ["serve", "--index-root", "r", "--port", "70000"])
    assert isinstance(result.exception, RemiError) and "invalid setting port" in str(result.exception)
    os.environ["REMI_COMPUTE_THREADS"] = "0"
    result = runner.invoke(app, ["serve", "--index-root", "r"])
    assert isinstance(result.exception, RemiError) and "compute_threads" in str(result.exception)
    assert not no_server


# ---------------------------------------------------------------------------- remi index build / reindex


def test_index_flags_win_over_env_and_only_given_params_reach_the_builder(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import index.publish

    class Manifest:
        def model_dump(self, exclude: Any = None) -> dict[str, Any]:
            return {}

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(index.publish, "build_from_artifacts", recorder(calls, Manifest()))
    os.environ.update({"REMI_INDEX_HNSW_M": "8", "REMI_INDEX_EF_SEARCH": "80", "REMI_INDEX_KIND": "ivfpq"})
    args = ["index", "build", "--artifacts", "a", "--out", "o", "--kind", "hnsw", "--hnsw-m", "16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    [call] = calls
    assert call["args"][2:] == ("hnsw", {"m": 16, "ef_search": 80})  # unset ef_construction: the builder's
    assert call["min_recall"] == 0.95 and call["use_interests"] is True


def test_reindex_keep_and_min_recall_come_from_the_index_settings(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import index.publish

    manifest = SimpleNamespace(
        kind="flat", params={}, recall_at_50=None, build_seconds=0.1, us_per_user=None, selection_seconds=None,
        candidates=None,
    )  # fmt: skip
    done = SimpleNamespace(index_version="v2", previous="v1", built=True, manifest=manifest, pruned=[], seconds=0.2)
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(index.publish, "reindex", recorder(calls, done))
    os.environ["REMI_INDEX_KEEP"] = "5"
    result = runner.invoke(app, ["reindex", "--artifacts", "a", "--root", "r", "--min-recall", "0.9"])
    assert result.exit_code == 0 and json.loads(result.stdout)["current"] == "v2", result.output
    [call] = calls
    assert (call["args"][2:], call["keep"], call["min_recall"]) == (("auto", {}), 5, 0.9)
    result = runner.invoke(app, ["reindex", "--artifacts", "a", "--root", "r", "--kind", "annoy"])
    assert isinstance(result.exception, RemiError) and "invalid setting kind" in str(result.exception)


# ---------------------------------------------------------------------------- remi train


def test_train_flag_beats_config_file_beats_env_beats_default(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import training.run_folder
    import training.trainer

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(training.run_folder, "check_run_folder", lambda out, force: None)
    monkeypatch.setattr(training.trainer, "train", recorder(calls, None))  # None: a non-zero rank, prints nothing
    (tmp_path / "cfg.json").write_text(json.dumps({"train": {"dim": 24, "seq_len": 30}}))
    monkeypatch.chdir(tmp_path)
    Path("d.csv").write_text("user_id,item_id,timestamp\n")  # train checks its data path before it starts
    os.environ.update({"REMI_TRAIN_DIM": "16", "REMI_TRAIN_LR": "0.01", "REMI_TRAIN_SEQ_LEN": "10"})
    args = ["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "cfg.json"), "--data", "d.csv"]
    result = runner.invoke(app, [*args, "--seq-len", "40", "--ihn-detach"])
    assert result.exit_code == 0, result.output
    cfg = calls[0]["args"][0]
    assert (cfg.seq_len, cfg.dim, cfg.lr, cfg.batch_size) == (40, 24, 0.01, 128)
    assert cfg.ihn_detach is True and cfg.data == "d.csv"
