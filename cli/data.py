"""``remi data``: generate synthetic interactions, convert public raw dumps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from remi.errors import RemiError

Opt = typer.Option
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)
data_app = typer.Typer(help="Datasets: generate synthetic data, convert public raw dumps.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth(
    out: Annotated[
        Path, Opt(help="Output folder; gets interactions.csv.gz or .parquet, and topics.json (ground truth).")
    ],
    users: Annotated[int, Opt(min=1, help="Number of users.")] = 2000,
    items: Annotated[int, Opt(min=2, help="Number of items.")] = 1000,
    topics: Annotated[int, Opt(min=1, help="Number of planted topic clusters.")] = 20,
    min_len: Annotated[int, Opt(min=1, help="Shortest user sequence.")] = 10,
    max_len: Annotated[int, Opt(min=1, help="Longest user sequence.")] = 60,
    rows: Annotated[
        int | None,
        Opt(
            min=1000,
            help="A Taobao-shaped set of about this many interactions instead: rows/100 users (20-180 each), "
            "rows/25 items, ~4,000 items per topic (replaces --users, --items, --topics, --min-len, --max-len). "
            "100000000 is ComiRec's Taobao scale (~1 min, ~1 GB of Parquet).",
        ),
    ] = None,
    fmt: Annotated[
        str, Opt("--format", help="csv (interactions.csv.gz) or parquet (interactions.parquet, zstd; for large sets).")
    ] = "csv",
    seed: Annotated[int, Opt(help="Random seed.")] = 0,
) -> None:
    """Write synthetic interactions with planted topics (2-4 per user, interleaved, Zipf popularity)."""
    from training.synth import SynthConfig, write

    if max_len < min_len:
        raise RemiError("--max-len must be >= --min-len")
    if fmt not in ("csv", "parquet"):
        raise RemiError(f"--format must be csv or parquet, got {fmt!r}")
    if rows is not None:
        cfg = SynthConfig.taobao(rows, seed=seed)
    else:
        cfg = SynthConfig(users=users, items=items, topics=topics, min_len=min_len, max_len=max_len, seed=seed)
    path = write(cfg, out, fmt="parquet" if fmt == "parquet" else "csv", progress=True)
    typer.echo(str(path))


@data_app.command("convert")
def convert_cmd(
    fmt: Annotated[str, Opt("--format", help="Raw format: amazon-reviews, movielens or retailrocket.")],
    input_path: Annotated[Path, Opt("--input", help="Raw file (gzip or plain, detected by content).")],
    out: Annotated[
        Path,
        Opt(help="File to write (user_id,item_id,timestamp): CSV, gzipped if it ends in .gz, Parquet if .parquet."),
    ],
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
