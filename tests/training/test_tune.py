import json
from pathlib import Path

import pandas as pd
import pytest

from remi.errors import RemiError
from tests.conftest import SMALL
from training.config import load_config
from training.tune import BETA_RANGE, EMB_L2_RANGE, LAM_RANGE, tune


def test_tune_writes_a_config_that_train_accepts_and_a_trials_table(synth_csv: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"train": {"dim": SMALL["dim"], "batch_size": 64, "negatives": 128}}))
    best = tune(
        data=str(synth_csv),
        out=tmp_path,
        scheme="remi",
        trials=2,
        max_steps=60,
        eval_every=30,
        base_config=base,
        threads=1,
    )
    assert BETA_RANGE[0] <= best["train"]["beta"] <= BETA_RANGE[1]
    assert LAM_RANGE[0] <= best["train"]["lam"] <= LAM_RANGE[1]
    cfg = load_config(tmp_path / "best.json", data=str(synth_csv))
    assert cfg.beta == best["train"]["beta"] and cfg.dim == SMALL["dim"] and cfg.scheme == "remi"
    trials = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(trials) == 3  # header + 2 trials
    assert "params_beta" in (tmp_path / "trials.md").read_text()


def test_first_trial_is_the_base_setting_so_the_search_never_ends_below_it(synth_csv: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    settings = {"dim": SMALL["dim"], "batch_size": 64, "negatives": 128, "beta": 0.05, "lam": 20000.0}
    base.write_text(json.dumps({"train": {**settings, "lr": 1e-3, "emb_l2": 0.0}}))
    best = tune(data=str(synth_csv), out=tmp_path, trials=1, max_steps=30, eval_every=30, base_config=base, threads=1)
    # one trial: the best is the base point; emb_l2 0 sits below the log range and is clipped to its floor
    assert best["train"]["beta"] == 0.05 and best["train"]["lam"] == 20000.0 and best["train"]["lr"] == 1e-3
    assert best["train"]["emb_l2"] == EMB_L2_RANGE[0]


def test_tuning_again_into_the_same_folder_continues_the_study_and_refuses_another_one(
    synth_csv: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"train": {"dim": SMALL["dim"], "batch_size": 64, "negatives": 128}}))
    common = {"data": str(synth_csv), "out": tmp_path, "max_steps": 30, "eval_every": 30, "base_config": base}
    tune(trials=1, threads=1, **common)
    best = tune(trials=2, threads=1, **common)
    assert best["tuned_on"]["trials"] == 3
    frame = pd.read_csv(tmp_path / "trials.csv")
    assert sorted(frame["number"]) == [0, 1, 2]
    # the second sitting drew new points, not the base point or the first sitting's again
    assert len({(r.params_beta, r.params_lam, r.params_lr) for r in frame.itertuples()}) == 3
    with pytest.raises(RemiError, match="study of another scheme"):
        tune(trials=1, threads=1, scheme="ihn", **common)
