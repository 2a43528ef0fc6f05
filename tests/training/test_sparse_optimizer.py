"""``--optimizer sparse-adam``: SparseAdam on the item table, dense Adam on the rest
(docs/results.md#large-catalogues---optimizer-rowwise-adagrad).

Only the rows a batch touches change; it still learns; the default ``adam`` is the code path it
always was; two CPU processes train as one; the combinations it cannot honour are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from remi.contract import ItemVocabulary
from remi.errors import RemiError
from tests.conftest import AUTHORS_REMI
from tests.training.test_distributed import remi_train
from training.config import TrainConfig, load_config
from training.evaluate import evaluate
from training.models import MultiInterestModel, build_model
from training.optimizers import build_optimizers
from training.prepare import prepare
from training.scheme import TrainBatch, TrainingScheme
from training.trainer import seed_everything, train

N_ITEMS, L, D = 200, 6, 8


def _batch() -> tuple[TrainBatch, torch.Tensor]:
    """Two users with short histories (padding after them), two targets, four negatives."""
    pad = ItemVocabulary.PADDING
    history = torch.tensor([[3, 5, 7, pad, pad, pad], [11, 13, 15, 17, pad, pad]])
    mask = history != pad
    return TrainBatch(history, mask, torch.tensor([21, 23])), torch.tensor([31, 33, 35, 37])


def _step(cfg: TrainConfig, model_name: str = "comirec-sa", sparse: bool | None = None) -> MultiInterestModel:
    torch.manual_seed(0)
    sparse_items = cfg.optimizer == "sparse-adam" if sparse is None else sparse
    model = build_model(model_name, N_ITEMS, D, 2, L, sparse_items)
    optim = build_optimizers(model, cfg)
    batch, negatives = _batch()
    loss = TrainingScheme.from_config(cfg).step_loss(model, batch, negatives, step=0, with_scores=True).total
    optim.zero_grad()
    loss.backward()
    optim.step()
    return model


@pytest.mark.parametrize("model_name", ["comirec-sa", "comirec-dr", "mind", "dnn"])
@pytest.mark.parametrize("scheme", ["sampled", "remi"])
def test_one_step_changes_exactly_the_rows_the_batch_touches(model_name: str, scheme: str) -> None:
    cfg = TrainConfig(
        optimizer="sparse-adam", scheme=scheme, interests=2, seq_len=L, dim=D, **{**AUTHORS_REMI, "emb_l2": 0.01}
    )
    torch.manual_seed(0)
    before = build_model(model_name, N_ITEMS, D, 2, L).item_emb.weight.detach().clone()
    after = _step(cfg, model_name).item_emb.weight.detach()
    batch, negatives = _batch()
    touched = torch.cat([batch.history[batch.mask], batch.target, negatives]).unique()
    changed = (after != before).any(-1).nonzero().squeeze(1)
    assert changed.tolist() == touched.tolist()  # the padding row and every other item stay put


def test_the_item_gradient_is_sparse_with_only_the_batch_rows() -> None:
    cfg = TrainConfig(optimizer="sparse-adam", scheme="remi", interests=2, seq_len=L, dim=D, **AUTHORS_REMI)
    model = build_model("comirec-sa", N_ITEMS, D, 2, L, sparse_items=True)
    batch, negatives = _batch()
    TrainingScheme.from_config(cfg).step_loss(model, batch, negatives, step=0, with_scores=True).total.backward()
    grad = model.item_emb.weight.grad
    assert grad is not None and grad.is_sparse
    assert len(grad.coalesce().indices()[0]) == 3 + 4 + 2 + 4  # history + targets + negatives, no padding


def test_default_optimizer_is_the_dense_fused_adam_it_always_was() -> None:
    """Bit for bit: build_optimizers("adam") against the optimiser the trainer used to create."""
    cfg = TrainConfig(scheme="sampled", interests=2, seq_len=L, dim=D, lr=0.01, weight_decay=0.001)
    assert cfg.optimizer == "adam"
    new = _step(cfg)
    torch.manual_seed(0)
    old = build_model("comirec-sa", N_ITEMS, D, 2, L)
    optim = torch.optim.Adam(old.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    batch, negatives = _batch()
    loss = TrainingScheme.from_config(cfg).step_loss(old, batch, negatives, step=0, with_scores=True).total
    optim.zero_grad(set_to_none=True)
    loss.backward()
    optim.step()
    assert not new.item_emb.weight.is_sparse
    for (name, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_adam_explicit_and_default_train_identically(synth_csv: Path, tmp_path: Path) -> None:
    small = {
        "scheme": "sampled",
        "max_steps": 40,
        "eval_every": 40,
        "batch_size": 32,
        "negatives": 64,
        "dim": 8,
        "seed": 2,
    }
    default = train(TrainConfig(data=str(synth_csv), **small), tmp_path / "a", show_progress=False)
    explicit = train(TrainConfig(data=str(synth_csv), optimizer="adam", **small), tmp_path / "b", show_progress=False)
    assert default is not None and explicit is not None
    assert default.valid == explicit.valid and default.test == explicit.test
    a, b = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("a", "b"))
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_short_sparse_adam_training_beats_the_untrained_model(synth_csv: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(synth_csv), optimizer="sparse-adam", scheme="remi", max_steps=600, eval_every=300,
                      batch_size=64, negatives=256, dim=16, seed=1, **AUTHORS_REMI)  # fmt: skip
    prep = prepare(cfg)
    result = train(cfg, tmp_path / "run", prepared=prep, show_progress=False)
    assert result is not None
    seed_everything(cfg.seed)
    untrained = build_model(cfg.model, prep.data.n_items, cfg.dim, cfg.interests, cfg.seq_len)
    before, _, _ = evaluate(untrained, prep.valid, ns=(50,))
    assert result.valid["recall@50"] > 1.5 * before["recall@50"]
    assert result.config.optimizer == "sparse-adam"


def test_weight_decay_is_refused_with_sparse_adam() -> None:
    with pytest.raises(ValidationError, match="weight_decay"):
        TrainConfig(optimizer="sparse-adam", weight_decay=1e-4)
    with pytest.raises(RemiError, match="weight_decay"):
        load_config(None, optimizer="sparse-adam", weight_decay=1e-4)
    TrainConfig(optimizer="sparse-adam", emb_l2=1e-4)  # the item-norm penalty is the one that applies


@pytest.mark.parametrize("optimizer", ["sparse-adam", "rowwise-adagrad"])
def test_several_gpu_processes_are_refused_with_a_sparse_optimizer(
    synth_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    """nccl has no sparse all-reduce; refused before joining any group."""
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets
    cfg = TrainConfig(data=str(synth_csv), optimizer=optimizer, device="cuda")
    with pytest.raises(RemiError, match=f"--optimizer {optimizer} with --nproc"):
        train(cfg, tmp_path / "run", show_progress=False)


@pytest.mark.parametrize("optimizer", ["sparse-adam", "rowwise-adagrad"])
def test_two_cpu_processes_match_one_with_a_sparse_optimizer(synth_csv: Path, tmp_path: Path, optimizer: str) -> None:
    """DDP all-reduces the sparse item gradients over gloo (the optimiser sums what it gets per
    row): the same training as one process."""
    single = remi_train(synth_csv, tmp_path / "single", "--optimizer", optimizer, "--threads", "1")
    assert single.returncode == 0, single.stderr[-2000:]
    double = remi_train(synth_csv, tmp_path / "double", "--optimizer", optimizer, "--nproc", "2")
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("single", "double"))
    assert two["processes"] == 2
    for key, value in one["valid"].items():
        assert two["valid"][key] == pytest.approx(value, abs=2e-3), key


def test_sparse_adam_needs_a_sparse_item_table() -> None:
    with pytest.raises(ValueError, match="sparse_items"):
        build_optimizers(build_model("dnn", N_ITEMS, D, 1, L), TrainConfig(optimizer="sparse-adam"))
