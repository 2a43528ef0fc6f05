"""The fused IHN and RR terms (issue 11 §2) equal the implementations they replaced, value and
gradients, on random inputs: the pre-fusion code is training/loss_reference.py."""

from __future__ import annotations

import pytest
import torch

from training.loss_reference import ihn_loss_reference, routing_regularization_reference
from training.losses import ihn_loss, routing_regularization


def _inputs(seed: int, b: int = 16, m: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = (torch.randn(b, generator=g, dtype=torch.float64) * 3).requires_grad_()
    neg = (torch.randn(b, m, generator=g, dtype=torch.float64) * 4).requires_grad_()
    other = (torch.randn(b, m, generator=g, dtype=torch.float64)).requires_grad_()
    return pos, neg, other


def _value_and_grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    for t in tensors:
        t.grad = None
    value = fn()
    value.backward()
    return value.detach(), [t.grad.clone() if t.grad is not None else torch.zeros_like(t) for t in tensors]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.02, 1.0, 5.0])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("separate_scores", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_ihn_loss_equals_the_old_one_in_value_and_gradients(
    seed: int, beta: float, detach: bool, separate_scores: bool, masked: bool
) -> None:
    pos, neg, other = _inputs(seed)
    valid = None
    if masked:
        valid = torch.rand(neg.shape, generator=torch.Generator().manual_seed(seed)) > 0.1
    scores = other if separate_scores else None
    new = _value_and_grads(lambda: ihn_loss(pos, neg, beta, scores, valid, detach), pos, neg, other)
    old = _value_and_grads(lambda: ihn_loss_reference(pos, neg, beta, scores, valid, detach), pos, neg, other)
    torch.testing.assert_close(new[0], old[0], rtol=1e-9, atol=1e-10)
    for a, b in zip(new[1], old[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_fused_ihn_loss_equals_the_old_one_in_float32() -> None:
    pos, neg, _ = (t.detach().float().requires_grad_() for t in _inputs(5, b=128, m=1280))
    new = _value_and_grads(lambda: ihn_loss(pos, neg, 1.0), pos, neg)
    old = _value_and_grads(lambda: ihn_loss_reference(pos, neg, 1.0), pos, neg)
    torch.testing.assert_close(new[0], old[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(new[1], old[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_routing_regularization_equals_the_old_one_in_value_and_gradients(seed: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(seed)
    b, k, length, dim = 32, 4, 20, 64
    lengths = torch.randint(1, length + 1, (b, 1), generator=g)
    mask = torch.arange(length).unsqueeze(0) < lengths
    logits = torch.randn(b, k, length, generator=g, dtype=dtype) * 3
    routing = (torch.softmax(logits.masked_fill(~mask.unsqueeze(1), -1e9), -1) * mask.unsqueeze(1)).requires_grad_()
    upstream = torch.rand((), generator=g, dtype=dtype) * 100  # a lambda in front of it
    new = _value_and_grads(lambda: upstream * routing_regularization(routing, mask, dim, "authors"), routing)
    old = _value_and_grads(lambda: upstream * routing_regularization_reference(routing, None, dim), routing)
    tol = {"rtol": 1e-9, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(new[0], old[0], **tol)
    torch.testing.assert_close(new[1][0], old[1][0], **tol)
