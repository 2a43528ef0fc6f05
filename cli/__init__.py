"""The ``remi`` command line: the root app and the console entry point.

Each command (or group) lives in its own module under ``cli/``, imported only when it runs
or ``--help`` lists it: ``remi serve`` loads neither torch nor the training package, and an
installation without the training components (the API image) still runs the service commands.
User errors (:class:`RemiError`) and a full disk print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import importlib
import sys
from functools import cache
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from remi.errors import RemiError, disk_full

# command name -> the module whose `app` defines it (a command, or a group of sub-commands)
COMMANDS: dict[str, str] = {
    "data": "cli.data",
    "train": "cli.train",
    "evaluate": "cli.train",
    "tune": "cli.train",
    "export": "cli.train",
    "index": "cli.index",
    "reindex": "cli.index",
    "serve": "cli.serve",
    "history": "cli.history",
    "loadtest": "cli.loadtest",
    "demo": "cli.demo",
    "auth": "cli.auth",
}
TRAIN_ONLY_MODULES = {"torch", "training", "optuna", "onnx", "onnxscript", "matplotlib", "tabulate"}


class LazyGroup(TyperGroup):
    """The root group: finds a command in its module when asked for it (click's lazy loading)."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *COMMANDS]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        try:
            found = _module_command(COMMANDS[cmd_name])
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in TRAIN_ONLY_MODULES:
                raise
            return _not_installed(cmd_name, exc)
        return found.get_command(ctx, cmd_name) if isinstance(found, TyperGroup) else found


@cache
def _module_command(module: str) -> Any:
    """The click command (or group) of a command module's ``app``, built once."""
    return typer.main.get_command(importlib.import_module(module).app)


def _not_installed(name: str, missing: ModuleNotFoundError) -> Any:
    """A stand-in for a command whose module needs the training stack: it says what to install."""
    stub = typer.Typer()
    settings = {"ignore_unknown_options": True, "allow_extra_args": True}

    @stub.command(name, context_settings=settings, add_help_option=False, help="(needs the training components)")
    def unavailable() -> None:
        raise missing

    return typer.main.get_command(stub)


app = typer.Typer(
    cls=LazyGroup,
    help="remi-match: multi-interest candidate matching trained with REMI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    log_level: Annotated[str, typer.Option(help="Log level of the JSON-lines log on stderr.")] = "WARNING",
) -> None:
    from remi.logs import setup_logging

    setup_logging(log_level)


def main() -> None:
    """Console entry point: user errors become one line and exit status 2."""
    try:
        app()
    except RemiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (OSError, RuntimeError) as exc:  # a full disk is the environment, not a bug: one line too
        if (line := disk_full(exc)) is None:
            raise
        print(f"error: {line}", file=sys.stderr)
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
