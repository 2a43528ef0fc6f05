"""``remi demo``: the quick start, from planted-topic data to a served model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from cli.serve import serve as run_server
from remi.errors import RemiError
from service.config import ServiceSettings

Opt = typer.Option
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)
SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.json"


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
    from index.publish import reindex
    from training.config import load_config
    from training.export import export_run
    from training.synth import SynthConfig, write
    from training.trainer import train

    data = write(SynthConfig(), out / "data")
    typer.echo(f"data: {data}")
    cfg = load_config(
        SHIPPED_CONFIG if SHIPPED_CONFIG.is_file() else None,
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
    published = reindex(out / "artifacts", out / "index")
    typer.echo(f"index: {out / 'index'}  (current = {published.index_version}, {published.manifest.kind})")
    user = next(iter(open_users(data)))
    url = f"http://{host}:{port}"
    body = json.dumps({"user_id": user, "k": 10})
    typer.echo(
        "\ntry it:\n"
        f"  curl -s -X POST {url}/recommend -H 'content-type: application/json' -d '{body}'\n"
        f"  curl -s {url}/users/{user}/interests\n"
        f"  open {url}/docs for the API\n"
    )
    if serve:
        run_server({"index_root": out / "index", "host": host, "port": port, "seed_history": str(data)})


def serve_address(host: str | None, port: int | None) -> tuple[str, int]:
    """Where `remi demo` serves: its flags, else REMI_HOST / REMI_PORT, else serve's defaults.

    The same precedence as `remi serve` (flags over REMI_* settings over the defaults), read
    from the same settings class so the two commands cannot disagree.
    """
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
