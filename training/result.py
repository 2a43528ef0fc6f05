"""What a training run reports: one line of RUN_LOG per evaluation, and RUN_METRICS at the end.

Typed here so callers read ``result.test["recall@50"]`` instead of guessing dict keys; ``to_dict``
gives the JSON files' exact content (the same keys, in the same order, that export, the
benchmarks and the tests read).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from training.config import TrainConfig
from training.scheme import ScoreStats

Metrics = dict[str, float]  # "recall@50" -> value, as training.ranking computes them


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation on the valid users during training (a line of RUN_LOG)."""

    step: int
    train_seconds: float
    loss: float  # mean total loss since the previous evaluation
    rr: float  # mean RR term (before λ) since the previous evaluation
    scores: ScoreStats | None  # score-scale diagnostics of the last batch that took them
    valid: Metrics
    routing: Metrics
    lists: Metrics  # coverage, diversity and interest shares of the valid users' lists (docs/remi.md A.5)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "train_seconds": round(self.train_seconds, 3),
            "loss": self.loss,
            "rr": self.rr,
            "scores": asdict(self.scores) if self.scores else {},
            "valid": self.valid,
            "routing": self.routing,
            "lists": self.lists,
        }


@dataclass(frozen=True)
class DataShape:
    """Sizes of the data a run trained and was evaluated on."""

    users: int
    items: int
    interactions: int
    train_users: int
    valid_users: int
    test_users: int


@dataclass(frozen=True)
class TrainResult:
    """The best checkpoint's scores and how the run got there (RUN_METRICS)."""

    valid: Metrics  # at 20 and 50
    test: Metrics
    routing: Metrics  # routing-collapse diagnostics on the test users (docs/remi.md A.5)
    lists: Metrics  # coverage@50, diversity@50, interest shares of the test users' lists (A.5)
    valid_lists: Metrics  # the same on the valid users
    popularity_test: Metrics  # the most-popular baseline on the same test users
    steps: int
    best_step: int  # the step of the checkpoint kept (best valid recall@50)
    train_seconds: float  # time in training steps (not evaluation), rounded to ms
    seconds_per_1k_steps: float
    data: DataShape
    config: TrainConfig
    processes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "test": self.test,
            "routing": self.routing,
            "lists": self.lists,
            "valid_lists": self.valid_lists,
            "popularity_test": self.popularity_test,
            "steps": self.steps,
            "best_step": self.best_step,
            "train_seconds": self.train_seconds,
            "seconds_per_1k_steps": self.seconds_per_1k_steps,
            "data": asdict(self.data),
            "config": self.config.model_dump(),
            "processes": self.processes,
        }
