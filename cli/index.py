"""``remi index build|status|rollback`` and ``remi reindex``: the FAISS item index.

The build settings (kind, HNSW / IVF-PQ parameters, recall gate, versions kept) are flags
generated from :class:`~index.params.IndexSettings`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cli.options import SettingsFlags, settings_error, settings_options
from index.params import REINDEX_ONLY, IndexSettings

Opt = typer.Option
PANEL = "Index settings (flag > REMI_INDEX_* > default)"
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)
index_app = typer.Typer(help="FAISS item index: build one, inspect or roll back an index root.", no_args_is_help=True)
app.add_typer(index_app, name="index")


def index_settings(flags: SettingsFlags) -> IndexSettings:
    """The build settings: the flags given, then REMI_INDEX_* variables, then the defaults."""
    try:
        return IndexSettings(**flags)
    except ValidationError as exc:
        raise settings_error(exc) from exc


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
    *,
    flags: SettingsFlags,
) -> None:
    """Batch reindex: build a new index version, validate it, then flip `current` atomically."""
    from index.publish import reindex

    settings = index_settings(flags)
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
    )
    summary = {
        "current": result.index_version,
        "previous": result.previous,
        "built": result.built,
        "kind": result.manifest.kind,
        "params": result.manifest.params,
        "recall@50": result.manifest.recall_at_50,
        "build_seconds": result.manifest.build_seconds,
        "pruned": result.pruned,
        "seconds": round(result.seconds, 2),
    }
    typer.echo(json.dumps(summary, indent=2))


@index_app.command("status")
def index_status_cmd(root: Annotated[Path, Opt(help="Index root.")]) -> None:
    """Show the version `current` points to and the complete versions kept."""
    from remi.contract import list_versions, read_current

    typer.echo(json.dumps({"current": read_current(root), "versions": list_versions(root)}, indent=2))


@index_app.command("rollback")
def index_rollback_cmd(
    root: Annotated[Path, Opt(help="Index root.")],
    to: Annotated[str | None, Opt(help="Version to activate (default: the one before current).")] = None,
) -> None:
    """Point `current` back at an older complete version (validated first)."""
    from index.publish import rollback

    typer.echo(json.dumps({"current": rollback(root, to)}))
