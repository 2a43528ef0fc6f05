"""Reading a finished run folder back: its config, its best model, and its scores recomputed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from remi.contract import RUN_CONFIG, RUN_ITEM_IDS, RUN_WEIGHTS
from remi.errors import RemiError
from training.config import TrainConfig
from training.diagnostics import near_copy_warning
from training.evaluate import evaluate
from training.models import MultiInterestModel, model_from_config
from training.prepare import prepare


def load_run(run_dir: str | Path) -> tuple[TrainConfig, MultiInterestModel]:
    """Rebuilds the config and the best model of a run directory."""
    run = Path(run_dir)
    cfg_path, weights = run / RUN_CONFIG, run / RUN_WEIGHTS
    if not cfg_path.is_file() or not weights.is_file():
        raise RemiError(f"{run}: not a run directory (needs {RUN_CONFIG} and {RUN_WEIGHTS})")
    saved = json.loads(cfg_path.read_text())
    n_items = saved.pop("n_items")
    trained_in = saved.pop("cwd", None)
    cfg = TrainConfig(**saved)
    cfg = cfg.model_copy(
        update={"data": locate(cfg.data, run, trained_in), "split_file": locate(cfg.split_file, run, trained_in)}
    )
    model = model_from_config(cfg, n_items)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # corrupt or mismatched file: one line for the user
        raise RemiError(
            f"{weights}: cannot load checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    return cfg, model


def locate(path: str | None, run: Path, trained_in: str | None) -> str | None:
    """A run's recorded data path made absolute.

    Runs store absolute paths; older ones stored the path as typed, relative to the directory
    training ran in. Such a path is tried from there (when recorded), from the current
    directory, then from the run folder and each folder above it. Unfound, it is returned as is.
    """
    if not path or Path(path).is_absolute():
        return path
    bases = [Path(trained_in)] if trained_in else []
    bases += [Path.cwd(), *run.resolve().parents]
    for base in bases:
        if (base / path).exists():  # a file, or a folder of Parquet parts
            return str((base / path).resolve())
    return path


def require_data(cfg: TrainConfig, run: Path) -> None:
    """A clear error when a run's recorded data file cannot be found (before a bare 'not found')."""
    if cfg.data and not Path(cfg.data).exists():
        where = "" if Path(cfg.data).is_absolute() else " (relative to where it was trained; tried here and above)"
        raise RemiError(f"{run}: the data file it trained on, {cfg.data}, is not found{where}; pass --data PATH")


def evaluate_run(run_dir: str | Path, data: str | None = None) -> dict[str, Any]:
    """Recomputes valid/test metrics of a run's best checkpoint (optionally on another data path)."""
    cfg, model = load_run(run_dir)
    if data:
        cfg = cfg.model_copy(update={"data": data})
    else:
        require_data(cfg, Path(run_dir))
    prep = prepare(cfg)
    trained_items = (Path(run_dir) / RUN_ITEM_IDS).read_text().split("\n")[: model.n_items]
    if prep.data.n_items != model.n_items or list(prep.data.item_ids) != trained_items:
        raise RemiError(
            f"data has {prep.data.n_items} items after filtering but the model was trained on "
            f"{model.n_items} different or differently ordered items; evaluate on the training data"
        )
    valid_metrics, _, valid_lists = evaluate(model, prep.valid)
    test_metrics, routing, lists = evaluate(model, prep.test)
    warning = near_copy_warning(routing, lists)
    if warning:
        logging.getLogger("remi.evaluate").warning(warning)
    return {
        "valid": valid_metrics,
        "test": test_metrics,
        "routing": routing,
        "lists": lists,
        "valid_lists": valid_lists,
    }
