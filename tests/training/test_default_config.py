"""A bare `remi train` trains the recommended model: the defaults are configs/default.json (issue 12 §1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.config import TrainConfig, load_config
from training.scheme import TrainingScheme

SHIPPED = Path(__file__).parents[2] / "configs" / "default.json"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("REMI_TRAIN_")]:
        monkeypatch.delenv(var)


def test_the_defaults_are_the_shipped_default_config(no_env: None) -> None:
    shipped = json.loads(SHIPPED.read_text())["train"]
    assert shipped, "configs/default.json has no train settings"
    defaults = TrainConfig().model_dump()
    assert {name: defaults[name] for name in shipped} == shipped
    assert load_config(SHIPPED) == TrainConfig()  # training with the file is training with no flag


def test_scheme_sampled_alone_turns_off_every_remi_term(no_env: None) -> None:
    sampled = TrainingScheme.from_config(TrainConfig(scheme="sampled"))
    assert sampled.beta == 0.0 and sampled.lam == 0.0  # the remi defaults of beta and lam do not apply
    assert sampled == TrainingScheme.from_config(TrainConfig(scheme="sampled", beta=1.0, lam=12800.0))
