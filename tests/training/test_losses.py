import math

import pytest
import torch

from training.losses import hard_readout, ihn_loss, interest_overlap, routing_regularization, weighting_scores


def _logits(b: int = 4, m: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, generator=g) * 2, torch.randn(b, m, generator=g) * 3


def test_beta_zero_is_exactly_the_sampled_softmax() -> None:
    pos, neg = _logits()
    sampled = torch.nn.functional.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros(4, dtype=torch.long))
    assert ihn_loss(pos, neg, beta=0.0).item() == pytest.approx(sampled.item(), abs=1e-6)
    # the importance-weighted path with uniform weights is the same number, too
    uniform = torch.zeros_like(neg)
    assert ihn_loss(pos, neg, beta=1.0, weight_scores=uniform).item() == pytest.approx(sampled.item(), abs=1e-5)


def test_ihn_matches_the_closed_form() -> None:
    pos, neg = _logits()
    beta, m = 0.7, neg.shape[1]
    w = torch.softmax(beta * neg, -1)
    expected = (-pos + torch.log(torch.exp(pos) + m * (w * torch.exp(neg)).sum(-1))).mean()
    assert ihn_loss(pos, neg, beta).item() == pytest.approx(expected.item(), rel=1e-5)


def test_larger_beta_puts_more_weight_on_higher_scoring_negatives() -> None:
    pos, neg = _logits()
    top = neg.argmax(-1)
    shares = []
    for beta in (0.0, 0.5, 2.0):
        logits = neg.clone().requires_grad_(True)
        ihn_loss(pos, logits, beta, detach_weights=True).backward()
        grad = logits.grad.abs()
        shares.append((grad[torch.arange(4), top] / grad.sum(-1)).mean().item())
    assert shares[0] < shares[1] < shares[2]


def test_accidental_hits_are_dropped_from_the_denominator() -> None:
    pos, neg = _logits(b=1, m=3)
    valid = torch.tensor([[True, False, True]])
    expected = -pos + torch.logsumexp(torch.stack([pos[0], neg[0, 0], neg[0, 2]]), 0)
    assert ihn_loss(pos, neg, 0.0, neg_valid=valid).item() == pytest.approx(expected.item(), abs=1e-6)


def test_weighting_scores_are_bounded_for_cosine_and_standardized() -> None:
    user, negs = torch.randn(4, 8) * 10, torch.randn(32, 8) * 10
    logits = user @ negs.T
    assert weighting_scores("cosine", user, negs, logits).abs().max() <= 1 + 1e-6
    z = weighting_scores("standardized", user, negs, logits)
    assert torch.allclose(z.std(-1), torch.ones(4), atol=1e-4)


def test_hard_readout_picks_the_interest_closest_to_the_target() -> None:
    interest_vectors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert torch.equal(hard_readout(interest_vectors, torch.tensor([[0.1, 2.0]])), torch.tensor([[0.0, 1.0]]))


@pytest.mark.parametrize("norm", ["authors", "valid"])
def test_rr_is_zero_for_uniform_routing_and_largest_for_one_hot(norm: str) -> None:
    b, n_interests, length, d = 2, 4, 5, 16
    mask = torch.ones(b, length, dtype=torch.bool)
    uniform = torch.full((b, n_interests, length), 1 / length)
    one_hot = torch.zeros(b, n_interests, length)
    one_hot[..., 0] = 1
    peaked = torch.softmax(torch.randn(b, n_interests, length, generator=torch.Generator().manual_seed(0)), -1)
    r_uniform = routing_regularization(uniform, mask, d, norm).item()
    r_peaked = routing_regularization(peaked, mask, d, norm).item()
    r_one_hot = routing_regularization(one_hot, mask, d, norm).item()
    assert r_uniform == pytest.approx(0.0, abs=1e-12)
    assert r_uniform < r_peaked < r_one_hot
    if norm == "authors":  # the reference formula: K * ((1 - 1/L) / d)^2 per user
        assert r_one_hot == pytest.approx(n_interests * ((1 - 1 / length) / d) ** 2)
    else:
        assert r_one_hot == pytest.approx(1.0)


def test_rr_valid_norm_ignores_padding() -> None:
    mask = torch.tensor([[True, True, False, False]])
    uniform_valid = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    assert routing_regularization(uniform_valid, mask, 8, "valid").item() == pytest.approx(0.0, abs=1e-12)


def test_rr_gradient_flows_to_the_routing_logits() -> None:
    logits = torch.randn(2, 3, 6, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    for norm in ("authors", "valid"):
        logits.grad = None
        routing_regularization(torch.softmax(logits, -1), mask, 8, norm).backward()
        assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_loss_at_init_is_about_log_m() -> None:
    pos, neg = torch.zeros(8), torch.zeros(8, 1280)
    assert ihn_loss(pos, neg, 0.0).item() == pytest.approx(math.log(1281), rel=1e-6)


@pytest.mark.parametrize("norm", ["authors", "valid"])
def test_rr_on_the_mean_row_lets_interests_split_the_history(norm: str) -> None:
    # 4 interests, each on its own item of a full 4-item window: every row is one-hot (the most
    # the per-interest RR can cost) but together they use the history evenly (docs/remi.md A.11)
    mask = torch.ones(1, 4, dtype=torch.bool)
    split = torch.eye(4).unsqueeze(0)
    assert routing_regularization(split, mask, 8, norm, scope="mean").item() == pytest.approx(0.0, abs=1e-12)
    assert routing_regularization(split, mask, 8, norm, scope="interest").item() > 0
    # interests that agree cost the same under both scopes: λ keeps its meaning
    same = torch.softmax(torch.randn(3, 1, 5, generator=torch.Generator().manual_seed(2)), -1).expand(-1, 4, -1)
    full = torch.ones(3, 5, dtype=torch.bool)
    assert routing_regularization(same, full, 8, norm, scope="mean").item() == pytest.approx(
        routing_regularization(same, full, 8, norm, scope="interest").item()
    )


def test_rr_rejects_an_unknown_scope() -> None:
    with pytest.raises(ValueError, match="scope"):
        routing_regularization(torch.eye(2).unsqueeze(0), torch.ones(1, 2, dtype=torch.bool), 8, scope="rows")


def test_interest_overlap_is_one_for_copies_and_zero_for_orthogonal_interests() -> None:
    copies = torch.tensor([[[1.0, 2.0, 0.0]] * 3])
    orthogonal = torch.eye(3).unsqueeze(0) * torch.tensor([2.0, 0.5, 3.0])[:, None]  # norms do not matter
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    assert interest_overlap(copies).item() == pytest.approx(1.0)
    assert interest_overlap(orthogonal).item() == pytest.approx(0.0, abs=1e-12)
    assert interest_overlap(opposite).item() == pytest.approx(0.0, abs=1e-12)  # apart is apart
    assert interest_overlap(torch.ones(2, 1, 3)).item() == 0.0  # one interest: nothing to compare


def test_interest_overlap_counts_only_the_cosine_above_the_margin() -> None:
    # the two interests are 60 degrees apart: cosine 0.5
    pair = torch.tensor([[[1.0, 0.0], [0.5, math.sqrt(3) / 2]]])
    assert interest_overlap(pair).item() == pytest.approx(0.25)
    assert interest_overlap(pair, margin=0.3).item() == pytest.approx(0.04)
    assert interest_overlap(pair, margin=0.6).item() == pytest.approx(0.0, abs=1e-12)


def test_interest_overlap_gradient_pushes_interests_apart() -> None:
    vectors = torch.tensor([[[1.0, 0.1, 0.0], [1.0, 0.0, 0.1]]], requires_grad=True)
    before = interest_overlap(vectors)
    before.backward()
    assert vectors.grad is not None
    with torch.no_grad():
        after = interest_overlap(vectors - 0.5 * vectors.grad)
    assert after.item() < before.item()


def test_hard_readout_never_picks_an_interest_the_user_lacks() -> None:
    torch.manual_seed(0)
    vectors, target = torch.randn(64, 4, 8), torch.randn(64, 8)
    active = torch.arange(4)[None, :] < torch.randint(1, 5, (64, 1))
    picked = hard_readout(vectors, target, active)
    best = ((vectors * target[:, None]).sum(-1)).masked_fill(~active, float("-inf")).argmax(1)
    assert torch.equal(picked, vectors[torch.arange(64), best])
    assert torch.equal(hard_readout(vectors[:, :1], target, active[:, :1]), vectors[:, 0])
