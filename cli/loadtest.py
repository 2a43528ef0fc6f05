"""``remi loadtest``: drive POST /recommend and report requests/s and latency (a tool, not the service)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from remi.errors import RemiError

Opt = typer.Option
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)


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
    api_key: Annotated[
        str | None,
        Opt(
            envvar="REMI_API_KEY",
            show_envvar=True,
            help="Bearer credential with the `recommend` scope (a secret: prefer the variable to the flag).",
        ),
    ] = None,
) -> None:
    """Load-test POST /recommend: prints requests/s, latency percentiles, errors and fallbacks (JSON)."""
    from loadtest.client import run_loadtest, summary_line  # the one import path of the client

    if not users_from.is_file():
        raise RemiError(f"{users_from}: no such file")
    try:
        result = run_loadtest(
            url, users_from, concurrency, duration, k=k, warmup=warmup, seed=seed, timeout=timeout, api_key=api_key
        )
    except ValueError as exc:
        raise RemiError(str(exc)) from exc
    text = json.dumps(result, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    typer.echo(text)
    typer.echo(summary_line(result), err=True)
