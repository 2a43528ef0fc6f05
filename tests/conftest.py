"""Shared fixtures: small synthetic datasets written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.synth import SynthConfig, write


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """800 users, 1000 items in 50 topics: big enough to learn, small enough to train in seconds."""
    out = tmp_path_factory.mktemp("synth")
    write(SynthConfig(users=800, items=1000, topics=50, min_len=12, max_len=40, seed=7), out)
    return out


@pytest.fixture(scope="session")
def synth_csv(synth_dir: Path) -> Path:
    return synth_dir / "interactions.csv.gz"


SMALL = {"max_steps": 1000, "eval_every": 250, "batch_size": 64, "negatives": 256, "dim": 32, "seed": 1}
