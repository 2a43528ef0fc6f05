"""The training loop: sample, forward, REMI loss, Adam; evaluate on valid users every N steps,
keep the best checkpoint, stop early; then score the best model on the test users.

Run directory layout (read by ``remi evaluate`` and, later, ``remi export``)::

    config.json     the TrainConfig plus the data shape (n_items)
    model.pt        best state_dict (load with weights_only=True)
    item_ids.txt    raw item id of item index i on line i (line 1 = index 1)
    metrics.jsonl   one line per evaluation during training
    metrics.json    final valid/test metrics, routing diagnostics, steps, timings, config
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from remi.contract import atomic_folder
from remi.errors import RemiError
from training.config import TrainConfig
from training.data import (
    EvalSet,
    Interactions,
    TrainSampler,
    UserSplit,
    encode,
    eval_set,
    read_interactions,
    read_split_file,
    split_users,
)
from training.evaluate import evaluate, popularity_metrics
from training.losses import hard_readout, ihn_loss, routing_regularization, weighting_scores
from training.models import MultiInterestModel, build_model
from training.run_folder import check_run_folder

log = logging.getLogger("remi.train")

CONFIG_FILE, WEIGHTS_FILE, ITEMS_FILE = "config.json", "model.pt", "item_ids.txt"
LOG_FILE, METRICS_FILE = "metrics.jsonl", "metrics.json"


@dataclass(frozen=True)
class Prepared:
    """Encoded data, user split and the evaluation cuts a run needs."""

    data: Interactions
    split: UserSplit
    valid: EvalSet
    test: EvalSet


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def beta_at(cfg: TrainConfig, step: int) -> float:
    """IHN hardness at a step: linear warm-up from 0 over ``ihn_warmup`` steps, then constant."""
    beta = cfg.effective_beta
    if cfg.ihn_warmup and step < cfg.ihn_warmup:
        return beta * step / cfg.ihn_warmup
    return beta


def training_loss(
    model: MultiInterestModel,
    cfg: TrainConfig,
    history: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    negatives: torch.Tensor,
    beta: float,
    stats: dict[str, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of the configured scheme: returns (total loss, the RR term before λ).

    If ``stats`` is given it is filled with score-scale diagnostics: mean positive logit, spread
    of the negative logits, the effective number of negatives the IHN weights sit on
    (exp entropy; M when uniform) and the mean item-embedding norm.
    """
    b_sz, length = history.shape
    emb = model.item_emb(torch.cat([history.reshape(-1), target, negatives]))  # one lookup, one grad buffer
    h = emb[: b_sz * length].view(b_sz, length, -1) * mask.unsqueeze(-1).to(emb.dtype)  # (B, L, d)
    target_emb = emb[b_sz * length : b_sz * (length + 1)]  # (B, d)
    neg_emb = emb[b_sz * (length + 1) :]  # (M, d)
    interests, routing = model.from_embeddings(h, mask)  # (B, K, d), (B, K, L)
    user = hard_readout(interests, target_emb)  # (B, d)
    pos_logit = (user * target_emb).sum(-1)  # (B,)
    neg_logits = user @ neg_emb.T  # (B, M)
    weights = None if beta == 0 else weighting_scores(cfg.ihn_scores, user, neg_emb, neg_logits)
    valid = negatives.unsqueeze(0) != target.unsqueeze(1) if cfg.remove_accidental_hits else None
    loss = ihn_loss(pos_logit, neg_logits, beta, weights, valid, cfg.ihn_detach)
    rr = torch.zeros((), dtype=loss.dtype)
    if cfg.effective_lam > 0:
        rr = routing_regularization(routing, mask, model.dim, cfg.rr_norm)
        loss = loss + cfg.effective_lam * rr
    if cfg.emb_l2 > 0:
        # Scores grow with the norms during training until the softmax is over-confident and
        # valid recall decays; penalising the norms of the vectors this batch uses curbs that.
        norms = torch.cat([(emb[b_sz * length :] ** 2).sum(-1), (user**2).sum(-1)])
        loss = loss + cfg.emb_l2 * norms.mean()
    if stats is not None:  # diagnostics of the score scale behind the IHN weights (the decay study)
        with torch.no_grad():
            stats["pos_logit"] = pos_logit.mean().item()
            stats["neg_logit_std"] = neg_logits.std(-1).mean().item()
            log_w = torch.log_softmax(beta * (neg_logits if weights is None else weights), -1)
            stats["ihn_effective_negatives"] = torch.exp(-(log_w.exp() * log_w).sum(-1)).mean().item()
            stats["item_norm"] = model.item_emb.weight[1:].norm(dim=-1).mean().item()
    return loss, rr


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write-then-rename, so a crash mid-save never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


class _LossModule(torch.nn.Module):
    """The model plus its loss as one forward, so DistributedDataParallel's hooks see the step."""

    def __init__(self, model: MultiInterestModel, cfg: TrainConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(
        self,
        history: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor,
        negatives: torch.Tensor,
        beta: float,
        stats: dict[str, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return training_loss(self.model, self.cfg, history, mask, target, negatives, beta, stats)


def distributed_context(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes (gloo on CPU, nccl on GPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _agree(flag: bool, world: int) -> bool:
    """Rank 0 decides (early stop, time budget); every rank follows, so none waits forever."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([int(flag)])
    dist.broadcast(value, src=0)
    return bool(value.item())


class ProgressLines:
    """Progress as plain lines on stderr every ``every`` seconds (0 = never), and as log records.

    The stand-in for the progress bar when stderr is not a terminal: step, mean loss since the
    last line, the last valid recall@50 and steps/s, so a redirected log shows a run is alive.
    """

    def __init__(self, total: int, every: float):
        self.total, self.every = total, every
        self.started = self.last = time.monotonic()
        self.last_step = 0
        self.valid_recall: tuple[int, float] | None = None

    def step(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if not self.every or now - self.last < self.every:
            return
        rate = (step - self.last_step) / (now - self.last)
        self.last, self.last_step = now, step
        recall = f"{self.valid_recall[1]:.4f} (step {self.valid_recall[0]})" if self.valid_recall else "n/a"
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        print(
            f"train step {step}/{self.total}  loss {loss:.4f}  valid recall@50 {recall}  {rate:.1f} steps/s"
            f"  elapsed {now - self.started:.0f} s  eta {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        log.info(
            "train progress",
            extra={
                "step": step,
                "max_steps": self.total,
                "loss": round(loss, 6),
                "valid_recall@50": self.valid_recall[1] if self.valid_recall else None,
                "steps_per_second": round(rate, 2),
                "elapsed_seconds": round(now - self.started, 1),
            },
        )


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    prepared: Prepared | None = None,
    show_progress: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Trains, checkpoints the best valid model, writes the run directory and returns metrics.json.

    The run directory appears only when training succeeds: everything is written into a hidden
    sibling folder that is renamed into place at the end, so an exception, bad data or Ctrl-C
    leaves no empty or half-written run behind (and a replaced run stays intact until then). An
    existing folder with anything in it is refused unless ``force`` (the user's files are never
    removed behind their back); an empty one is taken over. The data paths are stored absolute, so
    ``remi evaluate``/``export`` work from any directory.

    Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel. Every rank draws the
    same global batch and the same shared negatives from the same seeded generators and keeps
    its 1/N slice of the users, so the ranks' shards are disjoint and together are exactly the
    single-process batch; the sampled-softmax/IHN terms (per user, over the shared negatives) and
    RR (per user) are means over users, so DDP's gradient average equals the single-process
    gradient of the global batch. Rank 0 alone evaluates, checkpoints, logs and writes the run
    directory; the other ranks return an empty dict.
    """
    out = Path(out_dir)
    check_run_folder(out, force)
    cfg = cfg.model_copy(update={"data": _absolute(cfg.data), "split_file": _absolute(cfg.split_file)})
    rank, world = distributed_context(cfg.device)
    if cfg.batch_size % world:
        raise RemiError(f"--batch-size {cfg.batch_size} must divide evenly over {world} processes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    prep = prepared or prepare(cfg)
    if rank != 0:  # only rank 0 writes the run directory
        return _train_into(cfg, out, prep, rank, world, show_progress)
    with atomic_folder(out, replace=True) as work:
        return _train_into(cfg, work, prep, rank, world, show_progress)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def _train_into(
    cfg: TrainConfig, out: Path, prep: Prepared, rank: int, world: int, show_progress: bool | None
) -> dict[str, Any]:
    """The training loop proper, writing the run files into ``out`` (rank 0 only)."""
    seed_everything(cfg.seed)
    device = torch.device(cfg.device if world == 1 or not cfg.device.startswith("cuda") else f"cuda:{rank}")
    model = build_model(cfg.model, prep.data.n_items, cfg.dim, cfg.interests, cfg.seq_len).to(device)
    step_module: torch.nn.Module = _LossModule(model, cfg)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        step_module = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    # fused Adam: one kernel over all parameters, about 2x faster per step on CPU than foreach here
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sampler = TrainSampler(prep.data, prep.split.train, cfg.seq_len, cfg.min_history, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    shard = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    lead = rank == 0

    if lead:
        (out / ITEMS_FILE).write_text("\n".join(map(str, prep.data.item_ids)) + "\n")
        saved_cfg = {**cfg.model_dump(), "n_items": prep.data.n_items, "cwd": os.getcwd()}
        (out / CONFIG_FILE).write_text(json.dumps(saved_cfg, indent=2))
    log.info(
        "train start",
        extra={
            "model": cfg.model,
            "scheme": cfg.scheme,
            "users": prep.data.n_users,
            "items": prep.data.n_items,
            "train_users": len(prep.split.train),
            "threads": torch.get_num_threads(),
            "processes": world,
        },
    )

    best_recall, best_step, best_state, bad_evals = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    train_seconds, loss_sum, rr_sum, loss_n, step = 0.0, 0.0, 0.0, 0, 0
    stats: dict[str, float] = {}
    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else float("inf")
    show_bar = lead and (sys.stderr.isatty() if show_progress is None else show_progress)
    desc = f"{cfg.model}/{cfg.scheme}"
    bar = tqdm(total=cfg.max_steps, desc=desc, unit="step", disable=not show_bar, mininterval=1.0)
    # Without a bar (output redirected, a job's log) a long run would print nothing for hours.
    lines = ProgressLines(cfg.max_steps, cfg.progress_seconds if lead and not show_bar else 0.0)
    log_fh = (out / LOG_FILE).open("w") if lead else open(os.devnull, "w")  # noqa: SIM115
    with log_fh:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            hist, mask, target = sampler.sample(cfg.batch_size)
            hist, mask, target = hist[shard], mask[shard], target[shard]
            negatives = torch.randint(1, prep.data.n_items + 1, (cfg.negatives,), generator=gen)
            loss, rr = step_module(
                torch.from_numpy(hist).to(device),
                torch.from_numpy(mask).to(device),
                torch.from_numpy(target).to(device),
                negatives.to(device),
                beta_at(cfg, step),
                stats if (step + 1) % cfg.eval_every == 0 else None,
            )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            train_seconds += time.perf_counter() - t0
            step += 1
            loss_sum += loss.item()
            rr_sum += rr.item()
            loss_n += 1
            bar.update(1)
            lines.step(step, loss_sum / loss_n)
            if not np.isfinite(loss_sum):
                raise RemiError(f"training diverged: loss is {loss.item()} at step {step}; lower --lr or --beta")
            out_of_time = time.monotonic() >= deadline
            if cfg.max_minutes and world > 1:
                out_of_time = _agree(out_of_time, world)
            if (step % cfg.eval_every == 0 or step == cfg.max_steps or out_of_time) and not lead:
                if _agree(False, world):  # rank 0 evaluates meanwhile and says whether to stop
                    break
            elif step % cfg.eval_every == 0 or step == cfg.max_steps or out_of_time:
                metrics, routing = evaluate(model, prep.valid, ns=(50,), device=cfg.device)
                record = {
                    "step": step,
                    "train_seconds": round(train_seconds, 3),
                    "loss": loss_sum / loss_n,
                    "rr": rr_sum / loss_n,
                    "scores": dict(stats),
                    "valid": metrics,
                    "routing": routing,
                }
                log_fh.write(json.dumps(record) + "\n")
                log_fh.flush()
                loss_sum = rr_sum = 0.0
                loss_n = 0
                bar.set_postfix(
                    r50=f"{metrics['recall@50']:.4f}", best=f"{max(best_recall, metrics['recall@50'], 0):.4f}"
                )
                lines.valid_recall = (step, metrics["recall@50"])
                if metrics["recall@50"] > best_recall:
                    best_recall, best_step, bad_evals = metrics["recall@50"], step, 0
                    best_state = copy.deepcopy(model.state_dict())
                    _save_atomic(best_state, out / WEIGHTS_FILE)
                else:
                    bad_evals += 1
                stop = _agree(bad_evals >= cfg.patience, world)
                if stop:
                    log.info("early stop", extra={"step": step, "best_step": best_step})
                    break
            if out_of_time:
                log.info("time budget reached", extra={"step": step, "max_minutes": cfg.max_minutes})
                break
    bar.close()
    if not lead:
        _finish_distributed(world)
        return {}
    model.load_state_dict(best_state)
    valid_metrics, _ = evaluate(model, prep.valid, device=cfg.device)
    test_metrics, routing = evaluate(model, prep.test, device=cfg.device)
    result = {
        "valid": valid_metrics,
        "test": test_metrics,
        "routing": routing,
        "popularity_test": popularity_metrics(prep.data.item_popularity(prep.split.train), prep.test),
        "steps": step,
        "best_step": best_step,
        "train_seconds": round(train_seconds, 3),
        "seconds_per_1k_steps": round(1000 * train_seconds / max(step, 1), 3),
        "data": {
            "users": prep.data.n_users,
            "items": prep.data.n_items,
            "interactions": len(prep.data.items),
            "train_users": len(prep.split.train),
            "valid_users": len(prep.valid.users),
            "test_users": len(prep.test.users),
        },
        "config": cfg.model_dump(),
    }
    result["processes"] = world
    (out / METRICS_FILE).write_text(json.dumps(result, indent=2))
    _finish_distributed(world)
    log.info("train done", extra={"steps": step, "best_step": best_step, "test_recall@50": test_metrics["recall@50"]})
    return result


def _finish_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def load_run(run_dir: str | Path) -> tuple[TrainConfig, MultiInterestModel]:
    """Rebuilds the config and the best model of a run directory."""
    run = Path(run_dir)
    cfg_path, weights = run / CONFIG_FILE, run / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights.is_file():
        raise RemiError(f"{run}: not a run directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    saved = json.loads(cfg_path.read_text())
    n_items = saved.pop("n_items")
    trained_in = saved.pop("cwd", None)
    cfg = TrainConfig(**saved)
    cfg = cfg.model_copy(
        update={"data": locate(cfg.data, run, trained_in), "split_file": locate(cfg.split_file, run, trained_in)}
    )
    model = build_model(cfg.model, n_items, cfg.dim, cfg.interests, cfg.seq_len)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # corrupt or mismatched file: one line for the user
        raise RemiError(
            f"{weights}: cannot load checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    return cfg, model


def locate(path: str | None, run: Path, trained_in: str | None) -> str | None:
    """A run's recorded data path made absolute.

    Runs store absolute paths; older ones stored the path as typed, relative to the directory
    training ran in. Such a path is tried from there (when recorded), from the current
    directory, then from the run folder and each folder above it. Unfound, it is returned as is.
    """
    if not path or Path(path).is_absolute():
        return path
    bases = [Path(trained_in)] if trained_in else []
    bases += [Path.cwd(), *run.resolve().parents]
    for base in bases:
        if (base / path).is_file():
            return str((base / path).resolve())
    return path


def require_data(cfg: TrainConfig, run: Path) -> None:
    """A clear error when a run's recorded data file cannot be found (before a bare 'not found')."""
    if cfg.data and not Path(cfg.data).is_file():
        where = "" if Path(cfg.data).is_absolute() else " (relative to where it was trained; tried here and above)"
        raise RemiError(f"{run}: the data file it trained on, {cfg.data}, is not found{where}; pass --data PATH")


def evaluate_run(run_dir: str | Path, data: str | None = None) -> dict[str, Any]:
    """Recomputes valid/test metrics of a run's best checkpoint (optionally on another data path)."""
    cfg, model = load_run(run_dir)
    if data:
        cfg = cfg.model_copy(update={"data": data})
    else:
        require_data(cfg, Path(run_dir))
    prep = prepare(cfg)
    trained_items = (Path(run_dir) / ITEMS_FILE).read_text().split("\n")[: model.n_items]
    if prep.data.n_items != model.n_items or list(prep.data.item_ids) != trained_items:
        raise RemiError(
            f"data has {prep.data.n_items} items after filtering but the model was trained on "
            f"{model.n_items} different or differently ordered items; evaluate on the training data"
        )
    valid_metrics, _ = evaluate(model, prep.valid)
    test_metrics, routing = evaluate(model, prep.test)
    return {"valid": valid_metrics, "test": test_metrics, "routing": routing}
