"""Hyper-parameter search of the REMI knobs (beta, lambda, lr) on the valid users, with Optuna.

Selection uses valid Recall@50 only; test users are never looked at, so the tuned settings can
be compared honestly on test afterwards.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import optuna

from remi.errors import RemiError
from training.config import TrainConfig, load_config
from training.prepare import prepare
from training.trainer import train

log = logging.getLogger("remi.tune")

# Search ranges (lambda in the per-user mean convention; the authors' 100 summed = 12,800).
BETA_RANGE = (0.01, 3.0)
LAM_RANGE = (300.0, 1e5)
LR_RANGE = (3e-4, 3e-3)
EMB_L2_RANGE = (1e-3, 0.5)


def search_space(scheme: str, tune_lr: bool) -> dict[str, tuple[float, float]]:
    """The knobs a study searches (each log-uniform over its range): the scheme's own terms, lr when
    asked, and always emb_l2, the norm penalty that stops the late decay (studies/results/decay_fix.md)."""
    space = {}
    if scheme in ("ihn", "remi"):
        space["beta"] = BETA_RANGE
    if scheme in ("rr", "remi"):
        space["lam"] = LAM_RANGE
    if tune_lr:
        space["lr"] = LR_RANGE
    space["emb_l2"] = EMB_L2_RANGE
    return space


def suggest(trial: optuna.Trial, scheme: str, tune_lr: bool) -> dict[str, Any]:
    return {
        name: trial.suggest_float(name, *bounds, log=True) for name, bounds in search_space(scheme, tune_lr).items()
    }


def base_point(cfg: TrainConfig, scheme: str, tune_lr: bool) -> dict[str, float]:
    """The base config's values of the searched knobs, clipped into their ranges."""
    return {
        name: min(max(float(getattr(cfg, name)), low), high)
        for name, (low, high) in search_space(scheme, tune_lr).items()
    }


def open_study(out: Path, base: TrainConfig, scheme: str, max_steps: int, split_file: str | None) -> optuna.Study:
    """The study kept in ``out/study.db``: running ``remi tune`` again with the same ``--out`` adds
    trials to it (TPE's model then has the earlier ones), which a 2-core machine needs to reach
    past the sampler's random start-up trials in several sittings. A study of other data, backbone,
    scheme, split or budget is refused rather than mixed in."""
    what = {
        "data": str(base.data),
        "model": base.model,
        "scheme": scheme,
        "max_steps": max_steps,
        "split_file": split_file,
    }
    study = optuna.create_study(
        study_name="remi-tune",
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        direction="maximize",
        load_if_exists=True,
    )
    if study.user_attrs and study.user_attrs != what:
        differs = sorted(k for k in what if study.user_attrs.get(k) != what[k])
        raise RemiError(f"{out / 'study.db'} is a study of another {', '.join(differs)}: use another --out")
    for key, value in what.items():
        study.set_user_attr(key, value)
    return study


def tune(
    data: str,
    out: str | Path,
    model: str = "comirec-sa",
    scheme: str = "remi",
    trials: int = 20,
    max_steps: int = 10_000,
    eval_every: int = 1000,
    split_file: str | None = None,
    tune_lr: bool = True,
    base_config: str | Path | None = None,
    seed: int = 2021,
    threads: int | None = None,
) -> dict[str, Any]:
    """Runs (or continues, see open_study) the study; writes ``best.json`` (accepted by ``remi train
    --config``) and ``trials.csv``/``trials.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(
        base_config,
        data=data,
        model=model,
        scheme=scheme,
        max_steps=max_steps,
        eval_every=eval_every,
        split_file=split_file,
        seed=seed,
        threads=threads,
    )
    prepared = prepare(base)  # load and split once for all trials

    def objective(trial: optuna.Trial) -> float:
        cfg = base.model_copy(update=suggest(trial, scheme, tune_lr))
        with tempfile.TemporaryDirectory() as run_dir:
            result = train(cfg, run_dir, prepared=prepared, show_progress=False)
        assert result is not None  # tuning runs in one process, the lead
        trial.set_user_attr("best_step", result.best_step)
        trial.set_user_attr("valid_recall@20", result.valid["recall@20"])
        trial.set_user_attr("effective_items", result.routing["effective_items"])
        trial.set_user_attr("interest_similarity", result.routing["interest_similarity"])
        return result.valid["recall@50"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(out, base, scheme, max_steps, split_file)
    done = len(study.trials)
    if not done:
        # Trial 0 is the base setting itself (clipped into the search ranges), so the study's best is
        # never worse on valid than what it started from; TPE learns from it like from any trial.
        study.enqueue_trial(base_point(base, scheme, tune_lr))
    # a resumed study draws new points: the sampler's seed moves on with the trials already run
    study.sampler = optuna.samplers.TPESampler(seed=seed + done)
    study.optimize(objective, n_trials=trials, show_progress_bar=True)

    frame = study.trials_dataframe().sort_values("value", ascending=False)
    frame.to_csv(out / "trials.csv", index=False)
    cols = [c for c in frame.columns if c.startswith(("params_", "user_attrs_")) or c in ("number", "value")]
    (out / "trials.md").write_text(frame[cols].to_markdown(index=False, floatfmt=".4g") + "\n")
    # Ship the model and scheme settings only; data, budget and machine belong to each run's flags.
    run_specific = ("data", "split_file", "threads", "device", "max_steps", "max_minutes", "eval_every", "seed")
    best_settings = {name: value for name, value in base.model_dump().items() if name not in run_specific}
    best_settings.update(study.best_params)
    best = {
        "train": best_settings,
        "valid_recall@50": study.best_value,
        "tuned_on": {"data": str(data), "split_file": split_file, "trials": len(study.trials), "max_steps": max_steps},
    }
    (out / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    log.info("tune done", extra={"best": study.best_params, "valid_recall@50": study.best_value})
    return best
