"""``remi train``, ``evaluate``, ``tune``, ``export``: the training side (needs the training components).

``remi train`` has one flag per :class:`~training.config.TrainConfig` field, generated from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.options import SettingsFlags, choices_metavar, settings_options
from remi.errors import RemiError
from training.config import ModelName, SchemeName, TrainConfig

Opt = typer.Option
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)


@app.command("train")
@settings_options(TrainConfig, panel="Settings (flag > --config file > REMI_TRAIN_* > default)")
def train_cmd(
    out: Annotated[Path, Opt(help="Run directory: checkpoint, config, metrics.")],
    config: Annotated[Path | None, Opt(help="JSON settings file (e.g. from `remi tune`); flags override it.")] = None,
    progress: Annotated[bool | None, Opt(help="Show a progress bar (default: when stderr is a terminal).")] = None,
    force: Annotated[bool, Opt(help="Replace an existing run folder (only once the new run is complete).")] = False,
    nproc: Annotated[
        int,
        Opt(
            min=1,
            help="Processes for distributed data-parallel training on this machine (torchrun + DDP; gloo on CPU, "
            "nccl on GPU). Across machines run `torchrun --nnodes N ... -m cli train` (docs/operations.md).",
        ),
    ] = 1,
    *,
    flags: SettingsFlags,
) -> None:
    """Train a multi-interest model; writes RUN_DIR/metrics.json and the best checkpoint."""
    from training.run_folder import check_run_folder

    check_run_folder(out, force)  # before seconds of importing torch and reading the data
    if nproc > 1 and "WORLD_SIZE" in os.environ:
        raise RemiError("--nproc starts torchrun on this machine; under torchrun use its --nproc-per-node instead")
    if nproc > 1:
        _relaunch_distributed(nproc, flags.get("threads"))
        return
    from remi.datafiles import interaction_files
    from training.config import load_config

    cfg = load_config(config, **flags)
    if not cfg.data:
        raise RemiError("no data: pass --data PATH (or set it in --config)")
    interaction_files(cfg.data)  # a missing file is one line now, not after seconds of importing torch
    from training.trainer import train

    result = train(cfg, out, show_progress=progress, force=force)
    if result is None:  # a non-zero rank of a distributed run: rank 0 reports
        return
    summary = {
        key: result.to_dict()[key]
        for key in ("test", "popularity_test", "routing", "lists", "steps", "best_step", "train_seconds")
    }
    typer.echo(json.dumps(summary, indent=2))


def _relaunch_distributed(nproc: int, threads: int | None) -> None:
    """Re-runs this same command under torchrun with N processes (each gets cores / N threads)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        args.append(arg)
    env = dict(os.environ)
    if threads is None:
        env["REMI_TRAIN_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    code = subprocess.call([*cmd, "-m", "cli", *args], env=env)
    if code:
        raise typer.Exit(code)


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, Opt(help="Run directory written by `remi train`.")],
    data: Annotated[str | None, Opt(help="Interactions file (default: the one the run trained on).")] = None,
) -> None:
    """Recompute the valid/test metrics of a run's best checkpoint."""
    from training.runs import evaluate_run

    typer.echo(json.dumps(evaluate_run(run, data), indent=2))


@app.command("tune")
def tune_cmd(
    data: Annotated[str, Opt(help="Interactions CSV(.gz).")],
    out: Annotated[
        Path,
        Opt(
            help="Folder for best.json (a `remi train --config` file), trials.csv/md and study.db; tuning again "
            "into the same folder continues that study."
        ),
    ],
    model: Annotated[str, Opt(metavar=choices_metavar(ModelName), help="Backbone to tune.")] = "comirec-sa",
    scheme: Annotated[
        str,
        Opt(
            metavar=choices_metavar(SchemeName),
            help="Scheme to tune (remi tunes beta and lambda; ihn beta; rr lambda).",
        ),
    ] = "remi",
    trials: Annotated[int, Opt(min=1, help="Number of Optuna trials.")] = 20,
    max_steps: Annotated[int, Opt(min=1, help="Step budget of each trial.")] = 10_000,
    eval_every: Annotated[int, Opt(min=1, help="Evaluate each trial every N steps.")] = 1000,
    split_file: Annotated[str | None, Opt(help="CSV user_id,part fixing the user split.")] = None,
    tune_lr: Annotated[bool, Opt(help="Also search the learning rate.")] = True,
    config: Annotated[Path | None, Opt(help="Base settings the search starts from.")] = None,
    seed: Annotated[int, Opt(help="Seed of the sampler and of every trial.")] = 2021,
    threads: Annotated[int | None, Opt(help="torch intra-op threads per trial.")] = None,
) -> None:
    """Search beta, lambda, the embedding L2 penalty (and lr) on the valid users with Optuna (TPE)."""
    from training.tune import tune

    best = tune(
        data=data,
        out=out,
        model=model,
        scheme=scheme,
        trials=trials,
        max_steps=max_steps,
        eval_every=eval_every,
        split_file=split_file,
        tune_lr=tune_lr,
        base_config=config,
        seed=seed,
        threads=threads,
    )
    typer.echo(json.dumps(best, indent=2))


@app.command("export")
def export_cmd(
    run: Annotated[Path, Opt(help="Run directory written by `remi train`.")],
    out: Annotated[Path, Opt(help="Artifact folder to create (user_tower.onnx, item embeddings, manifest...).")],
    data: Annotated[str | None, Opt(help="Training interactions (default: the path the run recorded).")] = None,
    force: Annotated[bool, Opt(help="Replace an existing artifact folder (atomically).")] = False,
    opset: Annotated[int, Opt(min=17, help="ONNX opset version.")] = 18,
    sample_users: Annotated[
        int, Opt(min=0, help="Held-out histories kept for parity, index recall and warm-up.")
    ] = 1024,
    external_data: Annotated[
        bool | None,
        Opt(
            help="Weights in user_tower.onnx.data beside the model, which onnxruntime maps so the service's"
            " workers share it (default: above 64 MB, about 250k items at d = 64)."
        ),
    ] = None,
    item_attributes: Annotated[
        Path | None,
        Opt(
            help="Item attributes for request filters: a .csv or .parquet table with an item_id column and one"
            " column per attribute (numeric columns are numeric, others categorical; see --categorical)."
        ),
    ] = None,
    categorical: Annotated[
        str | None,
        Opt(help="Comma-separated attribute columns to keep categorical even when they hold numbers (e.g. ids)."),
    ] = None,
) -> None:
    """Export a run's user tower to ONNX (checked against PyTorch) with the item table and manifest."""
    from remi.attributes import attach_attributes, read_attribute_table
    from remi.contract import RUN_ITEM_IDS
    from training.export import export_run

    attributes = None
    if item_attributes is not None:  # checked before the export: a bad table fails fast
        text = (run / RUN_ITEM_IDS).read_text()
        ids = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        forced = [c.strip() for c in (categorical or "").split(",") if c.strip()]
        attributes = read_attribute_table(item_attributes, ids, forced)
    manifest = export_run(
        run, out, data=data, force=force, opset=opset, sample_users=sample_users, external_data=external_data
    )
    if attributes is not None:
        manifest = attach_attributes(out, manifest, attributes)
    summary = {
        "out": str(out),
        "model_version": manifest.model_version,
        "backbone": manifest.backbone,
        "items": manifest.n_items,
        "dim": manifest.dim,
        "interests": manifest.interests,
        "parity_max_abs": manifest.parity_max_abs,
    }
    if attributes is not None:
        summary["item_attributes"] = {**attributes.summary, "kinds": manifest.item_attributes}
    typer.echo(json.dumps(summary, indent=2))
