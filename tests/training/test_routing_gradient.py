"""Which parameters the REMI terms reach on each backbone (docs/remi.md#a10-rr-and-ihn-on-the-capsule-backbones).

Dynamic routing updates its logits from detached agreements, so in ComiRec's form the capsule
models' coupling coefficients depend on no parameter and RR is a constant. remi-match keeps the
gradient of the last routing update for the routing matrix; these tests measure it per parameter.
"""

from __future__ import annotations

import pytest
import torch

from remi.contract import ItemVocabulary
from training.losses import hard_readout, ihn_loss, routing_regularization
from training.models import CapsuleInterests, build_model, squash

N_ITEMS, D, K, L = 50, 16, 4, 8
ROUTING_PARAMETERS = {  # what each backbone's routing matrix is computed from
    "comirec-sa": {"item_emb.weight", "pos", "w1.weight", "w2.weight"},
    "comirec-dr": {"item_emb.weight", "bilinear"},
    "mind": {"item_emb.weight", "bilinear"},
}


def _batch(b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(ItemVocabulary.first_index(), N_ITEMS + 1, (b, L), generator=g)
    mask = torch.arange(L)[None, :] < torch.tensor([2, 3, 5, 8, 8, 6])[:b, None]
    return ids.masked_fill(~mask, 0), mask


def _gradients(model: torch.nn.Module, term: torch.Tensor) -> dict[str, float]:
    """Largest absolute gradient of ``term`` per parameter (0 where it does not depend on it)."""
    params = dict(model.named_parameters())
    if not term.requires_grad:
        return dict.fromkeys(params, 0.0)
    grads = torch.autograd.grad(term, list(params.values()), allow_unused=True)
    return {name: 0.0 if g is None else g.abs().max().item() for name, g in zip(params, grads, strict=True)}


@pytest.mark.parametrize("name", sorted(ROUTING_PARAMETERS))
def test_rr_gradient_reaches_every_parameter_the_routing_is_computed_from(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, D, K, L).train()
    ids, mask = _batch()
    _, routing = model(ids, mask)
    reached = {p for p, g in _gradients(model, routing_regularization(routing, mask, D)).items() if g > 0}
    assert reached == ROUTING_PARAMETERS[name]


def test_rr_is_a_constant_for_the_mean_pooling_reference() -> None:
    model = build_model("dnn", N_ITEMS, D, 1, L).train()
    ids, mask = _batch()
    _, routing = model(ids, mask)
    assert set(_gradients(model, routing_regularization(routing, mask, D)).values()) == {0.0}


@pytest.mark.parametrize("name", sorted(ROUTING_PARAMETERS))
@pytest.mark.parametrize("detach", [False, True])
def test_ihn_reaches_the_interest_parameters_of_every_backbone(name: str, detach: bool) -> None:
    """IHN scores the read-out interest, whose vector carries the gradient of the predictions û (capsules)."""
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, D, K, L).train()
    ids, mask = _batch()
    interests, _ = model(ids, mask)
    target, negatives = model.item_emb(ids[:, 0]), model.item_emb(torch.arange(1, 21))
    user = hard_readout(interests, target)
    loss = ihn_loss((user * target).sum(-1), user @ negatives.T, beta=0.5, detach_weights=detach)
    reached = {p for p, g in _gradients(model, loss).items() if g > 0}
    assert reached == ROUTING_PARAMETERS[name]


def _comirec_routing(model: CapsuleInterests, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ComiRec's dynamic routing, every update detached (what the model did before A.10): (B, K, d)."""
    if model.shared:
        u_hat = (h @ model.bilinear).unsqueeze(1).expand(-1, model.n_interests, -1, -1)
        logits = model.init_logits[:, : h.shape[1]].unsqueeze(0).expand(h.shape[0], -1, -1)
    else:
        u_hat = torch.einsum("lkij,blj->bkli", model.bilinear[: h.shape[1]], h)
        logits = torch.zeros(h.shape[0], model.n_interests, h.shape[1])
    valid, u_fixed = mask.unsqueeze(1).to(h.dtype), u_hat.detach()
    for it in range(model.iterations):
        c = torch.softmax(logits, dim=1) * valid
        last = it == model.iterations - 1
        v = squash((c.unsqueeze(-1) * (u_hat if last else u_fixed)).sum(2))
        if not last:
            logits = logits + (u_fixed * v.unsqueeze(2)).sum(-1)
    return v


@pytest.mark.parametrize("name", ["comirec-dr", "mind"])
def test_capsule_interests_and_their_gradients_are_those_of_comirec_routing(name: str) -> None:
    """The routing gradient is for RR only: the interests, and what the softmax/IHN terms send back
    through them, are bit for bit those of the fully detached routing, so `sampled` is unchanged."""
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, D, K, L).eval()  # eval: MIND's fixed initial logits
    ids, mask = _batch()
    h = model.embed(ids, mask)
    ours, _ = model.from_embeddings(h, mask)
    reference = _comirec_routing(model, model.embed(ids, mask), mask)  # type: ignore[arg-type]
    assert torch.equal(ours, reference)
    weights = torch.randn(ours.shape)
    grads = [torch.autograd.grad((v * weights).sum(), list(model.parameters())) for v in (ours, reference)]
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


@pytest.mark.parametrize("name", ["comirec-dr", "mind"])
def test_rr_alone_spreads_the_capsule_routing(name: str) -> None:
    """Descending RR alone now moves the routing rows towards uniform (before A.10 it could not move them).

    Measured above RR's floor, the value of rows uniform over each user's valid items (> 0 for
    histories shorter than L). MIND keeps part of the excess: its initial logits are fixed noise.
    """
    torch.manual_seed(0)
    model = build_model(name, N_ITEMS, D, K, L).eval()
    ids, mask = _batch()
    uniform = (mask / mask.sum(-1, keepdim=True)).unsqueeze(1).expand(-1, K, -1)
    floor = routing_regularization(uniform, mask, D).item()
    optim = torch.optim.Adam(model.parameters(), lr=0.05)
    excess = []
    for _ in range(30):
        rr = routing_regularization(model(ids, mask)[1], mask, D)
        excess.append(rr.item() - floor)
        optim.zero_grad()
        (1e4 * rr).backward()
        optim.step()
    assert excess[0] > 0 and excess[-1] < 0.6 * excess[0]
