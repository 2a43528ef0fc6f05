"""The data a run needs, loaded once: encoded interactions, the user split and the evaluation cuts."""

from __future__ import annotations

from dataclasses import dataclass

from remi.errors import RemiError
from training.config import TrainConfig
from training.data import (
    EvalSet,
    Interactions,
    UserSplit,
    encode,
    eval_set,
    read_interactions,
    read_split_file,
    split_users,
)
from training.result import DataShape


@dataclass(frozen=True)
class Prepared:
    """Encoded data, user split and the evaluation cuts a run needs."""

    data: Interactions
    split: UserSplit
    valid: EvalSet
    test: EvalSet

    def shape(self) -> DataShape:
        return DataShape(
            users=self.data.n_users,
            items=self.data.n_items,
            interactions=len(self.data.items),
            train_users=len(self.split.train),
            valid_users=len(self.valid.users),
            test_users=len(self.test.users),
        )


def prepare(cfg: TrainConfig) -> Prepared:
    """Loads, filters and splits the data as the config says."""
    raw = read_interactions(cfg.data)
    data = encode(raw, min_count=cfg.min_count, iterative=not cfg.kcore_single_pass)
    if cfg.split_file:
        split = read_split_file(cfg.split_file, data, raw_users=set(raw["user_id"].unique()))
    else:
        split = split_users(data, seed=cfg.split_seed)
    valid = eval_set(data, split.valid, cfg.seq_len)
    test = eval_set(data, split.test, cfg.seq_len)
    if len(valid.users) == 0 or len(test.users) == 0:
        raise RemiError("dataset too small to split: no valid or test user has a history and a ground truth")
    return Prepared(data, split, valid, test)
