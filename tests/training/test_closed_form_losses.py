"""IHN and RR with hand-written gradients (docs/remi.md#b3-ihn-interest-aware-hard-negatives) give the loss and
gradients of the plain
autograd form (training/loss_reference.py), and training on them follows the same trajectory."""

from collections.abc import Iterator

import pytest
import torch

import training.scheme
from remi.contract import ItemVocabulary
from training import loss_reference
from training.config import TrainConfig
from training.losses import ihn_loss, routing_regularization, weighting_scores
from training.models import build_model
from training.scheme import TrainBatch, TrainingScheme, UniformNegatives

BETAS = [0.05, 1.0, 2.5]
WEIGHTS = ["raw", "default", "standardized", "cosine"]  # default: weight_scores=None


def _inputs(
    dtype: torch.dtype, masked: bool, b: int = 6, m: int = 40
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Positive logits (B,), user vectors (B, d), negative vectors (M, d) and a hit mask (B, M)."""
    g = torch.Generator().manual_seed(0)
    user = torch.randn(b, 8, generator=g, dtype=dtype)
    negs = torch.randn(m, 8, generator=g, dtype=dtype)
    pos = torch.randn(b, generator=g, dtype=dtype) * 3
    valid = torch.rand(b, m, generator=g) > 0.25 if masked else None
    return pos, user, negs, valid


def _loss(fn, pos, user, negs, weights, beta, valid, detach):  # type: ignore[no-untyped-def]
    """The loss as the scheme builds it: logits from the user and negative vectors."""
    neg_logits = user @ negs.T  # (B, M)
    scores = None if weights == "default" else weighting_scores(weights, user, negs, neg_logits)
    return fn(pos, neg_logits, beta, scores, valid, detach)


def _value_and_grads(fn, dtype, weights, beta, masked, detach):  # type: ignore[no-untyped-def]
    pos, user, negs, valid = _inputs(dtype, masked)
    leaves = [t.requires_grad_() for t in (pos, user, negs)]
    loss = _loss(fn, pos, user, negs, weights, beta, valid, detach)
    return loss.detach(), torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [0.0, *BETAS])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("detach", [False, True])
def test_ihn_value_and_gradients_match_the_autograd_form(
    dtype: torch.dtype, beta: float, weights: str, masked: bool, detach: bool
) -> None:
    got, got_grads = _value_and_grads(ihn_loss, dtype, weights, beta, masked, detach)
    want, want_grads = _value_and_grads(loss_reference.ihn_loss, dtype, weights, beta, masked, detach)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("masked", [False, True])
def test_ihn_gradient_is_the_derivative_of_its_value(beta: float, weights: str, masked: bool) -> None:
    # undetached only: detached weights drop a term of the derivative on purpose (next test)
    pos, user, negs, valid = _inputs(torch.float64, masked, b=3, m=7)
    assert torch.autograd.gradcheck(
        lambda p, u, n: _loss(ihn_loss, p, u, n, weights, beta, valid, False),
        (pos.requires_grad_(), user.requires_grad_(), negs.requires_grad_()),
    )


def test_ihn_detached_gradient_holds_the_weights_fixed() -> None:
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    frozen = torch.softmax(0.5 * neg, -1)  # w at the current logits, a constant

    def with_frozen_weights(p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return (torch.logaddexp(p, torch.log(7 * (frozen * n.exp()).sum(-1))) - p).mean()

    got = [t.clone().requires_grad_() for t in (pos, neg)]
    want = [t.clone().requires_grad_() for t in (pos, neg)]
    ihn_loss(got[0], got[1], 0.5, got[1], None, True).backward()
    with_frozen_weights(*want).backward()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


def test_ihn_with_large_logits_stays_finite() -> None:
    pos = torch.tensor([80.0, -50.0], requires_grad=True)
    neg = (torch.randn(2, 30, generator=torch.Generator().manual_seed(1)) * 40).requires_grad_()
    loss = ihn_loss(pos, neg, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(neg.grad).all() and torch.isfinite(pos.grad).all()
    torch.testing.assert_close(loss.detach(), loss_reference.ihn_loss(pos.detach(), neg.detach(), 1.0))


@pytest.mark.parametrize("scope", ["interest", "mean"])
@pytest.mark.parametrize("norm", ["authors", "valid"])
def test_rr_value_gradient_and_derivative_match_the_autograd_form(norm: str, scope: str) -> None:
    g = torch.Generator().manual_seed(2)
    mask = torch.arange(5)[None, :] < torch.tensor([1, 2, 5])[:, None]  # (B, L)
    logits = torch.randn(3, 4, 5, generator=g, dtype=torch.float64).masked_fill(~mask[:, None], float("-inf"))
    routing = (torch.softmax(logits, -1) * mask[:, None]).requires_grad_()
    got = routing_regularization(routing, mask, 16, norm, scope)
    want = loss_reference.routing_regularization(routing, mask, 16, norm, scope)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        torch.autograd.grad(got, routing)[0], torch.autograd.grad(want, routing)[0], rtol=1e-12, atol=1e-15
    )
    assert torch.autograd.gradcheck(lambda r: routing_regularization(r, mask, 16, norm, scope), (routing,))


VOCAB = ItemVocabulary([f"i{row}" for row in range(60)])


@pytest.fixture
def reference_scheme_code() -> Iterator[None]:
    """The scheme's IHN and RR swapped for the plain autograd form while the test runs."""
    saved = training.scheme.ihn_loss, training.scheme.routing_regularization
    training.scheme.ihn_loss = loss_reference.ihn_loss  # type: ignore[assignment]
    training.scheme.routing_regularization = loss_reference.routing_regularization
    yield
    training.scheme.ihn_loss, training.scheme.routing_regularization = saved  # type: ignore[assignment]


def _train(cfg: TrainConfig, steps: int = 30) -> tuple[list[float], list[torch.Tensor]]:
    """A few Adam steps of ComiRec-SA on random histories: the losses and the final parameters."""
    torch.manual_seed(0)
    model = build_model("comirec-sa", VOCAB.n_items, dim=8, n_interests=3, seq_len=6)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheme = TrainingScheme.from_config(cfg)
    sampler = UniformNegatives(VOCAB, 24, seed=0)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        history = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), (16, 6), generator=g)
        mask = torch.arange(6)[None, :] < torch.randint(1, 7, (16, 1), generator=g)
        target = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), (16,), generator=g)
        batch = TrainBatch(history.masked_fill(~mask, ItemVocabulary.PADDING), mask, target)
        loss = scheme.step_loss(model, batch, sampler.sample(), step).total
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


SETTINGS = {
    "authors": {"scheme": "remi", "beta": 1.0, "lam": 12800.0, "ihn_detach": False, "emb_l2": 0.0},
    "shipped": {"scheme": "remi", "beta": 0.05, "lam": 20000.0, "ihn_detach": True},
    "hits-warmup-cosine": {
        "scheme": "remi", "beta": 0.5, "lam": 100.0, "ihn_detach": False, "ihn_warmup": 10, "ihn_scores": "cosine",
        "remove_accidental_hits": True, "rr_norm": "valid",
    },
}  # fmt: skip


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_short_training_run_follows_the_autograd_form(setting: str, request: pytest.FixtureRequest) -> None:
    cfg = TrainConfig(**SETTINGS[setting])  # type: ignore[arg-type]
    losses, params = _train(cfg)
    request.getfixturevalue("reference_scheme_code")
    want_losses, want_params = _train(cfg)
    assert losses == pytest.approx(want_losses, rel=1e-4)
    for got, want in zip(params, want_params, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
