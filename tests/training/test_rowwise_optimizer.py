"""``--optimizer rowwise-adagrad``: row-wise Adagrad on the item table
(docs/results.md#large-catalogues---optimizer-rowwise-adagrad).

It changes only the rows a batch touches, equals a written-out reference update (duplicates
summed, one accumulator per row), keeps O(rows) state, trains, runs under --nproc like
sparse-adam, and its settings are validated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from remi.errors import RemiError
from tests.conftest import AUTHORS_REMI
from tests.training.test_sparse_optimizer import N_ITEMS, D, L, _batch, _step
from training.config import ROWWISE_ADAGRAD_LR, TrainConfig, load_config
from training.evaluate import evaluate
from training.models import build_model
from training.optimizers import RowWiseAdagrad, build_optimizers, unique_rows
from training.prepare import prepare
from training.scheme import TrainingScheme
from training.trainer import seed_everything, train


def _reference_rowwise_adagrad(
    table: torch.Tensor, accumulator: torch.Tensor, lookups: torch.Tensor, grads: torch.Tensor, lr: float, eps: float
) -> None:
    """The textbook update, row by row: sum the gradient of each row's lookups, then Adagrad with
    one accumulator per row over the mean square of that summed gradient."""
    for row in lookups.unique().tolist():
        g = grads[lookups == row].sum(0)
        accumulator[row] += (g * g).mean()
        table[row] -= lr * g / (accumulator[row].sqrt() + eps)


def test_rowwise_adagrad_matches_the_reference_update_with_duplicate_rows() -> None:
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(torch.randn(12, 5, generator=gen, dtype=torch.float64))
    expected, acc = table.detach().clone(), torch.full((12,), 0.1, dtype=torch.float64)
    optim = RowWiseAdagrad([table], lr=0.3, eps=1e-8, initial_accumulator=0.1)
    for _ in range(3):  # the accumulator carries over between steps
        lookups = torch.tensor([3, 7, 3, 11, 0, 7, 3])
        grads = torch.randn(len(lookups), 5, generator=gen, dtype=torch.float64)
        table.grad = torch.sparse_coo_tensor(lookups.unsqueeze(0), grads, table.shape)  # uncoalesced, as DDP/embedding
        optim.step()
        _reference_rowwise_adagrad(expected, acc, lookups, grads, lr=0.3, eps=1e-8)
        torch.testing.assert_close(table.detach(), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(optim.state[table]["sum"], acc, rtol=1e-12, atol=1e-12)
    untouched = [r for r in range(12) if r not in (0, 3, 7, 11)]
    assert torch.equal(acc[untouched], torch.full((len(untouched),), 0.1, dtype=torch.float64))


def test_unique_rows_sums_duplicates_and_passes_coalesced_gradients_through() -> None:
    lookups, values = torch.tensor([4, 1, 4]), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    grad = torch.sparse_coo_tensor(lookups.unsqueeze(0), values, (6, 2))
    rows, summed = unique_rows(grad)
    assert rows.tolist() == [1, 4] and summed.tolist() == [[3.0, 4.0], [6.0, 8.0]]
    rows, summed = unique_rows(grad.coalesce())
    assert rows.tolist() == [1, 4] and summed.tolist() == [[3.0, 4.0], [6.0, 8.0]]


@pytest.mark.parametrize("model_name", ["comirec-sa", "comirec-dr", "mind", "dnn"])
@pytest.mark.parametrize("scheme", ["sampled", "remi"])
def test_one_step_changes_exactly_the_rows_the_batch_touches(model_name: str, scheme: str) -> None:
    cfg = TrainConfig(
        optimizer="rowwise-adagrad", scheme=scheme, interests=2, seq_len=L, dim=D, **{**AUTHORS_REMI, "emb_l2": 0.01}
    )
    torch.manual_seed(0)
    before = build_model(model_name, N_ITEMS, D, 2, L).item_emb.weight.detach().clone()
    after = _step(cfg, model_name, sparse=True).item_emb.weight.detach()
    batch, negatives = _batch()
    touched = torch.cat([batch.history[batch.mask], batch.target, negatives]).unique()
    changed = (after != before).any(-1).nonzero().squeeze(1)
    assert changed.tolist() == touched.tolist()  # the padding row and every other item stay put


def test_state_is_one_scalar_per_table_row() -> None:
    cfg = TrainConfig(optimizer="rowwise-adagrad", scheme="sampled", interests=2, seq_len=L, dim=D)
    model = build_model("comirec-sa", N_ITEMS, D, 2, L, sparse_items=True)
    optim = build_optimizers(model, cfg)
    table = model.item_emb.weight
    batch, negatives = _batch()
    TrainingScheme.from_config(cfg).step_loss(model, batch, negatives, step=0).total.backward()
    optim.step()
    items = optim.parts[0]
    assert isinstance(items, RowWiseAdagrad) and items.param_groups[0]["lr"] == ROWWISE_ADAGRAD_LR
    assert items.state[table]["sum"].shape == (table.shape[0],)
    dense = sum(p.numel() for p in model.parameters() if p is not table)
    assert optim.state_bytes() == 4 * (table.shape[0] + 2 * dense)  # Adam's two moments on the tower only


def test_rowwise_adagrad_needs_a_sparse_item_table() -> None:
    with pytest.raises(ValueError, match="sparse_items"):
        build_optimizers(build_model("dnn", N_ITEMS, D, 1, L), TrainConfig(optimizer="rowwise-adagrad"))


def test_short_rowwise_adagrad_training_beats_the_untrained_model(synth_csv: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(synth_csv), optimizer="rowwise-adagrad", scheme="remi", max_steps=600, eval_every=300,
                      batch_size=64, negatives=256, dim=16, seed=1, **AUTHORS_REMI)  # fmt: skip
    prep = prepare(cfg)
    result = train(cfg, tmp_path / "run", prepared=prep, show_progress=False)
    assert result is not None and result.config.optimizer == "rowwise-adagrad"
    seed_everything(cfg.seed)
    untrained = build_model(cfg.model, prep.data.n_items, cfg.dim, cfg.interests, cfg.seq_len)
    before, _, _ = evaluate(untrained, prep.valid, ns=(50,))
    assert result.valid["recall@50"] > 1.5 * before["recall@50"]


def test_item_lr_and_weight_decay_are_validated() -> None:
    assert TrainConfig(optimizer="rowwise-adagrad").table_lr == ROWWISE_ADAGRAD_LR
    assert TrainConfig(optimizer="rowwise-adagrad", item_lr=0.2).table_lr == 0.2
    with pytest.raises(ValidationError, match="item_lr applies to rowwise-adagrad only"):
        TrainConfig(optimizer="adam", item_lr=0.1)
    with pytest.raises(RemiError, match="item_lr"):
        load_config(None, optimizer="sparse-adam", item_lr=0.1)
    with pytest.raises(RemiError, match="item_lr"):
        load_config(None, optimizer="rowwise-adagrad", item_lr=0)
    with pytest.raises(ValidationError, match="weight_decay does not apply to rowwise-adagrad"):
        TrainConfig(optimizer="rowwise-adagrad", weight_decay=1e-4)
    with pytest.raises(RemiError, match="optimizer"):
        load_config(None, optimizer="rowwise-adam")
