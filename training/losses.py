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


def hard_readout(
    interest_vectors: torch.Tensor, target_emb: torch.Tensor, active: torch.Tensor | None = None
) -> torch.Tensor:
    """Picks, per user, the interest closest to the target: (B, K, d), (B, d) -> (B, d).

    The argmax is not differentiable, so only the chosen interest gets gradient (docs/remi.md B.1.3).
    ``active`` (B, K) bool restricts the pick to the interests the user has (docs/remi.md A.13):
    what serving will search is what training scores.
    """
    scores = (interest_vectors * target_emb.unsqueeze(1)).sum(-1)  # (B, K)
    if active is not None:
        scores = scores.masked_fill(~active, float("-inf"))
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
    if beta != 0.0:
        # The raw scores are the logits themselves: passed as None, the weights and the gradient
        # through them come from the same tensor in one pass (weighting_scores returns neg_logits).
        scores = None if weight_scores is neg_logits else weight_scores
        if scores is None and beta < 0:
            scores = neg_logits  # the raw case's shared row maximum needs beta > 0
        loss: torch.Tensor = _ImportanceWeightedSoftmax.apply(  # type: ignore[no-untyped-call]
            pos_logit, neg_logits, scores, neg_valid, beta, detach_weights
        )
        return loss
    if neg_valid is not None:
        neg_logits = neg_logits.masked_fill(~neg_valid, float("-inf"))
    neg_term = torch.logsumexp(neg_logits, dim=-1)
    return (torch.logaddexp(pos_logit, neg_term) - pos_logit).mean()


class _ImportanceWeightedSoftmax(torch.autograd.Function):
    """The IHN loss (beta != 0) with its gradient in closed form (docs/remi.md#b3-ihn-interest-aware-hard-negatives,
    REMI's own cost).

    Per row, with s the logits, σ the weight scores (σ = s for raw), q = softmax(s + βσ),
    w = softmax(βσ) and the margin t = log M + lse(s + βσ) - lse(βσ) - s⁺:

        loss = mean_b softplus(t),  p = sigmoid(t)
        dL/ds⁺ = -p / B,  dL/ds = p q / B,  dL/dσ = β p (q - w) / B  (0 when detached)

    Autograd of the log-softmax form runs ~15 element-wise passes over the (B, M) logits and
    recomputes the exponentials in backward. Here forward computes each exponential once, as
    e^{z - max z} with its row sum (the log-sum-exp and, scaled, the softmax), and keeps it for
    backward, which is one pass (two when the gradient also flows through the weights). The
    fused softmax and argmax kernels are not used: on CPU they measured slower than these passes.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        pos_logit: torch.Tensor,
        neg_logits: torch.Tensor,
        scores: torch.Tensor | None,
        neg_valid: torch.Tensor | None,
        beta: float,
        detach_weights: bool,
    ) -> torch.Tensor:
        neg = neg_logits
        log_m: torch.Tensor | float = math.log(neg.shape[1])
        if neg_valid is not None:
            neg = neg.masked_fill(~neg_valid, float("-inf"))
            scores = None if scores is None else scores.masked_fill(~neg_valid, float("-inf"))
            log_m = torch.log(neg_valid.sum(-1).clamp_min(1).to(neg.dtype))  # (B,)
        if scores is None:  # raw, beta > 0: s, βs and (1 + β)s peak at the same j
            top = neg.amax(-1, keepdim=True)  # (B, 1)
            # (1 + β)(s - max s) and β(s - max s), each in one pass, then exponentiated in place
            e_tilted = torch.add(top * -(1.0 + beta), neg, alpha=1.0 + beta).exp_()  # (B, M)
            e_weight = torch.add(top * -beta, neg, alpha=beta).exp_()  # (B, M)
            top_diff = top  # max(s + βs) - max(βs)
        else:
            weight_logits = scores * beta  # (B, M) βσ
            tilted = neg + weight_logits  # (B, M) s + βσ
            top_tilted, top_weight = tilted.amax(-1, keepdim=True), weight_logits.amax(-1, keepdim=True)
            e_tilted = tilted.sub_(top_tilted).exp_()
            e_weight = weight_logits.sub_(top_weight).exp_()
            top_diff = top_tilted - top_weight
        z_tilted, z_weight = e_tilted.sum(-1, keepdim=True), e_weight.sum(-1, keepdim=True)  # (B, 1)
        # log M + lse(s + βσ) - lse(βσ) - s⁺, each lse as max + log(sum of e^{z - max})
        margin = (z_tilted / z_weight).log_().add_(top_diff).squeeze(-1).add_(log_m).sub_(pos_logit)  # (B,)
        # backward needs p / B times q = e_tilted / z_tilted (and w = e_weight / z_weight)
        p = torch.sigmoid(margin).div_(neg.shape[0])  # (B,)
        raw = scores is None
        if detach_weights:
            ctx.save_for_backward(p, e_tilted, p.unsqueeze(-1) / z_tilted)
        elif raw:  # σ = s: d/ds [lse((1 + β)s) - lse(βs)] = (1 + β) q - β w
            ctx.save_for_backward(
                p, e_tilted, p.unsqueeze(-1) * (1.0 + beta) / z_tilted, e_weight, p.unsqueeze(-1) * beta / z_weight
            )
        else:  # dL/dσ = β p (q - w) / B
            ctx.save_for_backward(p, e_tilted, p.unsqueeze(-1) / z_tilted, e_weight, p.unsqueeze(-1) / z_weight)
        ctx.beta, ctx.raw = beta, raw  # type: ignore[attr-defined]
        return torch.nn.functional.softplus(margin).mean()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        p, e_tilted, c_tilted, *weighted = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_neg = e_tilted * (c_tilted * grad)  # (B, M)
        grad_scores = None
        if weighted:
            e_weight, c_weight = weighted
            if ctx.raw:  # type: ignore[attr-defined]
                grad_neg.addcmul_(e_weight, c_weight * grad, value=-1.0)
            elif ctx.needs_input_grad[2]:  # type: ignore[attr-defined]
                grad_scores = torch.addcmul(grad_neg, e_weight, c_weight * grad, value=-1.0).mul_(ctx.beta)  # type: ignore[attr-defined]
        return -p * grad, grad_neg, grad_scores, None, None, None


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
    routing = rr_scoped(routing, scope)
    if norm == "authors":
        penalty: torch.Tensor = _AuthorsRoutingPenalty.apply(routing, dim)  # type: ignore[no-untyped-call]
        return penalty
    if norm == "valid":
        m = mask.unsqueeze(1).to(routing.dtype)
        n = m.sum(-1).clamp_min(1)  # (B, 1)
        var = (((routing - 1.0 / n.unsqueeze(-1)) ** 2) * m).sum(-1)
        scaled = torch.where(n > 1, var / (1 - 1.0 / n).clamp_min(1e-6), torch.zeros_like(var))
        return (scaled**2).mean(-1).mean()
    raise ValueError(f"unknown RR normalisation {norm!r}; choose one of {RR_NORMS}")


def rr_scoped(routing: torch.Tensor, scope: str) -> torch.Tensor:
    """The routing rows RR flattens for ``scope`` (see :func:`routing_regularization`)."""
    if scope == "mean":
        return routing.mean(1, keepdim=True).expand_as(routing)
    if scope != "interest":
        raise ValueError(f"unknown RR scope {scope!r}; choose one of {RR_SCOPES}")
    return routing


class _AuthorsRoutingPenalty(torch.autograd.Function):
    """RR with the authors' normalisation and its gradient written out (docs/remi.md#b4-rr-routing-regularisation).

    mean_b sum_k var_bk^2 with var = sum_l (A - 1/L)^2 / d. Autograd of that chain is ~14 ops on
    small (B, K, L) tensors, each paying the per-op dispatch cost; here forward is 3 and backward
    2: dRR/dA = (4 var / (B d)) (A - 1/L). Measured alone: ~30 µs less per step than autograd.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, routing: torch.Tensor, dim: int) -> torch.Tensor:
        centred = routing - 1.0 / routing.shape[-1]  # (B, K, L)
        var = torch.linalg.vecdot(centred, centred).div_(dim)  # (B, K)
        ctx.save_for_backward(centred, var)
        ctx.dim = dim  # type: ignore[attr-defined]
        penalty: torch.Tensor = torch.linalg.vecdot(var, var).mean()
        return penalty

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        centred, var = ctx.saved_tensors  # type: ignore[attr-defined]
        scale = var * (grad * 4.0 / (var.shape[0] * ctx.dim))  # type: ignore[attr-defined]
        return centred * scale.unsqueeze(-1), None


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
