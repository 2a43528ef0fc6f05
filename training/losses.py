"""Training objectives: hard readout, sampled softmax with interest-aware hard negatives (IHN),
and routing regularisation (RR). Pure tensor functions; the schemes in docs/remi.md A.2 are flag
combinations of these.
"""

from __future__ import annotations

import math

import torch

WEIGHT_SCORES = ("raw", "cosine", "standardized")
RR_NORMS = ("authors", "valid")
RR_SCOPES = ("interest", "mean")


def hard_readout(interest_vectors: torch.Tensor, target_emb: torch.Tensor) -> torch.Tensor:
    """Picks, per user, the interest closest to the target: (B, K, d), (B, d) -> (B, d).

    The argmax is not differentiable, so only the chosen interest gets gradient (docs/remi.md B.1.3).
    """
    scores = (interest_vectors * target_emb.unsqueeze(1)).sum(-1)  # (B, K)
    best = scores.argmax(dim=1)
    return interest_vectors[torch.arange(len(best), device=interest_vectors.device), best]


def ihn_loss(
    pos_logit: torch.Tensor,
    neg_logits: torch.Tensor,
    beta: float = 0.0,
    weight_scores: torch.Tensor | None = None,
    neg_valid: torch.Tensor | None = None,
    detach_weights: bool = False,
) -> torch.Tensor:
    """Sampled softmax whose negatives are importance-weighted by softmax(beta * score).

    loss = -s+ + log(e^{s+} + M * sum_j w_j e^{s_j}),  w = softmax_j(beta * weight_scores_j)

    With beta = 0 the weights are uniform (1/M) and this is exactly the plain sampled softmax
    -log(e^{s+} / (e^{s+} + sum_j e^{s_j})).

    Args:
        pos_logit: (B,) score of the positive.
        neg_logits: (B, M) scores of the shared negatives.
        beta: hardness; 0 reproduces `sampled`.
        weight_scores: (B, M) what the weights are computed from (default: neg_logits). Passing
            cosine or standardised scores keeps the weight sharpness from growing with the norms.
        neg_valid: (B, M) bool, False for negatives to drop (accidental hits).
        detach_weights: stop the gradient through w (treat it as a sampling distribution).

    Returns: scalar mean loss.
    """
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


def weighting_scores(
    kind: str, user_vec: torch.Tensor, neg_emb: torch.Tensor, neg_logits: torch.Tensor
) -> torch.Tensor:
    """Scores the IHN weights are computed from.

    raw: the logits themselves (the reference scripts; sharpens as norms grow during training).
    cosine: cosine similarity, bounded in [-1, 1] so beta keeps its meaning all through training.
    standardized: logits standardised per row, so beta sets a fixed sharpness relative to the spread.
    """
    if kind == "raw":
        return neg_logits
    if kind == "cosine":
        u = torch.nn.functional.normalize(user_vec, dim=-1)
        e = torch.nn.functional.normalize(neg_emb, dim=-1)
        return u @ e.T
    if kind == "standardized":
        mean = neg_logits.mean(-1, keepdim=True)
        std = neg_logits.std(-1, keepdim=True).clamp_min(1e-6)
        return (neg_logits - mean) / std
    raise ValueError(f"unknown IHN weight scores {kind!r}; choose one of {WEIGHT_SCORES}")


def routing_regularization(
    routing: torch.Tensor, mask: torch.Tensor, dim: int, norm: str = "authors", scope: str = "interest"
) -> torch.Tensor:
    """Penalty on spiky routing rows, mean over the batch.

    authors: sum_j ((1/d) sum_l (A_jl - 1/L)^2)^2 per user (j the interest), the reference formula (mean over L
        includes padded slots; divisor d). λ here is per user: the authors' λ=100 summed over a
        batch of 128 is λ=12,800 in this convention.
    valid: the same variance taken over the user's n valid positions only, divided by its
        one-hot maximum (1 - 1/n), so each row's term lies in [0, 1] whatever the history length:
        sum_j (sum_{l valid} (A_jl - 1/n)^2 / (1 - 1/n))^2 / K.

    Both are 0 for uniform routing over the valid items and largest for one-hot rows.

    scope: ``interest`` (the reference) flattens every interest's row, and the flat row is the same
    for all of them, which makes the interests copies of the history mean; ``mean`` flattens the
    interests' average row instead (every row replaced by it, so λ keeps its scale), which asks
    that the history as a whole be used but lets each interest draw on part of it (docs/remi.md A.11).

    Args:
        routing: (B, K, L) rows summing to 1 over valid positions.
        mask: (B, L) bool.
    """
    if scope == "mean":
        routing = routing.mean(1, keepdim=True).expand_as(routing)
    elif scope != "interest":
        raise ValueError(f"unknown RR scope {scope!r}; choose one of {RR_SCOPES}")
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


def interest_overlap(interest_vectors: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """How alike a user's interests are: mean over users and interest pairs of relu(cos - margin)^2.

    0 when every pair is at most ``margin`` apart in cosine (orthogonal or opposite interests cost
    nothing at margin 0), 1 for K copies. The penalty behind ``interest_div`` (docs/remi.md A.11):
    RR alone drives every interest to the same history mean.

    Args:
        interest_vectors: (B, K, d); K = 1 gives 0.
    """
    n_interests = interest_vectors.shape[1]
    if n_interests < 2:
        return interest_vectors.new_zeros(())
    unit = torch.nn.functional.normalize(interest_vectors, dim=-1)
    cos = unit @ unit.transpose(1, 2)  # (B, K, K)
    i, j = torch.triu_indices(n_interests, n_interests, 1, device=cos.device)
    return (torch.relu(cos[:, i, j] - margin) ** 2).mean()
