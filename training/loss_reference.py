"""The IHN and RR terms in their plain autograd form, as they were before
docs/remi.md#b3-ihn-interest-aware-hard-negatives wrote their
gradients out (training/losses.py). Kept as one copy: the oracle of
tests/training/test_closed_form_losses.py and the "before" variants of benchmarks/throughput.py.
Not used in training.
"""

from __future__ import annotations

import math

import torch

from training.losses import RR_NORMS, rr_scoped


def ihn_loss(
    pos_logit: torch.Tensor,
    neg_logits: torch.Tensor,
    beta: float = 0.0,
    weight_scores: torch.Tensor | None = None,
    neg_valid: torch.Tensor | None = None,
    detach_weights: bool = False,
) -> torch.Tensor:
    """:func:`training.losses.ihn_loss` (same arguments, same value) with autograd's gradients."""
    scores = neg_logits if weight_scores is None else weight_scores
    if neg_valid is not None:
        neg_logits = neg_logits.masked_fill(~neg_valid, float("-inf"))
        scores = scores.masked_fill(~neg_valid, float("-inf"))
        log_m = torch.log(neg_valid.sum(-1).clamp_min(1).to(neg_logits.dtype))
    else:
        log_m = torch.full_like(pos_logit, math.log(neg_logits.shape[1]))
    if beta == 0.0:
        neg_term = torch.logsumexp(neg_logits, dim=-1)
    else:
        log_w = torch.log_softmax(beta * scores, dim=-1)
        if detach_weights:
            log_w = log_w.detach()
        neg_term = log_m + torch.logsumexp(neg_logits + log_w, dim=-1)
    return (torch.logaddexp(pos_logit, neg_term) - pos_logit).mean()


def routing_regularization(
    routing: torch.Tensor, mask: torch.Tensor, dim: int, norm: str = "authors", scope: str = "interest"
) -> torch.Tensor:
    """:func:`training.losses.routing_regularization` (same arguments, same value) with autograd's gradients."""
    routing = rr_scoped(routing, scope)
    if norm == "authors":
        length = routing.shape[-1]
        var = ((routing - 1.0 / length) ** 2).sum(-1) / dim  # (B, K)
        return (var**2).sum(-1).mean()
    if norm == "valid":
        m = mask.unsqueeze(1).to(routing.dtype)
        n = m.sum(-1).clamp_min(1)  # (B, 1)
        var = (((routing - 1.0 / n.unsqueeze(-1)) ** 2) * m).sum(-1)
        scaled = torch.where(n > 1, var / (1 - 1.0 / n).clamp_min(1e-6), torch.zeros_like(var))
        return (scaled**2).mean(-1).mean()
    raise ValueError(f"unknown RR normalisation {norm!r}; choose one of {RR_NORMS}")
