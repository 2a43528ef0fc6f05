"""``remi index build|status|rollback|sync`` and ``remi reindex [--publish URL]``: the FAISS item index.

The build settings (kind, HNSW / IVF-PQ parameters, recall gate, versions kept) are flags
generated from :class:`~index.params.IndexSettings`. ``--backend milvus`` (reindex, status,
rollback) publishes to a Milvus collection per version behind an alias instead
(index/milvus_publish.py; the REMI_BACKEND / REMI_MILVUS_* settings of :class:`~index.backend.BackendSettings`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from cli.options import SettingsFlags, settings_error, settings_options
from index.backend import BackendSettings
from index.params import REINDEX_ONLY, IndexSettings

if TYPE_CHECKING:
    from index.served import GateSettings
from remi.errors import RemiError

Opt = typer.Option
PANEL = "Index settings (flag > REMI_INDEX_* > default)"
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)
index_app = typer.Typer(
    help="FAISS item index: build one, inspect, roll back or sync an index root.", no_args_is_help=True
)
app.add_typer(index_app, name="index")


# --backend and where Milvus is: flags over the REMI_BACKEND / REMI_MILVUS_* variables the service reads too
BACKEND_PANEL = "Backend (flag > REMI_* > default)"
Backend = Annotated[
    str | None,
    Opt(
        "--backend",
        help="faiss: a FAISS index per version, `current` flipped; milvus: a Milvus collection per version, "
        "the alias flipped (default: REMI_BACKEND, else faiss).",
        metavar="[faiss|milvus]",
        rich_help_panel=BACKEND_PANEL,
    ),
]
MilvusUri = Annotated[
    str | None,
    Opt(
        help="--backend milvus: http(s)://host:19530, or a Milvus Lite .db file (default: REMI_MILVUS_URI).",
        metavar="URI",
        rich_help_panel=BACKEND_PANEL,
    ),
]
MilvusAlias = Annotated[
    str | None,
    Opt(
        help="The Milvus alias flipped and served (default: REMI_MILVUS_ALIAS, else remi).",
        rich_help_panel=BACKEND_PANEL,
    ),
]
MilvusPrefix = Annotated[
    str | None,
    Opt(
        help="Collections are <prefix><version>; one prefix per index root (default: REMI_MILVUS_COLLECTION_PREFIX, "
        "else remi_).",
        rich_help_panel=BACKEND_PANEL,
    ),
]
MilvusTokenFile = Annotated[
    Path | None,
    Opt(help="File holding the Milvus credential (or REMI_MILVUS_TOKEN).", rich_help_panel=BACKEND_PANEL),
]


def backend_settings(
    backend: str | None, uri: str | None, alias: str | None, prefix: str | None, token_file: Path | None
) -> BackendSettings:
    """The backend settings: the flags given, then REMI_* variables, then the defaults."""
    given: dict[str, Any] = {
        "backend": backend,
        "milvus_uri": uri,
        "milvus_alias": alias,
        "milvus_collection_prefix": prefix,
        "milvus_token_file": token_file,
    }
    try:
        return BackendSettings(**{name: value for name, value in given.items() if value is not None})
    except ValidationError as exc:
        raise settings_error(exc) from exc


def index_settings(flags: SettingsFlags) -> IndexSettings:
    """The build settings: the flags given, then REMI_INDEX_* variables, then the defaults."""
    try:
        return IndexSettings(**flags)
    except ValidationError as exc:
        raise settings_error(exc) from exc


def gate_settings(settings: IndexSettings) -> GateSettings:
    """The served gate's settings and auto's time budget (index/served.py) from the build settings."""
    from index.served import GateSettings

    return GateSettings(
        users=settings.gate_users,
        dedup_cosine=settings.gate_dedup_cosine,
        min_weight=settings.gate_min_weight,
        budget_s=settings.auto_budget_s,
    )


@index_app.command("build")
@settings_options(IndexSettings, exclude=set(REINDEX_ONLY), panel=PANEL)
def index_build_cmd(
    artifacts: Annotated[Path, Opt(help="Artifact folder written by `remi export`.")],
    out: Annotated[Path, Opt(help="Index folder to create (index.faiss + manifest.json).")],
    item_queries: Annotated[
        bool, Opt(help="Measure recall on item vectors instead of the model's interests on held-out histories.")
    ] = False,
    force: Annotated[bool, Opt(help="Replace an existing index folder (atomically).")] = False,
    *,
    flags: SettingsFlags,
) -> None:
    """Build one FAISS inner-product index over the item embeddings and record its recall@50."""
    from index.publish import build_from_artifacts

    settings = index_settings(flags)
    manifest = build_from_artifacts(
        artifacts,
        out,
        settings.kind,
        settings.given_params(),
        min_recall=settings.min_recall,
        recall_of=settings.recall_of,
        use_interests=not item_queries,
        force=force,
        gate=gate_settings(settings),
    )
    typer.echo(json.dumps(manifest.model_dump(exclude={"files"}), indent=2))


@app.command("reindex")
@settings_options(IndexSettings, panel=PANEL)
def reindex_cmd(
    artifacts: Annotated[Path, Opt(help="Artifact folder written by `remi export`.")],
    root: Annotated[Path, Opt(help="Index root: versions/<version>/ and the `current` pointer.")],
    force: Annotated[
        bool,
        Opt(
            help="Build even if current already holds these artifacts and settings, and replace the serving model "
            "even when the new one fails the replacement check (--min-catalogue-overlap, --min-history-coverage, "
            "item attributes dropped)."
        ),
    ] = False,
    publish: Annotated[
        str | None,
        Opt(
            help="Object-store URL (s3://bucket/prefix, gs://..., az://..., file:///...) to publish to: the root first "
            "takes the version the remote `current` names, then the new version is uploaded (hash-checked, manifest "
            "last) and the remote `current` moved to it. Credentials and endpoint: the AWS_* variables "
            "(AWS_ENDPOINT_URL for MinIO and other S3-compatible stores).",
            metavar="URL",
        ),
    ] = None,
    backend: Backend = None,
    milvus_uri: MilvusUri = None,
    milvus_alias: MilvusAlias = None,
    milvus_collection_prefix: MilvusPrefix = None,
    milvus_token_file: MilvusTokenFile = None,
    *,
    flags: SettingsFlags,
) -> None:
    """Batch reindex: build a new index version, validate it, then flip `current` (or the Milvus alias) atomically."""
    from index.publish import reindex

    settings = index_settings(flags)
    where = backend_settings(backend, milvus_uri, milvus_alias, milvus_collection_prefix, milvus_token_file)
    if where.backend == "milvus":
        if publish:
            raise RemiError("--publish uploads FAISS versions; a Milvus version is published by its alias flip")
        typer.echo(json.dumps(reindex_milvus_summary(artifacts, root, settings, where, force), indent=2))
        return
    if publish:  # build against what the replicas serve: "up to date" and the replacement check compare with it
        from index.sync import seed_from_remote

        seed_from_remote(publish, root)
    result = reindex(
        artifacts,
        root,
        settings.kind,
        settings.given_params(),
        min_recall=settings.min_recall,
        recall_of=settings.recall_of,
        keep=settings.keep,
        force=force,
        min_catalogue_overlap=settings.min_catalogue_overlap,
        min_history_coverage=settings.min_history_coverage,
        gate=gate_settings(settings),
    )
    summary = {
        "current": result.index_version,
        "previous": result.previous,
        "built": result.built,
        "kind": result.manifest.kind,
        "params": result.manifest.params,
        "recall@50": result.manifest.recall_at_50,
        "us_per_user": result.manifest.us_per_user,
        "build_seconds": result.manifest.build_seconds,
        "selection_seconds": result.manifest.selection_seconds,
        "runners_up": runners_up(result.manifest.candidates),
        "pruned": result.pruned,
        "seconds": round(result.seconds, 2),
    }
    if publish:
        from index.sync import publish as publish_version

        published = publish_version(publish, root, result.index_version, keep=settings.keep)
        summary["published"] = {
            "url": published.url,
            "uploaded": published.uploaded,
            "remote_previous": published.previous,
            "remote_moved": published.moved,
            "remote_pruned": published.pruned,
        }
    typer.echo(json.dumps(summary, indent=2))


def reindex_milvus_summary(
    artifacts: Path, root: Path, settings: IndexSettings, where: BackendSettings, force: bool
) -> dict[str, Any]:
    """``remi reindex --backend milvus``: the job (index/milvus_publish.py) and what it prints."""
    from index.milvus_publish import reindex_milvus

    target = where.milvus_target()
    result = reindex_milvus(
        artifacts,
        root,
        target,
        settings.kind,
        settings.given_params(),
        min_recall=settings.min_recall,
        keep=settings.keep,
        force=force,
        recall_of=settings.recall_of,
        min_catalogue_overlap=settings.min_catalogue_overlap,
        min_history_coverage=settings.min_history_coverage,
    )
    return {
        "current": result.index_version,
        "previous": result.previous,
        "built": result.built,
        "backend": "milvus",
        "alias": target.alias,
        "collection": result.manifest.collection,
        "kind": result.manifest.kind,
        "params": result.manifest.params,
        "recall@50": result.manifest.recall_at_50,
        "build_seconds": result.manifest.build_seconds,
        "pruned": result.pruned,
        "seconds": round(result.seconds, 2),
    }


def runners_up(candidates: list[dict[str, Any]] | None) -> list[str] | None:
    """One line per candidate `--kind auto` tried (index/auto.py), the chosen one first."""
    if candidates is None:
        return None
    lines = []
    for c in candidates:
        recall = "-" if c["recall"] is None else f"{c['recall']:.4f}"
        cost = "-" if c["us_per_user"] is None else f"{c['us_per_user']:.0f} us/user"
        knob = " ".join(f"{k} {v}" for k, v in c["params"].items() if k in ("ef_search", "refine", "nprobe"))
        mark = "chosen" if c["chosen"] else ("passed" if c["passed"] else f"failed ({c['stopped']})")
        lines.append(
            f"{c['label']}{' ' + knob if knob else ''}: recall {recall}, {cost}, build {c['build_s']:.1f} s, {mark}"
        )
    return lines


def current_index(root: Path) -> dict[str, Any] | None:
    """What `current` serves and what its recall gate measured (None when no version is current)."""
    from remi.contract import ArtifactError, read_current, read_index_manifest, version_dir

    name = read_current(root)
    if name is None:
        return None
    try:
        manifest = read_index_manifest(version_dir(root, name), check_hash=False)
    except ArtifactError as exc:
        return {"error": str(exc)}
    return {
        "kind": manifest.kind,
        "params": manifest.params,
        "recall@50": manifest.recall_at_50,
        "recall_source": manifest.recall_source,
        "us_per_user": manifest.us_per_user,
        "gate": manifest.gate,
        "selection_seconds": manifest.selection_seconds,
        "runners_up": runners_up(manifest.candidates),
    }


@index_app.command("status")
def index_status_cmd(
    root: Annotated[Path | None, Opt(help="Index root.")] = None,
    remote: Annotated[str | None, Opt(help="Object-store URL of a published root instead.", metavar="URL")] = None,
    backend: Backend = None,
    milvus_uri: MilvusUri = None,
    milvus_alias: MilvusAlias = None,
    milvus_token_file: MilvusTokenFile = None,
) -> None:
    """Show the version `current` (or the Milvus alias) points to and the complete versions kept (of a root or a
    remote)."""
    if (root is None) == (remote is None):
        raise typer.BadParameter("give --root or --remote (one of them)")
    where = backend_settings(backend, milvus_uri, milvus_alias, None, milvus_token_file)
    if where.backend == "milvus" and root is not None:
        from index.milvus_publish import status_milvus

        typer.echo(json.dumps(status_milvus(root, where.milvus_target()), indent=2))
        return
    if remote is not None:
        from index.sync import remote_status

        typer.echo(json.dumps(remote_status(remote), indent=2))
        return
    from remi.contract import list_versions, read_current

    assert root is not None
    status = {"current": read_current(root), "index": current_index(root), "versions": list_versions(root)}
    typer.echo(json.dumps(status, indent=2))


@index_app.command("rollback")
def index_rollback_cmd(
    root: Annotated[Path | None, Opt(help="Index root.")] = None,
    to: Annotated[str | None, Opt(help="Version to activate (default: the one before current).")] = None,
    remote: Annotated[
        str | None,
        Opt(
            help="Object-store URL: move the remote `current` back instead (every replica's sync follows it).",
            metavar="URL",
        ),
    ] = None,
    backend: Backend = None,
    milvus_uri: MilvusUri = None,
    milvus_alias: MilvusAlias = None,
    milvus_token_file: MilvusTokenFile = None,
) -> None:
    """Point `current` (or the Milvus alias) back at an older complete version (validated first), of a root or of
    a remote."""
    if (root is None) == (remote is None):
        raise typer.BadParameter("give --root or --remote (one of them)")
    where = backend_settings(backend, milvus_uri, milvus_alias, None, milvus_token_file)
    if where.backend == "milvus" and root is not None:
        from index.milvus_publish import rollback_milvus

        target = where.milvus_target()
        typer.echo(json.dumps({"current": rollback_milvus(root, target, to), "alias": target.alias}))
        return
    if remote is not None:
        from index.sync import rollback_remote

        typer.echo(json.dumps({"current": rollback_remote(remote, to), "remote": remote}))
        return
    from index.publish import rollback

    assert root is not None
    typer.echo(json.dumps({"current": rollback(root, to)}))


@index_app.command("sync")
@settings_options(IndexSettings, exclude=set(IndexSettings.model_fields) - set(REINDEX_ONLY), panel=PANEL)
def index_sync_cmd(
    source: Annotated[
        str,
        Opt(
            "--from",
            help="Object-store URL that `remi reindex --publish` writes (s3://bucket/prefix, ...; AWS_* credentials).",
            metavar="URL",
        ),
    ],
    root: Annotated[Path, Opt(help="Local index root the service follows (`remi serve --index-root`).")],
    once: Annotated[bool, Opt("--once", help="One round, then exit (status 2 when it failed).")] = False,
    every: Annotated[
        float, Opt(help="Seconds between two checks of the remote `current` (a loop until stopped).", min=0.1)
    ] = 10.0,
    force: Annotated[bool, Opt(help="Skip the replacement check (a new model with another catalogue).")] = False,
    *,
    flags: SettingsFlags,
) -> None:
    """Follow a published index: download the version the remote `current` names, check every hash, flip the local
    `current` only when it is complete. Replicas run this beside `remi serve` and never build."""
    from index.sync import sync_forever, sync_once

    settings = index_settings(flags)
    options: dict[str, Any] = {
        "keep": settings.keep,
        "force": force,
        "min_catalogue_overlap": settings.min_catalogue_overlap,
        "min_history_coverage": settings.min_history_coverage,
    }
    if once:
        result = sync_once(source, root, **options)
        typer.echo(json.dumps({"current": result.current, "changed": result.changed, "downloaded": result.downloaded,
                               "pruned": result.pruned, "seconds": round(result.seconds, 3)}))  # fmt: skip
        return
    sync_forever(source, root, every, **options)
