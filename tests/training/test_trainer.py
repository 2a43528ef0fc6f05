import json
from pathlib import Path

import numpy as np
import pytest
import torch

from remi.contract import ItemVocabulary
from tests.conftest import AUTHORS_REMI, SMALL
from training.config import TrainConfig
from training.evaluate import user_interest_vectors
from training.models import build_model
from training.prepare import prepare
from training.result import TrainResult
from training.runs import evaluate_run, load_run
from training.trainer import train


def _train(cfg: TrainConfig, out: Path) -> TrainResult:
    result = train(cfg, out, show_progress=False)
    assert result is not None  # one process: the lead, which reports
    return result


@pytest.fixture(scope="module")
def sa_run(synth_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(synth_csv), model="comirec-sa", scheme="remi", **{**AUTHORS_REMI, "lam": 100.0}, **SMALL)
    return out, _train(cfg, out)


def test_run_directory_has_checkpoint_config_log_and_metrics(sa_run: tuple[Path, TrainResult]) -> None:
    out, result = sa_run
    for name in ("config.json", "model.pt", "item_ids.txt", "metrics.jsonl", "metrics.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result.to_dict()))  # the typed result is what the file holds
    assert set(saved["test"]) == {"recall@20", "recall@50", "ndcg@20", "ndcg@50", "hr@20", "hr@50"}
    assert {"effective_items", "collapsed_share", "interest_similarity"} <= set(saved["routing"])
    lists = {
        "coverage@50", "diversity@50", "interests_used@50", "interests_searched",
        *(f"interest_share_{k}@50" for k in (1, 2, 3, 4)),
    }  # fmt: skip
    assert set(saved["lists"]) == set(saved["valid_lists"]) == lists
    assert 0 < saved["lists"]["coverage@50"] <= 1 and 0 < saved["lists"]["diversity@50"] <= 2
    assert sum(saved["lists"][f"interest_share_{k}@50"] for k in (1, 2, 3, 4)) == pytest.approx(1.0)
    assert saved["lists"]["interests_searched"] == 4.0  # every interest: the default is not adaptive
    assert saved["steps"] == SMALL["max_steps"] and saved["train_seconds"] > 0
    assert saved["config"]["scheme"] == "remi"
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [250, 500, 750, 1000]
    assert all(set(r["lists"]) == lists for r in log)  # valid users at every evaluation


def test_training_on_planted_data_beats_popularity_by_far(sa_run: tuple[Path, TrainResult]) -> None:
    _, result = sa_run
    assert result.test["recall@50"] > 1.5 * result.popularity_test["recall@50"]


def test_train_then_evaluate_round_trips_the_metrics(sa_run: tuple[Path, TrainResult]) -> None:
    out, result = sa_run
    again = evaluate_run(out)
    for key, value in result.test.items():
        assert again["test"][key] == pytest.approx(value, abs=1e-6)


def test_checkpoint_loads_with_weights_only(sa_run: tuple[Path, TrainResult]) -> None:
    out, _ = sa_run
    state = torch.load(out / "model.pt", weights_only=True)
    assert "item_emb.weight" in state


def _topic_coverage(model, prep, truth: dict) -> float:
    """Share of a user's planted topics that some interest's top-10 items are mostly about."""
    item_topic = np.array([truth["item_topic"][i] for i in prep.data.item_ids])
    interest_vectors, _ = user_interest_vectors(model, prep.test.history, prep.test.mask)
    items = model.item_vectors().detach().numpy()
    scores = interest_vectors @ items.T  # (U, K, I); the history itself is excluded, so copying it earns nothing
    seen = np.zeros((len(scores), items.shape[0]), dtype=bool)
    users = np.repeat(np.arange(len(scores)), prep.test.mask.sum(1))
    seen[users, ItemVocabulary.indices_to_rows(prep.test.history[prep.test.mask])] = True
    scores[np.broadcast_to(seen[:, None, :], scores.shape)] = -np.inf
    top_topics = item_topic[np.argsort(-scores, -1)[:, :, :10]]  # (U, K, 10)
    coverage = []
    for row, user in zip(top_topics, prep.test.users, strict=True):
        planted = set(truth["user_topics"][prep.data.user_ids[user]])
        found = {int(np.bincount(t).argmax()) for t in row}
        coverage.append(len(found & planted) / len(planted))
    return float(np.mean(coverage))


def test_interests_recover_the_planted_topics(sa_run: tuple[Path, TrainResult], synth_dir: Path) -> None:
    out, _ = sa_run
    cfg, model = load_run(out)
    prep = prepare(cfg)
    truth = json.loads((synth_dir / "topics.json").read_text())
    torch.manual_seed(0)
    untrained = build_model(cfg.model, model.n_items, cfg.dim, cfg.interests, cfg.seq_len)
    trained_cov, untrained_cov = _topic_coverage(model, prep, truth), _topic_coverage(untrained, prep, truth)
    assert untrained_cov < 0.15  # chance level: 4 interests among 50 topics
    assert trained_cov > 0.4


@pytest.mark.parametrize("model", ["comirec-dr", "mind", "dnn"])
def test_every_backbone_trains_with_remi(model: str, synth_csv: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=str(synth_csv),
        model=model,
        scheme="remi",
        **{**AUTHORS_REMI, "lam": 100.0},
        **{**SMALL, "max_steps": 200, "eval_every": 100},
    )
    result = _train(cfg, tmp_path)
    assert np.isfinite(result.test["recall@50"]) and result.test["recall@50"] > 0
    assert result.steps == 200


@pytest.mark.parametrize(
    ("model", "scheme", "blocks", "steps", "seq_targets"),
    [("sasrec", "ihn", 2, 300, "all"), ("comirec-sa", "remi", 1, 200, "last"), ("comirec-sa", "remi", 1, 300, "all")],
)
def test_self_attention_backbones_train_and_reload(
    model: str, scheme: str, blocks: int, steps: int, seq_targets: str, synth_csv: Path, tmp_path: Path
) -> None:
    from training.runs import load_run

    cfg = TrainConfig(
        data=str(synth_csv),
        model=model,
        scheme=scheme,
        encoder_blocks=blocks,
        seq_targets=seq_targets,
        **{**SMALL, "max_steps": steps, "eval_every": steps // 2},
    )
    result = _train(cfg, tmp_path)
    assert result.test["recall@50"] > result.popularity_test["recall@50"]
    _, reloaded = load_run(tmp_path)
    assert sum(name.startswith("encoder.blocks") for name in reloaded.state_dict()) > 0


def test_adaptive_interests_search_fewer_interests_for_short_histories(synth_csv: Path, tmp_path: Path) -> None:
    from training.models import active_interests
    from training.prepare import prepare

    cfg = TrainConfig(data=str(synth_csv), adaptive_interests="log2", **{**SMALL, "max_steps": 200, "eval_every": 100})
    result = _train(cfg, tmp_path)
    test = prepare(cfg).test
    expected = active_interests(torch.from_numpy(test.mask), cfg.interests, "log2").sum(1).float().mean().item()
    assert result.lists["interests_searched"] == pytest.approx(expected)
    assert 1 <= result.lists["interests_searched"] <= cfg.interests
    assert result.test["recall@50"] > result.popularity_test["recall@50"]


def test_same_seed_gives_the_same_run(synth_csv: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=str(synth_csv),
        scheme="remi",
        **{**AUTHORS_REMI, "lam": 100.0},
        **{**SMALL, "max_steps": 60, "eval_every": 30},
        threads=1,
    )
    a = _train(cfg, tmp_path / "a")
    b = _train(cfg, tmp_path / "b")
    assert a.test == b.test


def test_early_stopping_stops_after_patience(synth_csv: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=str(synth_csv),
        scheme="sampled",
        **{**SMALL, "max_steps": 5000, "eval_every": 10, "patience": 2, "lr": 1e-7},
    )
    result = _train(cfg, tmp_path)
    assert result.steps < 5000


def test_wall_clock_budget_stops_training_and_still_evaluates(synth_csv: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=str(synth_csv),
        scheme="sampled",
        **{**SMALL, "max_steps": 10_000_000, "eval_every": 1_000_000},
        max_minutes=0.05,
    )
    result = _train(cfg, tmp_path)
    assert 0 < result.steps < 10_000_000
    assert result.best_step == result.steps  # the final partial chunk was evaluated and kept
    assert (tmp_path / "model.pt").is_file()


def test_embedding_l2_penalty_grows_linearly_with_its_weight(synth_csv: Path) -> None:
    from training.data import TrainSampler
    from training.scheme import TrainBatch, TrainingScheme

    cfg = TrainConfig(data=str(synth_csv), scheme="sampled", **SMALL)
    prep = prepare(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, prep.data.n_items, cfg.dim, cfg.interests, cfg.seq_len)
    hist, mask, target = TrainSampler(prep.data, prep.split.train, cfg.seq_len, seed=0).sample(16)
    batch = TrainBatch(torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(target))
    negatives = torch.arange(prep.data.vocabulary.first_index(), 33)
    schemes = [TrainingScheme.from_config(cfg.model_copy(update={"emb_l2": w})) for w in (0.0, 0.1, 0.2)]
    losses = [scheme.step_loss(model, batch, negatives, step=0).total.item() for scheme in schemes]
    assert losses[1] > losses[0]
    assert losses[2] - losses[0] == pytest.approx(2 * (losses[1] - losses[0]), rel=1e-4)


def test_catalogue_smaller_than_the_cutoff_trains_and_evaluates(tmp_path: Path) -> None:
    """40 items < @50: metrics are computed on the shorter lists instead of failing."""
    from training.synth import SynthConfig, write

    data = write(SynthConfig(users=200, items=40, topics=4, min_len=8, max_len=20, seed=3), tmp_path / "d")
    cfg = TrainConfig(
        data=str(data), scheme="sampled", max_steps=20, eval_every=10, batch_size=32, negatives=16, dim=8, min_count=1
    )
    result = _train(cfg, tmp_path / "run")
    assert 0 < result.test["recall@50"] <= 1 and 0 < result.popularity_test["recall@50"] <= 1
