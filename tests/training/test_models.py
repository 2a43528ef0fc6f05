import pytest
import torch

from remi.contract import ItemVocabulary
from training.models import MODELS, EncoderSpec, MultiInterestModel, active_interests, build_model

VOCAB = ItemVocabulary([f"i{row}" for row in range(50)])


# every backbone, plus ComiRec-SA over self-attention blocks
BACKBONES = [*MODELS, "comirec-sa-tf"]
SINGLE_VECTOR = ("dnn", "sasrec")


def _build(name: str, **kwargs: object) -> MultiInterestModel:
    if name == "comirec-sa-tf":
        return build_model("comirec-sa", encoder=EncoderSpec(blocks=2, heads=2, dropout=0.2), **kwargs)  # type: ignore[arg-type]
    return build_model(name, **kwargs)  # type: ignore[arg-type]


def _batch(b: int = 6, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), (b, length), generator=g)
    lengths = torch.tensor([1, 2, 3, 5, 8, 8])[:b]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


@pytest.mark.parametrize("name", BACKBONES)
def test_shapes_and_routing_rows_are_distributions_over_valid_items(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name, n_items=50, dim=16, n_interests=4, seq_len=8).eval()
    ids, mask = _batch()
    interest_vectors, routing = model(ids, mask)
    n_interests = 1 if name in SINGLE_VECTOR else 4
    assert interest_vectors.shape == (6, n_interests, 16) and routing.shape == (6, n_interests, 8)
    assert torch.allclose(routing.sum(-1), torch.ones(6, n_interests), atol=1e-5)
    assert (routing.masked_select(~mask.unsqueeze(1).expand_as(routing)) == 0).all()


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("train_mode", [False, True])
def test_padding_never_changes_an_output(name: str, train_mode: bool) -> None:
    torch.manual_seed(0)
    model = _build(name, n_items=50, dim=16, n_interests=4, seq_len=8).train(train_mode)
    ids, mask = _batch()
    junk = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), ids.shape)
    garbage = ids.masked_fill(~mask, 0) + (~mask) * junk  # junk ids in padded slots
    state = torch.random.get_rng_state()
    v1, r1 = model(ids, mask)
    torch.random.set_rng_state(state)  # MIND draws routing noise in training mode
    v2, r2 = model(garbage, mask)
    assert torch.equal(v1, v2) and torch.equal(r1, r2)


@pytest.mark.parametrize("name", BACKBONES)
def test_a_user_is_encoded_the_same_alone_or_in_a_batch(name: str) -> None:
    torch.manual_seed(0)
    model = _build(name, n_items=50, dim=16, n_interests=4, seq_len=8).eval()
    ids, mask = _batch()
    v_all, r_all = model(ids, mask)
    v_one, r_one = model(ids[2:3], mask[2:3])
    assert torch.allclose(v_all[2:3], v_one, atol=1e-6) and torch.allclose(r_all[2:3], r_one, atol=1e-6)


def test_sa_training_and_eval_paths_agree() -> None:
    """The packed (valid-positions-only) training path is an optimisation, not a different model."""
    torch.manual_seed(0)
    model = build_model("comirec-sa", n_items=50, dim=16, n_interests=4, seq_len=8)
    ids, mask = _batch()
    v_train, r_train = model.train()(ids, mask)
    v_eval, r_eval = model.eval()(ids, mask)
    assert torch.allclose(v_train, v_eval, atol=1e-6) and torch.allclose(r_train, r_eval, atol=1e-6)


def test_padding_row_stays_zero() -> None:
    model = build_model("comirec-sa", n_items=10, dim=8)
    assert torch.count_nonzero(model.item_emb.weight[ItemVocabulary.PADDING]) == 0
    assert model.item_vectors().shape == (10, 8)


@pytest.mark.parametrize("train_mode", [False, True])
def test_shared_interest_is_the_history_mean_and_the_others_stay_free(train_mode: bool) -> None:
    torch.manual_seed(0)
    model = build_model("comirec-sa", n_items=50, dim=16, n_interests=4, seq_len=8, shared_interest=True)
    ids, mask = _batch()
    vectors, routing = model.train(train_mode)(ids, mask)
    n = mask.sum(1, keepdim=True).float()
    assert torch.allclose(routing[:, 0], mask.float() / n, atol=1e-6)
    h = model.embed(ids, mask)
    assert torch.allclose(vectors[:, 0], h.sum(1) / n, atol=1e-5)
    free = build_model("comirec-sa", n_items=50, dim=16, n_interests=4, seq_len=8)
    free.load_state_dict(model.state_dict())  # the same weights: only row 0 differs
    free_vectors, free_routing = free.train(train_mode)(ids, mask)
    assert torch.equal(routing[:, 1:], free_routing[:, 1:]) and torch.equal(vectors[:, 1:], free_vectors[:, 1:])
    assert not torch.allclose(routing[:, 0], free_routing[:, 0])


def test_shared_interest_is_refused_on_other_backbones() -> None:
    for name in ("comirec-dr", "mind", "dnn"):
        with pytest.raises(ValueError, match="shared_interest"):
            build_model(name, n_items=50, dim=16, n_interests=4, seq_len=8, shared_interest=True)


def test_sasrec_reads_only_the_past_and_its_vector_is_the_last_items_output() -> None:
    """Causal: a position's output never depends on newer items; the user vector is the newest position's."""
    torch.manual_seed(0)
    model = build_model("sasrec", n_items=50, dim=16, seq_len=8).eval()
    ids, mask = _batch()
    out, _ = model.encoder(model.embed(ids, mask), mask)  # type: ignore[operator]
    changed = ids.clone()
    changed[:, 4:] = torch.where(mask[:, 4:], (changed[:, 4:] % 49) + 1, changed[:, 4:])
    out2, _ = model.encoder(model.embed(changed, mask), mask)  # type: ignore[operator]
    assert torch.allclose(out[:, :4], out2[:, :4], atol=1e-6)  # older positions untouched
    assert not torch.allclose(out[4:, 4], out2[4:, 4])  # a changed item changes its own output
    user, routing = model(ids, mask)
    last = mask.sum(1) - 1
    assert torch.allclose(user[:, 0], out[torch.arange(len(ids)), last], atol=1e-6)
    # the routing row is that position's attention: only over itself and older valid items
    assert (routing[:, 0] * (torch.arange(8)[None] > last[:, None])).abs().max() == 0


def test_sasrec_sees_item_order_through_recency_positions() -> None:
    """The same items in another order give another vector (mean pooling would not)."""
    torch.manual_seed(0)
    model = build_model("sasrec", n_items=50, dim=16, seq_len=8).eval()
    ids = torch.tensor([[3, 7, 11, 19, 0, 0, 0, 0], [19, 11, 7, 3, 0, 0, 0, 0]])
    mask = ids != 0
    user, _ = model(ids, mask)
    assert not torch.allclose(user[0], user[1], atol=1e-4)


def test_the_encoder_under_comirec_sa_changes_the_interests_and_trains_its_blocks() -> None:
    torch.manual_seed(0)
    plain = build_model("comirec-sa", n_items=50, dim=16, n_interests=4, seq_len=8)
    torch.manual_seed(0)
    encoded = _build("comirec-sa-tf", n_items=50, dim=16, n_interests=4, seq_len=8)
    ids, mask = _batch()
    assert not torch.allclose(plain.eval()(ids, mask)[0], encoded.eval()(ids, mask)[0])
    encoded.train()(ids, mask)[0].sum().backward()
    block_grads = [p.grad for n, p in encoded.named_parameters() if n.startswith("encoder.blocks")]
    assert block_grads and all(g is not None and g.abs().sum() > 0 for g in block_grads)


def test_encoder_blocks_go_only_under_attention_backbones() -> None:
    with pytest.raises(ValueError, match="self-attention blocks"):
        build_model("mind", n_items=50, dim=16, encoder=EncoderSpec(blocks=1))
    with pytest.raises(ValueError, match="divisible"):
        build_model("sasrec", n_items=50, dim=15, encoder=EncoderSpec(blocks=1, heads=2))


@pytest.mark.parametrize("base", [2, 3, 4])
def test_log_rules_give_a_user_as_many_interests_as_their_history_supports(base: int) -> None:
    """MIND's rule max(1, min(K, ceil(log_b n))) (b = 2 in MIND), always the first interests."""
    lengths = torch.arange(0, 80)
    mask = torch.arange(80)[None, :] < lengths[:, None]
    active = active_interests(mask, 4, f"log{base}")
    # ceil(log_b n) by integer powers: the smallest e with b^e >= n
    expected = [max(1, min(4, next(e for e in range(10) if base**e >= n))) if n > 0 else 1 for n in lengths.tolist()]
    assert active.sum(1).tolist() == expected
    assert all(row[: int(row.sum())].all() for row in active)  # a prefix of the K
    assert active_interests(mask, 4, "off").all()
    with pytest.raises(ValueError, match="unknown adaptive-interest rule"):
        active_interests(mask, 4, "gate")


def test_comirec_sa_over_a_causal_encoder_gives_interests_for_every_prefix() -> None:
    """Prefix i's K interests read items <= i only; the newest prefix is the served model's output."""
    torch.manual_seed(0)
    model = build_model(
        "comirec-sa", n_items=50, dim=16, n_interests=4, seq_len=8, encoder=EncoderSpec(blocks=2, causal=True)
    ).eval()
    ids, mask = _batch()
    h = model.embed(ids, mask)
    user, routing, every = model.with_sequence(h, mask)  # type: ignore[operator]
    served, served_routing = model(ids, mask)
    assert every.shape == (6, 8, 4, 16)
    assert torch.allclose(user, served, atol=1e-5) and torch.allclose(routing, served_routing, atol=1e-6)
    changed = ids.clone()
    changed[:, 4:] = torch.where(mask[:, 4:], (changed[:, 4:] % 49) + 1, changed[:, 4:])
    _, _, every2 = model.with_sequence(model.embed(changed, mask), mask)  # type: ignore[operator]
    assert torch.allclose(every[:, :4], every2[:, :4], atol=1e-6)  # older prefixes untouched
    with pytest.raises(ValueError, match="causal encoder"):
        build_model("comirec-sa", n_items=50, dim=16, seq_len=8, encoder=EncoderSpec(blocks=1)).with_sequence(h, mask)  # type: ignore[operator]
