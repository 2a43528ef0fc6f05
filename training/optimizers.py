"""The optimiser of a training run: dense Adam over everything (the default), or SparseAdam on the
item table beside dense Adam on the rest (``--optimizer sparse-adam``, issue 11 §2).

With dense Adam every step reads and writes all of the item table and both of its moment buffers,
so a step's cost grows with the catalogue. With sparse-adam the table's lookups give sparse
gradients holding only the rows the batch used (history, targets, shared negatives) and
SparseAdam updates only those rows and their moments: the step cost follows the batch, not the
catalogue. The moments of an untouched row do not decay meanwhile (SparseAdam's lazy update),
so the two are not the same optimiser: benchmarks/results/sparse_optimizer_quality.md compares
them on amazon_beauty (same quality), benchmarks/results/sparse_optimizer.md their speed.
"""

from __future__ import annotations

import torch

from training.config import TrainConfig
from training.models import MultiInterestModel


class Optimizers:
    """One or two torch optimisers stepped together, so the loop does not ask which it has."""

    def __init__(self, *parts: torch.optim.Optimizer):
        self.parts = parts

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_bytes(self) -> int:
        """Bytes of the optimiser state tensors (Adam's exp_avg/exp_avg_sq, SparseAdam's likewise)."""
        return sum(
            value.numel() * value.element_size()
            for part in self.parts
            for state in part.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor) and value.dim() > 0
        )


def build_optimizers(model: MultiInterestModel, cfg: TrainConfig) -> Optimizers:
    """The configured optimiser for a model built with ``sparse_items=uses_sparse_items(cfg)``."""
    if cfg.optimizer == "adam":
        # fused Adam: one kernel over all parameters, about 2x faster per step on CPU than foreach here
        return Optimizers(torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True))
    if not model.item_emb.sparse:
        raise ValueError("sparse-adam needs a model built with sparse_items=True")
    table = model.item_emb.weight
    dense = [p for p in model.parameters() if p is not table]
    # weight_decay is refused with sparse-adam (TrainConfig), so neither group decays
    return Optimizers(
        torch.optim.SparseAdam([table], lr=cfg.lr),
        torch.optim.Adam(dense, lr=cfg.lr, fused=True),
    )


def uses_sparse_items(cfg: TrainConfig) -> bool:
    """Whether the item table must give sparse gradients for this config's optimiser."""
    return cfg.optimizer == "sparse-adam"
