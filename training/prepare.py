"""The data a run needs, loaded once: encoded interactions, the user split and the evaluation cuts."""

from __future__ import annotations

import time
from dataclasses import dataclass

from remi.errors import RemiError
from training.config import TrainConfig
from training.data import EvalSet, Interactions, UserSplit, eval_set, split_users
from training.prep_engine import PrepEngine
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


def prepare(cfg: TrainConfig, timings: dict[str, float] | None = None) -> Prepared:
    """Loads, filters and splits the data as the config says (out of core: training.prep_engine).

    ``timings``, when given, receives seconds per stage (the data_prep benchmark reads them).
    """
    with PrepEngine(memory_limit_gb=cfg.prep_memory_gb) as engine:
        data = engine.encode(cfg.data, min_count=cfg.min_count, iterative=not cfg.kcore_single_pass)
        started = time.perf_counter()
        split = (
            engine.read_split_file(cfg.split_file, data) if cfg.split_file else split_users(data, seed=cfg.split_seed)
        )
        valid = eval_set(data, split.valid, cfg.seq_len)
        test = eval_set(data, split.test, cfg.seq_len)
        if timings is not None:
            timings.update(engine.timings)
            timings["split + eval cut"] = time.perf_counter() - started
    if len(valid.users) == 0 or len(test.users) == 0:
        raise RemiError("dataset too small to split: no valid or test user has a history and a ground truth")
    return Prepared(data, split, valid, test)
