"""A bare `remi train` trains the recommended model: the defaults are configs/default.json
(docs/remi.md#a7-defaults)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.config import TrainConfig, load_config
from training.scheme import TrainingScheme

SHIPPED = Path(__file__).parents[2] / "configs" / "default.json"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("REMI_TRAIN_")]:
        monkeypatch.delenv(var)


def test_the_defaults_are_the_shipped_default_config(no_env: None) -> None:
    shipped = json.loads(SHIPPED.read_text())["train"]
    assert shipped, "configs/default.json has no train settings"
    defaults = TrainConfig().model_dump()
    assert {name: defaults[name] for name in shipped} == shipped
    assert load_config(SHIPPED) == TrainConfig()  # training with the file is training with no flag


def test_scheme_sampled_alone_turns_off_every_remi_term(no_env: None) -> None:
    sampled = TrainingScheme.from_config(TrainConfig(scheme="sampled"))
    assert sampled.beta == 0.0 and sampled.lam == 0.0  # the remi defaults of beta and lam do not apply
    assert sampled == TrainingScheme.from_config(TrainConfig(scheme="sampled", beta=1.0, lam=12800.0))


def test_sampled_alone_is_the_plain_baseline_without_the_recommended_regularisers(no_env: None) -> None:
    shipped = json.loads(SHIPPED.read_text())["train"]
    assert shipped["emb_l2"] > 0 and shipped["lr_schedule"] == "cosine"  # what this test is about
    sampled = TrainConfig(scheme="sampled")
    assert (sampled.emb_l2, sampled.lr_schedule) == (0.0, "constant")
    for scheme in ("ihn", "rr", "remi"):  # the ablations share the recommended regularisers
        cfg = TrainConfig(scheme=scheme)
        assert (cfg.emb_l2, cfg.lr_schedule) == (shipped["emb_l2"], shipped["lr_schedule"])


def test_sampled_keeps_regularisers_that_are_asked_for(no_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrainConfig(scheme="sampled", emb_l2=0.2).emb_l2 == 0.2
    assert TrainConfig(scheme="sampled", lr_schedule="cosine").lr_schedule == "cosine"
    monkeypatch.setenv("REMI_TRAIN_EMB_L2", "0.3")
    assert load_config(None, scheme="sampled").emb_l2 == 0.3


def test_tuned_configs_pin_the_regularisers_they_were_tuned_with() -> None:
    """A tuned config carries the regularisers it was searched with, so a later default never changes it."""
    for path in sorted(SHIPPED.parent.glob("*.json")):
        settings = json.loads(path.read_text()).get("train", {})
        if path.name in ("default.json", "tune_base.json"):
            continue
        assert "emb_l2" in settings and "lr_schedule" in settings, path.name


def test_per_backbone_defaults_are_the_shipped_files(no_env: None) -> None:
    from training.config import MODEL_DEFAULTS

    shipped = json.loads(SHIPPED.read_text())
    assert MODEL_DEFAULTS == shipped["models"]
    for model, settings in MODEL_DEFAULTS.items():
        cfg = TrainConfig(model=model)
        assert {name: getattr(cfg, name) for name in settings} == settings
        assert load_config(SHIPPED, model=model) == cfg  # the file with --model is the bare command


def test_mind_trains_without_emb_l2_unless_asked_and_other_backbones_keep_it(
    no_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = json.loads(SHIPPED.read_text())["train"]
    assert TrainConfig(model="mind").emb_l2 == 0.0
    assert TrainConfig(model="mind", emb_l2=0.1).emb_l2 == 0.1
    assert load_config(SHIPPED, model="mind", emb_l2=0.2).emb_l2 == 0.2
    for model in ("comirec-sa", "comirec-dr", "dnn"):
        assert TrainConfig(model=model).emb_l2 == shipped["emb_l2"]
    monkeypatch.setenv("REMI_TRAIN_EMB_L2", "0.3")
    assert load_config(None, model="mind").emb_l2 == 0.3


def test_sasrec_is_one_vector_trained_with_ihn_and_refuses_rr(no_env: None) -> None:
    cfg = TrainConfig(model="sasrec", interests=4)
    assert (cfg.interests, cfg.scheme, cfg.encoder_blocks) == (1, "ihn", 2)
    assert load_config(SHIPPED, model="sasrec").scheme == "ihn"
    assert TrainConfig(model="sasrec", scheme="sampled").effective_beta == 0.0
    for scheme in ("rr", "remi"):
        with pytest.raises(ValueError, match="no routing to act on"):
            TrainConfig(model="sasrec", scheme=scheme)
    with pytest.raises(ValueError, match="encoder_blocks >= 1"):
        TrainConfig(model="sasrec", encoder_blocks=0)


def test_encoder_blocks_are_refused_where_no_attention_reads_them(no_env: None) -> None:
    assert TrainConfig(encoder_blocks=2).encoder_blocks == 2  # ComiRec-SA over the blocks
    for model in ("comirec-dr", "mind", "dnn"):
        with pytest.raises(ValueError, match="encoder_blocks applies to"):
            TrainConfig(model=model, encoder_blocks=1)
    with pytest.raises(ValueError, match="divisible by encoder_heads"):
        TrainConfig(encoder_blocks=1, dim=30, encoder_heads=4)
