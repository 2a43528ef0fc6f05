"""The ``remi`` command line.

Sub-commands import their component lazily, so ``remi serve`` never loads torch.
User errors (:class:`RemiError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from remi.errors import RemiError

app = typer.Typer(
    help="remi-match: multi-interest candidate matching trained with REMI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: generate synthetic data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

Opt = typer.Option


@app.callback()
def _root(log_level: Annotated[str, Opt(help="Log level of the JSON-lines log on stderr.")] = "WARNING") -> None:
    from remi.logs import setup_logging

    setup_logging(log_level)


@data_app.command("synth")
def synth(
    out: Annotated[Path, Opt(help="Output folder; gets interactions.csv.gz and topics.json (ground truth).")],
    users: Annotated[int, Opt(min=1, help="Number of users.")] = 2000,
    items: Annotated[int, Opt(min=2, help="Number of items.")] = 1000,
    topics: Annotated[int, Opt(min=1, help="Number of planted topic clusters.")] = 20,
    min_len: Annotated[int, Opt(min=1, help="Shortest user sequence.")] = 10,
    max_len: Annotated[int, Opt(min=1, help="Longest user sequence.")] = 60,
    seed: Annotated[int, Opt(help="Random seed.")] = 0,
) -> None:
    """Write synthetic interactions with planted topics (2-4 per user, interleaved, Zipf popularity)."""
    from training.synth import SynthConfig, write

    if max_len < min_len:
        raise RemiError("--max-len must be >= --min-len")
    path = write(SynthConfig(users=users, items=items, topics=topics, min_len=min_len, max_len=max_len, seed=seed), out)
    typer.echo(str(path))


@app.command("train")
def train_cmd(
    out: Annotated[Path, Opt(help="Run directory: checkpoint, config, metrics.")],
    data: Annotated[str | None, Opt(help="Interactions CSV(.gz): user_id,item_id,timestamp.")] = None,
    config: Annotated[Path | None, Opt(help="JSON settings file (e.g. from `remi tune`); flags override it.")] = None,
    model: Annotated[str | None, Opt(help="Backbone: comirec-sa, comirec-dr, mind or dnn.")] = None,
    scheme: Annotated[str | None, Opt(help="Training scheme: sampled, ihn, rr or remi (= ihn + rr).")] = None,
    beta: Annotated[float | None, Opt(help="IHN hardness beta (ihn, remi); 0 = plain sampled softmax.")] = None,
    lam: Annotated[
        float | None, Opt(help="RR weight lambda, per-user mean (authors' 100 summed over 128 = 12800).")
    ] = None,
    ihn_scores: Annotated[str | None, Opt(help="IHN weights from raw, cosine or standardized scores.")] = None,
    ihn_detach: Annotated[bool | None, Opt(help="Stop the gradient through the IHN weights.")] = None,
    ihn_warmup: Annotated[int | None, Opt(help="Steps over which beta ramps up from 0.")] = None,
    remove_accidental_hits: Annotated[bool | None, Opt(help="Drop sampled negatives equal to the positive.")] = None,
    rr_norm: Annotated[
        str | None, Opt(help="RR normalisation: authors (1/L mean, /d) or valid (per valid length).")
    ] = None,
    emb_l2: Annotated[
        float | None, Opt(help="L2 penalty on the batch's item and user vectors (against norm growth).")
    ] = None,
    split_file: Annotated[str | None, Opt(help="CSV user_id,part (train/valid/test) fixing the user split.")] = None,
    max_steps: Annotated[int | None, Opt(help="Step budget.")] = None,
    max_minutes: Annotated[float | None, Opt(help="Wall-clock budget in minutes.")] = None,
    eval_every: Annotated[int | None, Opt(help="Evaluate on valid users every N steps.")] = None,
    patience: Annotated[int | None, Opt(help="Stop after this many evaluations without improvement.")] = None,
    seed: Annotated[int | None, Opt(help="Seed of initialisation and sampling.")] = None,
    split_seed: Annotated[int | None, Opt(help="Seed of the 80/10/10 user split.")] = None,
    seq_len: Annotated[int | None, Opt(help="History length L.")] = None,
    interests: Annotated[int | None, Opt(help="Number of interests K.")] = None,
    dim: Annotated[int | None, Opt(help="Embedding size d.")] = None,
    batch_size: Annotated[int | None, Opt(help="Training batch size.")] = None,
    negatives: Annotated[int | None, Opt(help="Sampled negatives per batch (shared).")] = None,
    lr: Annotated[float | None, Opt(help="Adam learning rate.")] = None,
    min_count: Annotated[int | None, Opt(help="k-core threshold.")] = None,
    device: Annotated[str | None, Opt(help="torch device, e.g. cpu or cuda.")] = None,
    threads: Annotated[int | None, Opt(help="torch intra-op threads.")] = None,
    progress: Annotated[bool | None, Opt(help="Show a progress bar (default: when stderr is a terminal).")] = None,
) -> None:
    """Train a multi-interest model; writes RUN_DIR/metrics.json and the best checkpoint."""
    overrides = {k: v for k, v in locals().items() if k not in ("out", "config", "progress")}
    from training.config import load_config
    from training.trainer import train

    cfg = load_config(config, **overrides)
    if not cfg.data:
        raise RemiError("no data: pass --data PATH (or set it in --config)")
    result = train(cfg, out, show_progress=progress)
    typer.echo(
        json.dumps(
            {
                "test": result["test"],
                "routing": result["routing"],
                "steps": result["steps"],
                "best_step": result["best_step"],
                "train_seconds": result["train_seconds"],
            },
            indent=2,
        )
    )


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, Opt(help="Run directory written by `remi train`.")],
    data: Annotated[str | None, Opt(help="Interactions file (default: the one the run trained on).")] = None,
) -> None:
    """Recompute the valid/test metrics of a run's best checkpoint."""
    from training.trainer import evaluate_run

    typer.echo(json.dumps(evaluate_run(run, data), indent=2))


@app.command("tune")
def tune_cmd(
    data: Annotated[str, Opt(help="Interactions CSV(.gz).")],
    out: Annotated[Path, Opt(help="Folder for best.json (a `remi train --config` file) and trials.csv/md.")],
    model: Annotated[str, Opt(help="Backbone to tune.")] = "comirec-sa",
    scheme: Annotated[str, Opt(help="Scheme to tune (remi tunes beta and lambda; ihn beta; rr lambda).")] = "remi",
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


@app.command("demo")
def demo(
    out: Annotated[Path, Opt(help="Working folder for the generated data and the run.")] = Path("demo"),
    steps: Annotated[int, Opt(min=1, help="Training steps.")] = 3000,
) -> None:
    """The quick start: generate planted-topic data, train ComiRec-SA with REMI, print test metrics."""
    from training.config import load_config
    from training.synth import SynthConfig, write
    from training.trainer import train

    data = write(SynthConfig(), out / "data")
    typer.echo(f"data: {data}")
    default = Path(__file__).resolve().parents[1] / "configs" / "default.json"  # the shipped setting
    cfg = load_config(
        default if default.is_file() else None,
        data=str(data),
        model="comirec-sa",
        scheme="remi",
        max_steps=steps,
        eval_every=500,
    )
    result = train(cfg, out / "run", show_progress=True)
    typer.echo(f"run: {out / 'run'}  ({result['steps']} steps, {result['train_seconds']:.1f} s of training)")
    typer.echo(f"{'metric':<12}{'remi':>10}{'popularity':>12}")
    for key, value in result["test"].items():
        typer.echo(f"{key:<12}{value:>10.4f}{result['popularity_test'][key]:>12.4f}")
    routing = result["routing"]
    typer.echo(
        f"routing: {routing['effective_items']:.2f} effective items per interest, "
        f"{routing['collapsed_share']:.0%} collapsed, interest similarity {routing['interest_similarity']:.2f}"
    )


def main() -> None:
    """Console entry point: user errors become one line and exit status 2."""
    try:
        app()
    except RemiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
