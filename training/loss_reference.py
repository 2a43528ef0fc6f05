"""The IHN and RR terms in their plain autograd form, as they were before issue 11 §2 wrote their
gradients out (training/losses.py). Kept as one copy: the oracle of
tests/training/test_closed_form_losses.py and the "before" variants of benchmarks/throughput.py.
Not used in training.
"""

from __future__ import annotations

import math

import torch

from training.losses import RR_NORMS


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


def routing_regularization(routing: torch.Tensor, mask: torch.Tensor, dim: int, norm: str = "authors") -> torch.Tensor:
    """Penalty on spiky routing rows, mean over the batch.

    authors: sum_j ((1/d) sum_l (A_jl - 1/L)^2)^2 per user (j the interest), the reference formula (mean over L
        includes padded slots; divisor d). λ here is per user: the authors' λ=100 summed over a
        batch of 128 is λ=12,800 in this convention.
    valid: the same variance taken over the user's n valid positions only, divided by its
        one-hot maximum (1 - 1/n), so each row's term lies in [0, 1] whatever the history length:
        sum_j (sum_{l valid} (A_jl - 1/n)^2 / (1 - 1/n))^2 / K.

    Both are 0 for uniform routing over the valid items and largest for one-hot rows.

    Args:
        routing: (B, K, L) rows summing to 1 over valid positions.
        mask: (B, L) bool.
    """
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
