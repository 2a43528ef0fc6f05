"""The training scheme as one unit: which terms each scheme turns on, and how they compose."""

import pytest
import torch

from remi.contract import ItemVocabulary
from training.config import TrainConfig
from training.losses import routing_regularization
from training.models import build_model
from training.scheme import TrainBatch, TrainingScheme, UniformNegatives

VOCAB = ItemVocabulary([f"i{row}" for row in range(40)])


def _batch() -> tuple[TrainBatch, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    history = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), (8, 6), generator=g)
    mask = torch.arange(6)[None, :] < torch.tensor([1, 2, 3, 4, 5, 6, 6, 6])[:, None]
    target = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), (8,), generator=g)
    batch = TrainBatch(history.masked_fill(~mask, ItemVocabulary.PADDING), mask, target)
    return batch, UniformNegatives(VOCAB, 16, seed=0).sample()


@pytest.mark.parametrize(("scheme", "ihn", "rr"), [("sampled", False, False), ("ihn", True, False),
                                                   ("rr", False, True), ("remi", True, True)])  # fmt: skip
def test_each_scheme_turns_on_its_terms(scheme: str, ihn: bool, rr: bool) -> None:
    unit = TrainingScheme.from_config(TrainConfig(scheme=scheme, beta=0.5, lam=10.0))
    assert (unit.beta > 0) == ihn and (unit.lam > 0) == rr


def test_beta_warms_up_linearly_then_stays() -> None:
    unit = TrainingScheme.from_config(TrainConfig(scheme="ihn", beta=2.0, ihn_warmup=10))
    assert [unit.beta_at(step) for step in (0, 5, 10, 100)] == [0.0, 1.0, 2.0, 2.0]


def test_total_is_softmax_plus_lambda_times_rr() -> None:
    torch.manual_seed(0)
    model = build_model("comirec-sa", VOCAB.n_items, dim=8, n_interests=3, seq_len=6)
    batch, negatives = _batch()
    loss = TrainingScheme.from_config(TrainConfig(scheme="remi", beta=0.5, lam=10.0, emb_l2=0.0)).step_loss(
        model, batch, negatives, step=0
    )
    assert loss.rr.item() > 0 and loss.scores is None
    assert loss.total.item() == pytest.approx(loss.softmax.item() + 10.0 * loss.rr.item(), rel=1e-6)
    sampled = TrainingScheme.from_config(TrainConfig(scheme="sampled")).step_loss(model, batch, negatives, step=0)
    assert sampled.rr.item() == 0 and torch.equal(sampled.total, sampled.softmax)


def test_score_diagnostics_only_when_asked() -> None:
    torch.manual_seed(0)
    model = build_model("comirec-sa", VOCAB.n_items, dim=8, n_interests=3, seq_len=6)
    batch, negatives = _batch()
    unit = TrainingScheme.from_config(TrainConfig(scheme="sampled"))
    scores = unit.step_loss(model, batch, negatives, step=0, with_scores=True).scores
    assert scores is not None and scores.ihn_effective_negatives == pytest.approx(16.0)  # beta 0: uniform weights


def test_negatives_are_real_items_and_repeat_with_the_seed() -> None:
    first = UniformNegatives(VOCAB, 500, seed=3).sample()
    assert first.min() >= VOCAB.first_index() and first.max() < VOCAB.index_stop()
    assert torch.equal(first, UniformNegatives(VOCAB, 500, seed=3).sample())


def test_distinctness_options_are_off_by_default() -> None:
    unit = TrainingScheme.from_config(TrainConfig())
    assert (unit.rr_scope, unit.interest_div) == ("interest", 0.0)


def test_interest_div_adds_its_weighted_overlap_and_rr_scope_changes_only_rr() -> None:
    from training.losses import interest_overlap

    torch.manual_seed(0)
    model = build_model("comirec-sa", VOCAB.n_items, dim=8, n_interests=3, seq_len=6)
    batch, negatives = _batch()
    settings = {"scheme": "remi", "beta": 0.5, "lam": 10.0}
    plain = TrainingScheme.from_config(TrainConfig(**settings))
    output = plain.forward(model, batch, negatives)
    base = plain.loss(output, batch, negatives, step=0)
    div = TrainingScheme.from_config(TrainConfig(**settings, interest_div=2.0, interest_div_margin=0.1))
    with_div = div.loss(output, batch, negatives, step=0)
    overlap = interest_overlap(output.interest_vectors, 0.1).item()
    assert overlap > 0
    assert with_div.total.item() == pytest.approx(base.total.item() + 2.0 * overlap, rel=1e-6)
    mean = TrainingScheme.from_config(TrainConfig(**settings, rr_scope="mean")).loss(output, batch, negatives, step=0)
    assert torch.equal(mean.softmax, base.softmax) and mean.rr.item() < base.rr.item()  # the mean row is flatter


def test_interest_div_on_the_tower_only_leaves_the_item_table_alone() -> None:
    torch.manual_seed(0)
    model = build_model("comirec-sa", VOCAB.n_items, dim=8, n_interests=3, seq_len=6)
    batch, negatives = _batch()
    grads = {}
    for where in ("all", "tower"):
        unit = TrainingScheme.from_config(TrainConfig(scheme="sampled", interest_div=1.0, interest_div_grad=where))
        output = unit.forward(model, batch, negatives)
        assert output.div_vectors is not None and torch.allclose(output.div_vectors, output.interest_vectors)
        model.zero_grad()
        loss = unit.loss(output, batch, negatives, step=0)
        (loss.total - loss.softmax).backward()  # the div term alone
        grads[where] = {name: p.grad.abs().sum().item() for name, p in model.named_parameters() if p.grad is not None}
    assert grads["all"]["item_emb.weight"] > 0
    assert grads["tower"].get("item_emb.weight", 0.0) == 0.0
    assert grads["tower"]["w2.weight"] > 0 and grads["tower"]["w1.weight"] > 0


def test_shared_interest_leaves_its_fixed_row_out_of_rr() -> None:
    torch.manual_seed(0)
    model = build_model("comirec-sa", VOCAB.n_items, dim=8, n_interests=3, seq_len=6, shared_interest=True)
    batch, negatives = _batch()
    cfg = TrainConfig(scheme="remi", lam=10.0, shared_interest=True, rr_norm="valid")
    loss = TrainingScheme.from_config(cfg).step_loss(model, batch, negatives, step=0)
    routing = model(batch.history, batch.mask)[1]
    assert loss.rr.item() == pytest.approx(routing_regularization(routing[:, 1:], batch.mask, 8, "valid").item())
    assert loss.rr.item() != pytest.approx(routing_regularization(routing, batch.mask, 8, "valid").item())


@pytest.mark.parametrize("model", ["comirec-dr", "mind", "dnn"])
def test_shared_interest_is_a_comirec_sa_setting(model: str) -> None:
    with pytest.raises(ValueError, match="shared_interest"):
        TrainConfig(model=model, shared_interest=True)


def test_sasrec_all_positions_predict_each_next_item_and_the_newest_the_target() -> None:
    """SASRec's own objective: position i's output is scored against history[i + 1], the newest
    position against the drawn target; padded slots give no example."""
    from training.config import TrainConfig
    from training.models import model_from_config

    torch.manual_seed(0)
    cfg = TrainConfig(model="sasrec", seq_targets="all", dim=16, seq_len=6, scheme="sampled")
    model = model_from_config(cfg, 40).eval()  # no dropout, so the two passes compare
    history = torch.tensor([[3, 4, 5, 0, 0, 0], [7, 8, 9, 10, 11, 12]])
    batch = TrainBatch(history, history != 0, torch.tensor([6, 13]))
    scheme = TrainingScheme.from_config(cfg)
    output = scheme.forward(model, batch, torch.arange(1, 20))
    assert output.seq_targets is not None and output.seq_users is not None and output.seq_target_emb is not None
    assert output.seq_targets.tolist() == [4, 5, 6, 8, 9, 10, 11, 12, 13]
    assert torch.equal(output.seq_target_emb, model.item_emb(output.seq_targets))
    _, _, every = model.with_sequence(model.embed(history, history != 0), history != 0)  # type: ignore[operator]
    assert torch.allclose(output.seq_users[2], every[0, 2])  # user 0's newest position
    assert torch.allclose(output.interest_vectors[0, 0], every[0, 2])  # the served vector is that same one
    loss = scheme.loss(output, batch, torch.arange(1, 20), step=0)
    assert torch.isfinite(loss.total)
    with pytest.raises(ValueError, match="causal encoder"):
        TrainConfig(model="comirec-sa", seq_targets="all")
