"""The training loop: sample, forward, the scheme's loss, the optimiser step (training.optimizers);
evaluate on valid users every N steps, keep the best checkpoint, stop early; then score the best
model on the test users.

Run directory layout (names in remi.contract; read by ``remi evaluate`` and ``remi export``)::

    RUN_CONFIG      config.json    the TrainConfig plus the data shape (n_items)
    RUN_WEIGHTS     model.pt       best state_dict (load with weights_only=True)
    RUN_ITEM_IDS    item_ids.txt   raw item id of each item index, in index order
    RUN_LOG         metrics.jsonl  one EvalRecord per evaluation during training
    RUN_METRICS     metrics.json   the TrainResult: valid/test metrics, routing, lists, steps, timings, config
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import socket
import time
from pathlib import Path
from typing import IO, cast

import numpy as np
import torch

from remi.contract import RUN_CONFIG, RUN_ITEM_IDS, RUN_LOG, RUN_METRICS, RUN_WEIGHTS, atomic_folder
from remi.errors import RemiError
from training.config import TrainConfig
from training.data import TrainSampler
from training.diagnostics import near_copy_warning
from training.distributed import Ranks
from training.evaluate import evaluate, popularity_metrics
from training.models import MultiInterestModel, model_from_config
from training.optimizers import Optimizers, build_optimizers, lr_factor, uses_sparse_items
from training.prepare import Prepared, prepare
from training.progress import Progress
from training.result import EvalRecord, TrainResult
from training.run_folder import check_run_folder
from training.scheme import LossBreakdown, ScoreStats, TrainBatch, TrainingScheme, UniformNegatives

log = logging.getLogger("remi.train")


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    prepared: Prepared | None = None,
    show_progress: bool | None = None,
    force: bool = False,
) -> TrainResult | None:
    """Trains, checkpoints the best valid model, writes the run directory and returns its result.

    The run directory appears only when training succeeds: everything is written into a hidden
    sibling folder that is renamed into place at the end, so an exception, bad data or Ctrl-C
    leaves no empty or half-written run behind (and a replaced run stays intact until then). An
    existing folder with anything in it is refused unless ``force`` (the user's files are never
    removed behind their back); an empty one is taken over. The data paths are stored absolute, so
    ``remi evaluate``/``export`` work from any directory.

    Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel over batch shards
    (training.distributed). The sampled-softmax/IHN terms (per user, over the shared negatives)
    and RR (per user) are means over users, so DDP's gradient average equals the single-process
    gradient of the global batch. Rank 0 alone evaluates, checkpoints, logs and writes the run
    directory; the other ranks return None.
    """
    out = Path(out_dir)
    check_run_folder(out, force)
    cfg = cfg.model_copy(update={"data": _absolute(cfg.data), "split_file": _absolute(cfg.split_file)})
    if uses_sparse_items(cfg) and Ranks.requested_world() > 1 and cfg.device.startswith("cuda"):
        # DDP all-reduces the sparse item gradients with gloo (CPU); nccl has no sparse all-reduce
        raise RemiError(
            f"--optimizer {cfg.optimizer} with --nproc trains on CPU (gloo) only; use --optimizer adam on GPUs"
        )
    ranks = Ranks.join(cfg.device)
    if cfg.batch_size % ranks.world:
        raise RemiError(f"--batch-size {cfg.batch_size} must divide evenly over {ranks.world} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prep = prepared or prepare(cfg)
    if ranks.world > 1:
        ranks.check_same("the prepared data", _data_fingerprint(prep))
    if not ranks.lead:  # only rank 0 writes the run directory
        return _train_into(cfg, out, prep, ranks, show_progress)
    with atomic_folder(out, replace=True) as work:
        return _train_into(cfg, work, prep, ranks, show_progress)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def _data_fingerprint(prep: Prepared) -> str:
    """The data's shape (readable in an error) and a hash of the encoded rows and the train users.

    Ranks on different nodes each prepare their own copy (training.distributed.Ranks.check_same).
    """
    digest = hashlib.blake2b(digest_size=8)
    for part in (prep.data.items, prep.data.offsets, prep.split.train):
        digest.update(np.ascontiguousarray(part).data)
    shape = prep.shape()
    return f"{shape.users} users, {shape.items} items, {shape.interactions} rows (hash {digest.hexdigest()})"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _SchemeStep(torch.nn.Module):
    """The model plus the scheme's loss as one forward, so DistributedDataParallel's hooks see the step."""

    def __init__(self, model: MultiInterestModel, scheme: TrainingScheme):
        super().__init__()
        self.model, self.scheme = model, scheme

    def forward(self, batch: TrainBatch, negatives: torch.Tensor, step: int, with_scores: bool) -> LossBreakdown:
        return self.scheme.step_loss(self.model, batch, negatives, step, with_scores)


class _Batches:
    """This rank's shard of each global batch, with the batch's shared negatives, on the device."""

    def __init__(self, cfg: TrainConfig, prep: Prepared, ranks: Ranks, device: torch.device):
        self.sampler = TrainSampler(
            prep.data, prep.split.train, cfg.seq_len, cfg.min_history, seed=cfg.seed, target_window=cfg.target_window
        )
        self.negatives = UniformNegatives(prep.data.vocabulary, cfg.negatives, seed=cfg.seed)
        self.batch_size, self.shard, self.device = cfg.batch_size, ranks.shard(cfg.batch_size), device

    def next(self) -> tuple[TrainBatch, torch.Tensor]:
        history, mask, target = (part[self.shard] for part in self.sampler.sample(self.batch_size))
        negatives = self.negatives.sample()
        batch = TrainBatch(*(torch.from_numpy(part).to(self.device) for part in (history, mask, target)))
        return batch, negatives.to(self.device)


class _RunningLoss:
    """Loss and RR summed since the last evaluation; refuses to go on once the loss is not finite."""

    def __init__(self) -> None:
        self.loss_sum, self.rr_sum, self.count = 0.0, 0.0, 0
        self.scores: ScoreStats | None = None  # from the last batch that computed them

    def add(self, loss: LossBreakdown, step: int) -> None:
        self.loss_sum += loss.total.item()
        self.rr_sum += loss.rr.item()
        self.count += 1
        self.scores = loss.scores or self.scores
        if not math.isfinite(self.loss_sum):
            raise RemiError(f"training diverged: loss is {loss.total.item()} at step {step}; lower --lr or --beta")

    @property
    def mean(self) -> float:
        return self.loss_sum / self.count

    @property
    def rr_mean(self) -> float:
        return self.rr_sum / self.count

    def reset(self) -> None:
        self.loss_sum, self.rr_sum, self.count = 0.0, 0.0, 0


class _BestCheckpoint:
    """Model selection on valid recall@50 (docs/remi.md A.4) and the patience count of early stopping."""

    def __init__(self, model: MultiInterestModel, path: Path, patience: int):
        self.model, self.path, self.patience = model, path, patience
        self.recall, self.step, self.bad_evals = -1.0, 0, 0
        self.state = copy.deepcopy(model.state_dict())

    def offer(self, step: int, recall: float) -> None:
        """Keeps (and saves) the model if ``recall`` beats the best so far."""
        if recall > self.recall:
            self.recall, self.step, self.bad_evals = recall, step, 0
            self.state = copy.deepcopy(self.model.state_dict())
            _save_atomic(self.state, self.path)
        else:
            self.bad_evals += 1

    @property
    def patience_spent(self) -> bool:
        return self.bad_evals >= self.patience


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write-then-rename, so a crash mid-save never leaves a truncated checkpoint behind.

    Through a Python file: a full disk then raises an OSError (ENOSPC) that the torch error keeps as
    its context, which the CLI reports as one line; torch's own file writer loses the errno.
    """
    tmp = path.with_suffix(".tmp")
    try:
        with tmp.open("wb") as fh:
            torch.save(state, fh)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


def _train_into(
    cfg: TrainConfig, out: Path, prep: Prepared, ranks: Ranks, show_progress: bool | None
) -> TrainResult | None:
    """The training loop proper, writing the run files into ``out`` (rank 0 only)."""
    seed_everything(cfg.seed)
    device = ranks.device(cfg.device)
    sparse_items = uses_sparse_items(cfg)
    model = model_from_config(cfg, prep.data.n_items, sparse_items).to(device)
    step_module = ranks.wrap(_SchemeStep(model, TrainingScheme.from_config(cfg)), device)
    optim = build_optimizers(model, cfg)
    batches = _Batches(cfg, prep, ranks, device)
    if ranks.lead:
        _write_run_inputs(out, cfg, prep)
    _log_start(cfg, prep, ranks)

    best = _BestCheckpoint(model, out / RUN_WEIGHTS, cfg.patience)
    running, step, train_seconds = _RunningLoss(), 0, 0.0
    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else float("inf")
    progress = Progress(cfg.max_steps, f"{cfg.model}/{cfg.scheme}", ranks.lead, show_progress, cfg.progress_seconds)
    with _open_log(out, ranks.lead) as log_fh:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            if cfg.lr_schedule != "constant":
                optim.scale_lr(lr_factor(cfg, step))
            loss = _optimizer_step(step_module, optim, batches, step, (step + 1) % cfg.eval_every == 0)
            train_seconds += time.perf_counter() - t0
            step += 1
            running.add(loss, step)
            progress.step(step, running.mean)
            # Every rank reaches the same ranks.agree calls in the same order: the time budget each
            # step (when set), early stopping at each evaluation. Rank 0 decides both.
            out_of_time = ranks.agree(time.monotonic() >= deadline) if cfg.max_minutes else False
            if step % cfg.eval_every == 0 or step == cfg.max_steps or out_of_time:
                if ranks.lead:
                    record = _evaluate(model, prep, cfg, step, train_seconds, running)
                    _keep(record, log_fh, progress, best)
                if ranks.agree(best.patience_spent):
                    log.info("early stop", extra={"step": step, "best_step": best.step})
                    break
            if out_of_time:
                log.info("time budget reached", extra={"step": step, "max_minutes": cfg.max_minutes})
                break
    progress.close()
    if not ranks.lead:
        ranks.finish()
        return None
    model.load_state_dict(best.state)
    result = _final_result(model, prep, cfg, step, best.step, train_seconds, ranks.world)
    (out / RUN_METRICS).write_text(json.dumps(result.to_dict(), indent=2))
    ranks.finish()
    log.info("train done", extra={"steps": step, "best_step": best.step, "test_recall@50": result.test["recall@50"]})
    warning = near_copy_warning(result.routing, result.lists)
    if warning:
        log.warning(warning, extra={"interest_similarity": result.routing["interest_similarity"]})
    return result


def _optimizer_step(
    step_module: torch.nn.Module, optim: Optimizers, batches: _Batches, step: int, with_scores: bool
) -> LossBreakdown:
    """One optimiser step on the next batch; returns the batch's loss breakdown."""
    batch, negatives = batches.next()
    loss = step_module(batch, negatives, step, with_scores)  # a LossBreakdown; Module calls are untyped
    optim.zero_grad(set_to_none=True)
    loss.total.backward()
    optim.step()
    return cast(LossBreakdown, loss)


def _keep(record: EvalRecord, log_fh: IO[str], progress: Progress, best: _BestCheckpoint) -> None:
    """Logs an evaluation (RUN_LOG, progress) and offers its model as the best checkpoint."""
    log_fh.write(json.dumps(record.to_dict()) + "\n")
    log_fh.flush()
    progress.evaluated(record.step, record.valid["recall@50"], best.recall)
    best.offer(record.step, record.valid["recall@50"])


def _write_run_inputs(out: Path, cfg: TrainConfig, prep: Prepared) -> None:
    """The item ids and the config, written first so even a run cut short says what it trained on."""
    (out / RUN_ITEM_IDS).write_text("\n".join(map(str, prep.data.item_ids)) + "\n")
    saved_cfg = {**cfg.model_dump(), "n_items": prep.data.n_items, "cwd": os.getcwd()}
    (out / RUN_CONFIG).write_text(json.dumps(saved_cfg, indent=2))


def _log_start(cfg: TrainConfig, prep: Prepared, ranks: Ranks) -> None:
    log.info(
        "train start",
        extra={
            "model": cfg.model,
            "scheme": cfg.scheme,
            "users": prep.data.n_users,
            "items": prep.data.n_items,
            "train_users": len(prep.split.train),
            "threads": torch.get_num_threads(),
            "processes": ranks.world,
            "rank": ranks.rank,
            "local_rank": ranks.local,
            "host": socket.gethostname(),
        },
    )


def _open_log(out: Path, lead: bool) -> IO[str]:
    """RUN_LOG on rank 0; a sink elsewhere, so the loop writes without asking which rank it is."""
    return (out / RUN_LOG).open("w") if lead else open(os.devnull, "w")  # noqa: SIM115


def _evaluate(
    model: MultiInterestModel, prep: Prepared, cfg: TrainConfig, step: int, train_seconds: float, running: _RunningLoss
) -> EvalRecord:
    """Valid recall@50 and routing now, with the training loss since the last evaluation (then reset)."""
    search = cfg.eval_search(prep.data.n_items)  # exact, or an approximate index at catalogue scale
    metrics, routing, lists = evaluate(model, prep.valid, ns=(50,), device=cfg.device, search=search)
    record = EvalRecord(step, train_seconds, running.mean, running.rr_mean, running.scores, metrics, routing, lists)
    running.reset()
    return record


def _final_result(
    model: MultiInterestModel,
    prep: Prepared,
    cfg: TrainConfig,
    steps: int,
    best_step: int,
    train_seconds: float,
    world: int,
) -> TrainResult:
    """The kept model scored on valid and test at 20 and 50, beside the popularity baseline."""
    valid_metrics, _, valid_lists = evaluate(model, prep.valid, device=cfg.device)
    test_metrics, routing, lists = evaluate(model, prep.test, device=cfg.device)
    return TrainResult(
        valid=valid_metrics,
        test=test_metrics,
        routing=routing,
        lists=lists,
        valid_lists=valid_lists,
        popularity_test=popularity_metrics(prep.data.item_popularity(prep.split.train), prep.test),
        steps=steps,
        best_step=best_step,
        train_seconds=round(train_seconds, 3),
        seconds_per_1k_steps=round(1000 * train_seconds / max(steps, 1), 3),
        data=prep.shape(),
        config=cfg,
        processes=world,
    )
