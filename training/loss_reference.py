"""The IHN and RR terms in their literal form (docs/remi.md A.4, A.7), as they were before the
fused versions in training.losses (issue 11 §2).

Kept as the oracle the fused code is tested against (tests/training/test_fused_losses.py) and
as the "before" of the throughput benchmark (benchmarks/throughput.py): one copy, so the test
and the benchmark cannot drift apart. Training never calls these.
"""

from __future__ import annotations

import math

import torch


def ihn_loss_reference(
    pos_logit: torch.Tensor,
    neg_logits: torch.Tensor,
    beta: float = 0.0,
    weight_scores: torch.Tensor | None = None,
    neg_valid: torch.Tensor | None = None,
    detach_weights: bool = False,
) -> torch.Tensor:
    """IHN as written: log-softmax weights over the negatives, then a logsumexp over them."""
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


def routing_regularization_reference(
    routing: torch.Tensor, mask: torch.Tensor | None, dim: int, norm: str = "authors"
) -> torch.Tensor:
    """RR as written, authors' normalisation only (the default; the mask does not enter it)."""
    if norm != "authors":
        raise ValueError("the reference covers the authors' normalisation only")
    length = routing.shape[-1]
    var = ((routing - 1.0 / length) ** 2).sum(-1) / dim  # (B, K)
    return (var**2).sum(-1).mean()
