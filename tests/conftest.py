"""Shared fixtures: small synthetic datasets written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import markers
from training.synth import SynthConfig, write


def pytest_configure(config: pytest.Config) -> None:
    markers.register(config)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markers.apply(items)  # trains / server / redis, read from the code each test runs (tests/markers.py)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """800 users, 1000 items in 50 topics: big enough to learn, small enough to train in seconds."""
    out = tmp_path_factory.mktemp("synth")
    write(SynthConfig(users=800, items=1000, topics=50, min_len=12, max_len=40, seed=7), out)
    return out


@pytest.fixture(scope="session")
def synth_csv(synth_dir: Path) -> Path:
    return synth_dir / "interactions.csv.gz"


# `remi` as it was before configs/default.json became the default (docs/remi.md#a7-defaults): the
# authors' beta, lambda 12,800 and undetached IHN weights. Tests that trained `remi` with those
# defaults state them.
AUTHORS_REMI = {"beta": 1.0, "lam": 12800.0, "ihn_detach": False, "emb_l2": 0.0, "lr_schedule": "constant"}
SMALL = {"max_steps": 1000, "eval_every": 250, "batch_size": 64, "negatives": 256, "dim": 32, "seed": 1}


@pytest.fixture(scope="session")
def trained_run(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ComiRec-SA run (d = 16): enough for the export, index and service tests."""
    from training.config import TrainConfig
    from training.trainer import train

    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(synth_csv), scheme="remi", **AUTHORS_REMI, max_steps=300, eval_every=150,
                      batch_size=64, negatives=256, dim=16, seed=1)  # fmt: skip
    train(cfg, out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def artifacts_dir(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run exported once per session (tests that damage artifacts copy it first)."""
    from training.export import export_run

    out = tmp_path_factory.mktemp("artifacts") / "art"
    export_run(trained_run, out)
    return out
