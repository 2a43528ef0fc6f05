"""``--lr-schedule cosine``: the learning rate anneals from ``lr`` to 0 over the step budget.

It is what keeps the default model from decaying by the end of its budget (docs/remi.md#a7-defaults),
so the tests check the rate every step of a real training run actually used, on every
optimiser the trainer builds, and that ``constant`` leaves the rates alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import training.trainer as trainer_module
from tests.conftest import SMALL
from training.config import TrainConfig
from training.models import build_model
from training.optimizers import Optimizers, build_optimizers, lr_factor
from training.trainer import train


def test_cosine_factor_runs_from_one_to_zero_and_never_rises() -> None:
    cfg = TrainConfig(data="x.csv", lr_schedule="cosine", max_steps=1000)
    factors = [lr_factor(cfg, step) for step in range(0, 1001)]
    assert factors[0] == 1.0
    assert factors[500] == pytest.approx(0.5)
    assert factors[1000] == pytest.approx(0.0, abs=1e-12)
    assert all(b <= a for a, b in zip(factors, factors[1:], strict=False))


def test_constant_schedule_is_one_at_every_step() -> None:
    cfg = TrainConfig(data="x.csv", max_steps=1000, lr_schedule="constant")
    assert {lr_factor(cfg, step) for step in (0, 1, 500, 999, 1000)} == {1.0}


@pytest.mark.parametrize("optimizer", ["adam", "sparse-adam", "rowwise-adagrad"])
def test_scaling_reaches_every_optimiser_part_item_lr_included(optimizer: str) -> None:
    cfg = TrainConfig(data="x.csv", optimizer=optimizer, lr=0.004)
    model = build_model("comirec-sa", 50, 8, 2, 5, sparse_items=optimizer != "adam")
    optim = build_optimizers(model, cfg)
    before = [group["lr"] for part in optim.parts for group in part.param_groups]
    optim.scale_lr(0.25)
    after = [group["lr"] for part in optim.parts for group in part.param_groups]
    assert after == pytest.approx([lr * 0.25 for lr in before])
    if optimizer == "rowwise-adagrad":
        assert cfg.table_lr * 0.25 in after  # the item table's own rate follows the schedule too
    optim.scale_lr(1.0)  # the factor applies to the configured rate, not the current one
    assert [group["lr"] for part in optim.parts for group in part.param_groups] == before


def _rates_used(cfg: TrainConfig, out: Path, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Train ``cfg`` and return the first optimiser group's rate at each optimiser step."""
    rates: list[float] = []
    real_step = trainer_module._optimizer_step

    def recording_step(step_module: Any, optim: Optimizers, *args: Any) -> Any:
        rates.append(optim.parts[0].param_groups[0]["lr"])
        return real_step(step_module, optim, *args)

    monkeypatch.setattr(trainer_module, "_optimizer_step", recording_step)
    train(cfg, out, show_progress=False)
    return rates


def test_training_with_cosine_uses_the_annealed_rate_at_every_step(
    synth_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 40
    cfg = TrainConfig(
        data=str(synth_csv), scheme="sampled", lr_schedule="cosine", **{**SMALL, "max_steps": steps, "eval_every": 20}
    )
    rates = _rates_used(cfg, tmp_path / "cosine", monkeypatch)
    expected = [cfg.lr * 0.5 * (1 + math.cos(math.pi * s / steps)) for s in range(steps)]
    assert rates == pytest.approx(expected)
    assert rates[-1] < 0.01 * cfg.lr


def test_training_with_constant_schedule_keeps_the_configured_rate(
    synth_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig(data=str(synth_csv), scheme="sampled", **{**SMALL, "max_steps": 20, "eval_every": 10})
    assert set(_rates_used(cfg, tmp_path / "constant", monkeypatch)) == {cfg.lr}
