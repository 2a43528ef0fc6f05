import pytest
import torch

from remi.contract import ItemVocabulary
from training.models import MODELS, build_model

VOCAB = ItemVocabulary([f"i{row}" for row in range(50)])


def _batch(b: int = 6, length: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), (b, length), generator=g)
    lengths = torch.tensor([1, 2, 3, 5, 8, 8])[:b]
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_routing_rows_are_distributions_over_valid_items(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, n_items=50, dim=16, n_interests=4, seq_len=8).eval()
    ids, mask = _batch()
    interest_vectors, routing = model(ids, mask)
    n_interests = 1 if name == "dnn" else 4
    assert interest_vectors.shape == (6, n_interests, 16) and routing.shape == (6, n_interests, 8)
    assert torch.allclose(routing.sum(-1), torch.ones(6, n_interests), atol=1e-5)
    assert (routing.masked_select(~mask.unsqueeze(1).expand_as(routing)) == 0).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train_mode", [False, True])
def test_padding_never_changes_an_output(name: str, train_mode: bool) -> None:
    torch.manual_seed(0)
    model = build_model(name, n_items=50, dim=16, n_interests=4, seq_len=8).train(train_mode)
    ids, mask = _batch()
    junk = torch.randint(VOCAB.first_index(), VOCAB.index_stop(), ids.shape)
    garbage = ids.masked_fill(~mask, 0) + (~mask) * junk  # junk ids in padded slots
    state = torch.random.get_rng_state()
    v1, r1 = model(ids, mask)
    torch.random.set_rng_state(state)  # MIND draws routing noise in training mode
    v2, r2 = model(garbage, mask)
    assert torch.equal(v1, v2) and torch.equal(r1, r2)


@pytest.mark.parametrize("name", MODELS)
def test_a_user_is_encoded_the_same_alone_or_in_a_batch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, n_items=50, dim=16, n_interests=4, seq_len=8).eval()
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
