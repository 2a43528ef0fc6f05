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

from index.params import DEFAULTS as INDEX_DEFAULTS
from remi.errors import RemiError

app = typer.Typer(
    help="remi-match: multi-interest candidate matching trained with REMI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: generate synthetic data, convert public raw dumps.", no_args_is_help=True)
app.add_typer(data_app, name="data")
index_app = typer.Typer(help="FAISS item index: build one, inspect or roll back an index root.", no_args_is_help=True)
app.add_typer(index_app, name="index")
history_app = typer.Typer(help="Per-user histories in the service's Redis store.", no_args_is_help=True)
app.add_typer(history_app, name="history")

Opt = typer.Option
TRAIN_ONLY_MODULES = {"torch", "training", "optuna", "onnx", "onnxscript", "matplotlib", "tabulate"}


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


@data_app.command("convert")
def convert_cmd(
    fmt: Annotated[str, Opt("--format", help="Raw format: amazon-reviews, movielens or retailrocket.")],
    input_path: Annotated[Path, Opt("--input", help="Raw file (gzip or plain, detected by content).")],
    out: Annotated[Path, Opt(help="Normalized CSV to write (user_id,item_id,timestamp; gzipped if it ends in .gz).")],
    min_rating: Annotated[
        float | None, Opt(help="Keep only ratings >= this (movielens, amazon-reviews); default: keep all.")
    ] = None,
    events: Annotated[
        str | None, Opt(help="retailrocket: comma-separated event types to keep (default view,addtocart,transaction).")
    ] = None,
    max_malformed_share: Annotated[
        float, Opt(min=0.0, max=1.0, help="Fail if a larger share of the rows is malformed (wrong format?).")
    ] = 0.1,
) -> None:
    """Convert a public raw dump to the normalized CSV; prints the report (JSON) and a summary on stderr."""
    from training.convert import convert

    report = convert(
        fmt,
        input_path,
        out,
        min_rating=min_rating,
        events=None if events is None else [e.strip() for e in events.split(",") if e.strip()],
        max_malformed_share=max_malformed_share,
    )
    typer.echo(json.dumps(report.to_dict(), indent=2))
    typer.echo(report.summary(), err=True)


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
    progress_seconds: Annotated[
        float | None,
        Opt(min=0, help="Without a bar: seconds between progress lines on stderr; 0 = none (default 30.0)."),
    ] = None,
    force: Annotated[bool, Opt(help="Replace an existing run folder (only once the new run is complete).")] = False,
    nproc: Annotated[
        int,
        Opt(min=1, help="Processes for distributed data-parallel training (torchrun + DDP; gloo on CPU, nccl on GPU)."),
    ] = 1,
) -> None:
    """Train a multi-interest model; writes RUN_DIR/metrics.json and the best checkpoint."""
    overrides = {k: v for k, v in locals().items() if k not in ("out", "config", "progress", "nproc", "force")}
    import os

    from training.run_folder import check_run_folder

    check_run_folder(out, force)  # before seconds of importing torch and reading the data
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_distributed(nproc, threads)
        return
    from training.config import load_config
    from training.trainer import train

    cfg = load_config(config, **overrides)
    if not cfg.data:
        raise RemiError("no data: pass --data PATH (or set it in --config)")
    result = train(cfg, out, show_progress=progress, force=force)
    if result is None:  # a non-zero rank of a distributed run: rank 0 reports
        return
    typer.echo(
        json.dumps(
            {
                "test": result.test,
                "routing": result.routing,
                "steps": result.steps,
                "best_step": result.best_step,
                "train_seconds": result.train_seconds,
            },
            indent=2,
        )
    )


def _relaunch_distributed(nproc: int, threads: int | None) -> None:
    """Re-runs this same command under torchrun with N processes (each gets cores / N threads)."""
    import os
    import subprocess

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
    code = subprocess.call([*cmd, "-m", "remi.cli", *args], env=env)
    if code:
        raise typer.Exit(code)


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
        Opt(help="Weights in user_tower.onnx.data beside the model (default: only above 1.5 GB, protobuf's limit)."),
    ] = None,
) -> None:
    """Export a run's user tower to ONNX (checked against PyTorch) with the item table and manifest."""
    from training.export import export_run

    manifest = export_run(
        run, out, data=data, force=force, opset=opset, sample_users=sample_users, external_data=external_data
    )
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "model_version": manifest.model_version,
                "backbone": manifest.backbone,
                "items": manifest.n_items,
                "dim": manifest.dim,
                "interests": manifest.interests,
                "parity_max_abs": manifest.parity_max_abs,
            },
            indent=2,
        )
    )


def _index_params(**flags: object) -> dict[str, object]:
    names = {"hnsw_m": "m"}
    return {names.get(k, k): v for k, v in flags.items() if v is not None}


_HNSW, _IVFPQ = INDEX_DEFAULTS["hnsw"], INDEX_DEFAULTS["ivfpq"]  # what the builder uses
KindOpt = Annotated[str, Opt(help="Index kind: flat (exact), hnsw, ivfpq, or auto (by item count).")]
HnswM = Annotated[int | None, Opt(min=2, help=f"HNSW: neighbours per node (default {_HNSW['m']}).")]
EfConstruction = Annotated[
    int | None, Opt(min=1, help=f"HNSW: build-time beam width (default {_HNSW['ef_construction']}).")
]
EfSearch = Annotated[int | None, Opt(min=1, help=f"HNSW: search beam width (default {_HNSW['ef_search']}).")]
Nlist = Annotated[int | None, Opt(min=1, help="IVF-PQ: inverted lists (default 4 sqrt(items)).")]
PqM = Annotated[int | None, Opt(min=1, help="IVF-PQ: sub-quantisers, must divide d (default d / 4).")]
Nbits = Annotated[
    int | None, Opt(min=4, max=12, help=f"IVF-PQ: bits per sub-quantiser code (default {_IVFPQ['nbits']}).")
]
Nprobe = Annotated[int | None, Opt(min=1, help=f"IVF-PQ: lists visited per query (default {_IVFPQ['nprobe']}).")]
Refine = Annotated[
    int | None,
    Opt(min=0, help=f"IVF-PQ: re-rank refine x k candidates with exact vectors; 0 = off (default {_IVFPQ['refine']})."),
]
MinRecall = Annotated[
    float, Opt(min=0.0, max=1.0, help="Fail the build if recall@50 against exact search is below this.")
]


@index_app.command("build")
def index_build_cmd(
    artifacts: Annotated[Path, Opt(help="Artifact folder written by `remi export`.")],
    out: Annotated[Path, Opt(help="Index folder to create (index.faiss + manifest.json).")],
    kind: KindOpt = "auto",
    min_recall: MinRecall = 0.95,
    hnsw_m: HnswM = None,
    ef_construction: EfConstruction = None,
    ef_search: EfSearch = None,
    nlist: Nlist = None,
    pq_m: PqM = None,
    nbits: Nbits = None,
    nprobe: Nprobe = None,
    refine: Refine = None,
    item_queries: Annotated[
        bool, Opt(help="Measure recall on item vectors instead of the model's interests on held-out histories.")
    ] = False,
    force: Annotated[bool, Opt(help="Replace an existing index folder (atomically).")] = False,
) -> None:
    """Build one FAISS inner-product index over the item embeddings and record its recall@50."""
    from index.reindex import build_from_artifacts

    params = _index_params(
        hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist, pq_m=pq_m,
        nbits=nbits, nprobe=nprobe, refine=refine,
    )  # fmt: skip
    manifest = build_from_artifacts(
        artifacts, out, kind, params, min_recall=min_recall, use_interests=not item_queries, force=force
    )
    typer.echo(json.dumps(manifest.model_dump(exclude={"files"}), indent=2))


@app.command("reindex")
def reindex_cmd(
    artifacts: Annotated[Path, Opt(help="Artifact folder written by `remi export`.")],
    root: Annotated[Path, Opt(help="Index root: versions/<version>/ and the `current` pointer.")],
    kind: KindOpt = "auto",
    min_recall: MinRecall = 0.95,
    keep: Annotated[int, Opt(min=1, help="Complete versions kept (current is never removed).")] = 3,
    force: Annotated[bool, Opt(help="Build even if current already holds these artifacts and settings.")] = False,
    hnsw_m: HnswM = None,
    ef_construction: EfConstruction = None,
    ef_search: EfSearch = None,
    nlist: Nlist = None,
    pq_m: PqM = None,
    nbits: Nbits = None,
    nprobe: Nprobe = None,
    refine: Refine = None,
) -> None:
    """Batch reindex: build a new index version, validate it, then flip `current` atomically."""
    from index.reindex import reindex

    params = _index_params(
        hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist, pq_m=pq_m,
        nbits=nbits, nprobe=nprobe, refine=refine,
    )  # fmt: skip
    result = reindex(artifacts, root, kind, params, min_recall=min_recall, keep=keep, force=force)
    typer.echo(
        json.dumps(
            {
                "current": result.version,
                "previous": result.previous,
                "built": result.built,
                "kind": result.manifest.kind,
                "params": result.manifest.params,
                "recall@50": result.manifest.recall_at_50,
                "build_seconds": result.manifest.build_seconds,
                "pruned": result.pruned,
                "seconds": round(result.seconds, 2),
            },
            indent=2,
        )
    )


@index_app.command("status")
def index_status_cmd(root: Annotated[Path, Opt(help="Index root.")]) -> None:
    """Show the version `current` points to and the complete versions kept."""
    from index.reindex import list_versions
    from remi.contract import read_current

    typer.echo(json.dumps({"current": read_current(root), "versions": list_versions(root)}, indent=2))


@index_app.command("rollback")
def index_rollback_cmd(
    root: Annotated[Path, Opt(help="Index root.")],
    to: Annotated[str | None, Opt(help="Version to activate (default: the one before current).")] = None,
) -> None:
    """Point `current` back at an older complete version (validated first)."""
    from index.reindex import rollback

    typer.echo(json.dumps({"current": rollback(root, to)}))


@app.command("serve")
def serve_cmd(
    index_root: Annotated[Path, Opt(help="Index root (versions/ + `current`), followed for hot reload.")],
    artifacts: Annotated[
        Path | None, Opt(help="Model artifacts; builds the first index version if the root has none.")
    ] = None,
    host: Annotated[str | None, Opt(help="Bind address (default 127.0.0.1 or REMI_HOST).")] = None,
    port: Annotated[int | None, Opt(min=0, max=65535, help="Port (default 8000 or REMI_PORT).")] = None,
    workers: Annotated[
        int | None, Opt(min=1, help="Worker processes sharing the port (default 1 or REMI_WORKERS; > 1 needs Redis).")
    ] = None,
    redis_url: Annotated[
        str | None,
        Opt(help="Redis history store, e.g. redis://localhost:6379/0 (default: REMI_REDIS_URL or embedded)."),
    ] = None,
    seed_history: Annotated[
        str | None, Opt(help="CSV user_id,item_id,timestamp loaded into the embedded history store.")
    ] = None,
    onnx_threads: Annotated[int | None, Opt(min=1, help="onnxruntime intra-op threads per worker (default 1).")] = None,
    faiss_threads: Annotated[int | None, Opt(min=1, help="FAISS threads per worker (default 1).")] = None,
    compute_threads: Annotated[
        int | None, Opt(min=1, help="Threads running model + search off the event loop (default 2).")
    ] = None,
    microbatch: Annotated[
        bool | None, Opt(help="Coalesce concurrent requests into one model + index call (default on).")
    ] = None,
    poll_seconds: Annotated[float | None, Opt(min=0, help="Seconds between checks of `current` (0 = off).")] = None,
    access_log: Annotated[bool, Opt(help="uvicorn access log (off: it costs throughput).")] = False,
    log_level: Annotated[str | None, Opt(help="Log level (default info or REMI_LOG_LEVEL).")] = None,
) -> None:
    """Serve POST /recommend and friends with uvicorn; every REMI_* setting applies (see README)."""
    import os

    import uvicorn

    from remi.logs import setup_logging

    flags = {
        "index_root": index_root, "artifacts": artifacts, "host": host, "port": port, "workers": workers,
        "redis_url": redis_url, "seed_history": seed_history, "onnx_threads": onnx_threads,
        "faiss_threads": faiss_threads, "compute_threads": compute_threads, "microbatch": microbatch,
        "poll_seconds": poll_seconds, "log_level": log_level,
    }  # fmt: skip
    # Native thread pools (OpenMP in FAISS, OpenBLAS in numpy) default to one thread per core and
    # spin while idle; per-request work is far too small to split, and the spinning threads steal
    # the cores other workers need (measured: 634 -> 1,024 req/s with 2 workers). One each.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(faiss_threads or os.environ.get("REMI_FAISS_THREADS") or 1))
    for key, value in flags.items():  # env, so every worker process reads the same settings
        if value is not None:
            os.environ[f"REMI_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    from pydantic import ValidationError

    from service.config import ServiceSettings

    try:
        settings = ServiceSettings()
    except ValidationError as exc:
        raise RemiError(str(exc).splitlines()[-2].strip() if len(str(exc).splitlines()) > 1 else str(exc)) from exc
    _check_serve_paths(settings.index_root, settings.artifacts)
    level = settings.log_level.lower()
    setup_logging(level)
    if settings.redis_url and settings.seed_history:
        import logging

        warning = "--seed-history is ignored with a Redis history store: load it with `remi history load`"
        logging.getLogger("remi.cli").warning(warning, extra={"path": settings.seed_history})
        typer.echo(f"warning: {warning}", err=True)
    if settings.workers > 1:
        from service.workers import serve_workers

        serve_workers(settings.workers, settings.host, settings.port, level, access_log)
        return
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=level,
        access_log=access_log,
        log_config=None,
    )


def _check_serve_paths(root: Path, artifacts: Path | None) -> None:
    """Refuses a start that can never become ready (it would answer 503 until someone looks).

    An index root with at least one complete version starts even if ``current`` is broken: the
    worker then serves the last good version (see service/versions.py). Without one, only
    ``--artifacts`` (an existing folder) can give it a first version.
    """
    from remi.contract import list_versions

    if root.exists() and not root.is_dir():
        raise RemiError(f"index root {root}: not a folder")
    if list_versions(root):
        return
    if artifacts is None:
        if not root.exists():
            raise RemiError(f"index root {root}: no such folder (check --index-root, or pass --artifacts to build one)")
        raise RemiError(
            f"index root {root}: no index version in it (run `remi reindex --root {root}` or pass --artifacts)"
        )
    if not artifacts.is_dir():
        raise RemiError(f"--artifacts {artifacts}: no such folder, and index root {root} has no version to serve")


@history_app.command("load")
def history_load_cmd(
    data: Annotated[
        Path, Opt(help="user_id,item_id,timestamp as CSV(.gz), a Parquet file or a folder of Parquet parts.")
    ],
    redis_url: Annotated[
        str | None, Opt(help="Redis URL (default REMI_REDIS_URL); cluster/sentinel URLs work.")
    ] = None,
    prefix: Annotated[str | None, Opt(help="Key namespace (default REMI_REDIS_PREFIX or remi:).")] = None,
    max_len: Annotated[
        int | None, Opt(min=1, help="Events kept per user (default REMI_HISTORY_MAX_LEN or 200).")
    ] = None,
    ttl_days: Annotated[
        float | None, Opt(min=0.0, help="Expiry of each list in days, 0 = none (default REMI_HISTORY_TTL_DAYS or 30).")
    ] = None,
    rows_per_partition: Annotated[
        int, Opt(min=1000, help="Rows sorted in memory at once (memory bound; more = fewer temporary files).")
    ] = 2_000_000,
    progress: Annotated[bool, Opt(help="Progress bars on stderr.")] = True,
) -> None:
    """Load histories into Redis so the service answers the data's users personalised from the start.

    Each user in DATA gets their last MAX_LEN events by timestamp (ties in file order), with the
    service's key scheme, encoding and expiry. A loaded user's list is REPLACED atomically (events
    it had in Redis, e.g. posted to the API, are dropped); users not in DATA are untouched. So a
    re-run leaves the same lists, never doubled ones. Streamed in two passes through temporary
    files: memory is bounded by --rows-per-partition, not by the file.
    """
    import os

    from service.config import ServiceSettings
    from service.history_load import load_history

    settings = ServiceSettings()
    url = redis_url or settings.redis_url
    if not url:
        raise RemiError("no Redis URL: pass --redis-url or set REMI_REDIS_URL")
    if ttl_days is None:
        ttl = settings.history_ttl_seconds
    else:
        ttl = int(ttl_days * 86400) or None
    report = load_history(
        data,
        url,
        prefix=settings.redis_prefix if prefix is None else prefix,
        max_len=max_len or settings.history_max_len,
        ttl_seconds=ttl,
        rows_per_partition=rows_per_partition,
        progress=progress and os.environ.get("REMI_NO_PROGRESS") is None,
    )
    typer.echo(json.dumps(report.as_dict()))
    typer.echo(report.line(), err=True)


@app.command("loadtest")
def loadtest_cmd(
    url: Annotated[str, Opt(help="Service base URL (e.g. http://127.0.0.1:8000); /recommend is appended.")],
    users_from: Annotated[
        Path, Opt(help="CSV(.gz) with a user_id column; its distinct ids are requested in a seeded random order.")
    ],
    concurrency: Annotated[
        int, Opt(min=1, help="Concurrent clients, each one request at a time (= keep-alive connections).")
    ] = 8,
    duration: Annotated[float, Opt(min=0.1, help="Measured seconds, after the warm-up.")] = 10.0,
    k: Annotated[int, Opt(min=1, help="k of every request.")] = 50,
    warmup: Annotated[float, Opt(min=0, help="Seconds of load before measuring (not counted).")] = 2.0,
    seed: Annotated[int, Opt(help="Seed of the user order.")] = 0,
    timeout: Annotated[
        float, Opt(min=0.001, help="Per-request timeout in seconds (a timeout counts as an error).")
    ] = 10.0,
    out: Annotated[Path | None, Opt(help="Also write the result as JSON here.")] = None,
) -> None:
    """Load-test POST /recommend: prints requests/s, latency percentiles, errors and fallbacks (JSON)."""
    from service.loadtest import run_loadtest, summary_line

    if not users_from.is_file():
        raise RemiError(f"{users_from}: no such file")
    try:
        result = run_loadtest(url, users_from, concurrency, duration, k=k, warmup=warmup, seed=seed, timeout=timeout)
    except ValueError as exc:
        raise RemiError(str(exc)) from exc
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)
    typer.echo(summary_line(result), err=True)


@app.command("demo")
def demo(
    out: Annotated[Path, Opt(help="Working folder for the generated data, run, artifacts and index.")] = Path("demo"),
    steps: Annotated[int, Opt(min=1, help="Training steps.")] = 3000,
    serve: Annotated[bool, Opt(help="Serve the model afterwards (embedded history store, no Redis needed).")] = True,
    port: Annotated[int | None, Opt(min=0, max=65535, help="Port to serve on (default 8000 or REMI_PORT).")] = None,
    host: Annotated[str | None, Opt(help="Bind address (default 127.0.0.1 or REMI_HOST).")] = None,
) -> None:
    """The quick start: planted-topic data -> train ComiRec-SA with REMI -> export ONNX -> FAISS index -> serve."""
    host, port = serve_address(host, port)  # checked before minutes of training, not after
    from index.reindex import reindex
    from training.config import load_config
    from training.export import export_run
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
    result = train(cfg, out / "run", show_progress=True, force=True)  # the demo's own folder, rebuilt each time
    assert result is not None  # the demo trains in one process
    typer.echo(f"run: {out / 'run'}  ({result.steps} steps, {result.train_seconds:.1f} s of training)")
    typer.echo(f"{'metric':<12}{'remi':>10}{'popularity':>12}")
    for key, value in result.test.items():
        typer.echo(f"{key:<12}{value:>10.4f}{result.popularity_test[key]:>12.4f}")
    routing = result.routing
    typer.echo(
        f"routing: {routing['effective_items']:.2f} effective items per interest, "
        f"{routing['collapsed_share']:.0%} collapsed, interest similarity {routing['interest_similarity']:.2f}"
    )
    manifest = export_run(out / "run", out / "artifacts", force=True)
    typer.echo(
        f"artifacts: {out / 'artifacts'}  (model {manifest.model_version}, ONNX parity {manifest.parity_max_abs:.1e})"
    )
    version = reindex(out / "artifacts", out / "index")
    typer.echo(f"index: {out / 'index'}  (current = {version.version}, {version.manifest.kind})")
    user = next(iter(open_users(data)))
    url = f"http://{host}:{port}"
    body = json.dumps({"user_id": user, "k": 10})
    typer.echo(
        "\ntry it:\n"
        f"  curl -s -X POST {url}/recommend -H 'content-type: application/json' -d '{body}'\n"
        f"  curl -s {url}/users/{user}/interests\n"
        f"  open {url}/docs for the API\n"
    )
    if not serve:
        return
    import os

    os.environ["REMI_SEED_HISTORY"] = str(data)
    serve_cmd(index_root=out / "index", artifacts=None, host=host, port=port)


def serve_address(host: str | None, port: int | None) -> tuple[str, int]:
    """Where `remi demo` serves: its flags, else REMI_HOST / REMI_PORT, else serve's defaults.

    The same precedence as `remi serve` (flags over REMI_* settings over the defaults), read
    from the same settings class so the two commands cannot disagree.
    """
    import os

    from service.config import ServiceSettings

    fields = ServiceSettings.model_fields
    host = host or os.environ.get("REMI_HOST") or fields["host"].default
    if port is None:
        raw = os.environ.get("REMI_PORT")
        try:
            port = int(raw) if raw not in (None, "") else fields["port"].default
        except ValueError:
            raise RemiError(f"REMI_PORT={raw!r}: not a port number") from None
        if not 0 <= port <= 65535:
            raise RemiError(f"REMI_PORT={raw}: a port is 0..65535")
    return host, port


def open_users(data: Path) -> list[str]:
    """A few user ids of the generated data, for the printed example."""
    import pandas as pd

    return pd.read_csv(data, nrows=5, dtype=str)["user_id"].tolist()


def main() -> None:
    """Console entry point: user errors become one line and exit status 2."""
    try:
        app()
    except RemiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as exc:  # e.g. `remi train` in the serving image, which has no torch
        if (exc.name or "").split(".")[0] not in TRAIN_ONLY_MODULES:
            raise
        print(
            f"error: this installation has no training components (missing {exc.name}); "
            'install them with `pip install "remi-match[train]"` or use the jobs image',
            file=sys.stderr,
        )
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
