"""``remi history load``: per-user histories into the service's Redis store."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from remi.errors import RemiError
from service.config import ServiceSettings

Opt = typer.Option
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)
history_app = typer.Typer(help="Per-user histories in the service's Redis store.", no_args_is_help=True)
app.add_typer(history_app, name="history")
SERVICE = ServiceSettings.model_fields  # the defaults the help states are the service's


@history_app.command("load")
def history_load_cmd(
    data: Annotated[
        Path, Opt(help="user_id,item_id,timestamp as CSV(.gz), a Parquet file or a folder of Parquet parts.")
    ],
    redis_url: Annotated[
        str | None, Opt(help="Redis URL (default REMI_REDIS_URL); cluster/sentinel URLs work.")
    ] = None,
    prefix: Annotated[
        str | None, Opt(help=f"Key namespace (default REMI_REDIS_PREFIX or {SERVICE['redis_prefix'].default}).")
    ] = None,
    max_len: Annotated[
        int | None,
        Opt(
            min=1, help=f"Events kept per user (default REMI_HISTORY_MAX_LEN or {SERVICE['history_max_len'].default})."
        ),
    ] = None,
    ttl_days: Annotated[
        float | None,
        Opt(
            min=0.0,
            help="Expiry of each list in days, 0 = none "
            f"(default REMI_HISTORY_TTL_DAYS or {SERVICE['history_ttl_days'].default:g}).",
        ),
    ] = None,
    rows_per_partition: Annotated[
        int, Opt(min=1000, help="Rows sorted in memory at once (memory bound; more = fewer temporary files).")
    ] = 2_000_000,
    retry_seconds: Annotated[
        float,
        Opt(min=0.0, help="How long a batch is sent again while a failover or a slot move is under way."),
    ] = 60.0,
    progress: Annotated[bool, Opt(help="Progress bars on stderr.")] = True,
) -> None:
    """Load histories into Redis so the service answers the data's users personalised from the start.

    Each user in DATA gets their last MAX_LEN events by timestamp (ties in file order), with the
    service's key scheme, encoding and expiry. A loaded user's list is REPLACED atomically (events
    it had in Redis, e.g. posted to the API, are dropped); users not in DATA are untouched. So a
    re-run leaves the same lists, never doubled ones. Streamed in two passes through temporary
    files: memory is bounded by --rows-per-partition, not by the file.
    """
    from service.history_load import load_history

    settings = ServiceSettings()
    url = redis_url or settings.redis_url
    if not url:
        raise RemiError("no Redis URL: pass --redis-url or set REMI_REDIS_URL")
    if ttl_days is not None:  # the flag wins; the settings turn days into the store's seconds
        settings = settings.model_copy(update={"history_ttl_days": ttl_days})
    ttl = settings.history_ttl_seconds
    report = load_history(
        data,
        url,
        prefix=settings.redis_prefix if prefix is None else prefix,
        max_len=max_len or settings.history_max_len,
        ttl_seconds=ttl,
        rows_per_partition=rows_per_partition,
        retry_s=retry_seconds,
        access=settings.redis_access(),
        progress=progress and os.environ.get("REMI_NO_PROGRESS") is None,
    )
    typer.echo(json.dumps(report.as_dict()))
    typer.echo(report.line(), err=True)
