"""The optimiser of a training run: dense Adam over everything (the default), SparseAdam on the
item table (``--optimizer sparse-adam``) or row-wise Adagrad on it (``--optimizer rowwise-adagrad``),
each beside dense Adam on the rest (docs/results.md#large-catalogues---optimizer-rowwise-adagrad).

With dense Adam every step reads and writes all of the item table and both of its moment buffers,
so a step's cost grows with the catalogue. With the two sparse choices the table's lookups give
sparse gradients holding only the rows the batch used (history, targets, shared negatives) and
only those rows change: the step cost follows the batch, not the catalogue.

- sparse-adam: torch's SparseAdam. Its moments of an untouched row do not decay meanwhile (a lazy
  update, not dense Adam), it keeps two table-sized moment tensors (2 GB at 4M x 64) and its
  Python step (coalesce, sparse_mask, sparse adds on the moment tensors) costs ~50% of a step at
  4M items (torch.profiler, benchmarks/results/sparse_optimizer.md).
- rowwise-adagrad: :class:`RowWiseAdagrad`, the row-wise Adagrad of TorchRec/FBGEMM's fused
  embedding optimisers (ROWWISE_ADAGRAD): one accumulator scalar per row (16 MB at 4M rows), and
  a step of a few in-place ops on the batch's unique rows. Adagrad has no decay, so updating only
  touched rows is exactly the dense algorithm (a row without gradient does not move in dense
  Adagrad either): nothing lazy about it. Its table learning rate is ``item_lr``.

studies/results/sparse_optimizer_quality.md compares them on amazon_beauty,
benchmarks/results/sparse_optimizer.md their speed and state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from training.config import SPARSE_OPTIMIZERS, TrainConfig
from training.models import MultiInterestModel


class Optimizers:
    """One or two torch optimisers stepped together, so the loop does not ask which it has."""

    def __init__(self, *parts: torch.optim.Optimizer):
        self.parts = parts
        self._base_lrs = [[group["lr"] for group in part.param_groups] for part in parts]

    def scale_lr(self, factor: float) -> None:
        """Set every group's learning rate to its configured value times ``factor`` (a schedule)."""
        for part, bases in zip(self.parts, self._base_lrs, strict=True):
            for group, base in zip(part.param_groups, bases, strict=True):
                group["lr"] = base * factor

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_bytes(self) -> int:
        """Bytes of the optimiser state tensors (Adam's exp_avg/exp_avg_sq, Adagrad's row sums, ...)."""
        return sum(
            value.numel() * value.element_size()
            for part in self.parts
            for state in part.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        )


def unique_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (U,), summed gradient (U, d)) of a sparse row gradient, one entry per distinct row.

    An embedding's sparse gradient holds one entry per lookup (duplicates included, the padding
    row left out); summing duplicates with ``index_add_`` on the U distinct rows needs no
    table-sized temporary (U is at most the batch's lookups, ~4k by default).
    """
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    lookups = grad._indices()[0]
    rows, inverse = torch.unique(lookups, return_inverse=True)
    values = grad._values()
    summed = values.new_zeros((len(rows), values.shape[1])).index_add_(0, inverse, values)
    return rows, summed


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad over 2-d tables with sparse gradients (FBGEMM's ROWWISE_ADAGRAD)::

        G_r += mean_j g_rj^2             one accumulator per row r, over the d columns
        w_r -= lr * g_r / (sqrt(G_r) + eps)

    only for the rows the gradient holds: reads and writes U rows of the table and U scalars of
    the state (index_select / index_copy_ / index_add_), whatever the table size.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, eps: float = 1e-8, initial_accumulator: float = 0.0):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "eps": eps, "initial_accumulator": initial_accumulator})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for table in group["params"]:
                if table.grad is None:
                    continue
                if not table.grad.is_sparse or table.dim() != 2:
                    raise ValueError("RowWiseAdagrad needs a 2-d table with sparse gradients (sparse_items=True)")
                state = self.state[table]
                if not state:
                    state["sum"] = torch.full(
                        (table.shape[0],), group["initial_accumulator"], dtype=table.dtype, device=table.device
                    )
                rows, grad = unique_rows(table.grad)
                accumulator = state["sum"].index_select(0, rows).add_(grad.square().mean(1))
                state["sum"].index_copy_(0, rows, accumulator)
                scale = accumulator.sqrt_().add_(group["eps"]).reciprocal_().mul_(-group["lr"])
                table.index_add_(0, rows, grad * scale.unsqueeze(1))


def build_optimizers(model: MultiInterestModel, cfg: TrainConfig) -> Optimizers:
    """The configured optimiser for a model built with ``sparse_items=uses_sparse_items(cfg)``."""
    if cfg.optimizer == "adam":
        # fused Adam: one kernel over all parameters, about 2x faster per step on CPU than foreach here
        return Optimizers(torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True))
    if not model.item_emb.sparse:
        raise ValueError(f"{cfg.optimizer} needs a model built with sparse_items=True")
    table = model.item_emb.weight
    dense = [p for p in model.parameters() if p is not table]
    # weight_decay is refused with the sparse optimisers (TrainConfig), so neither group decays
    items: torch.optim.Optimizer
    if cfg.optimizer == "sparse-adam":
        items = torch.optim.SparseAdam([table], lr=cfg.lr)
    else:
        items = RowWiseAdagrad([table], lr=cfg.table_lr)
    return Optimizers(items, torch.optim.Adam(dense, lr=cfg.lr, fused=True))


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The schedule's multiplier of the learning rate before step ``step`` (0-based).

    Why cosine: with a constant rate the item vectors keep fitting the training users after valid
    recall peaks, and on short-history data (amazon_beauty) it decays; annealing to 0 at the budget
    makes the last steps small, so what the budget ends on is near the best (docs/remi.md#a7-defaults).
    """
    if cfg.lr_schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, cfg.max_steps) / cfg.max_steps))


def uses_sparse_items(cfg: TrainConfig) -> bool:
    """Whether the item table must give sparse gradients for this config's optimiser."""
    return cfg.optimizer in SPARSE_OPTIMIZERS
