"""``remi serve``: the HTTP service under uvicorn, one process or SO_REUSEPORT workers (service/workers.py).

Its flags are generated from :class:`~service.config.ServiceSettings` (secrets only come from
the environment). The command builds one validated ServiceSettings from the flags and the
REMI_* environment and hands it to the server processes in one way, as the REMI_* variables of
:meth:`ServiceSettings.export_env`, which the app factory (in this process or in each worker)
reads back with ``ServiceSettings()``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from cli.options import SettingsFlags, settings_error, settings_options
from remi.errors import RemiError
from service.config import ServiceSettings

app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)
NATIVE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@app.command("serve")
@settings_options(ServiceSettings, panel="Settings (flag > REMI_* > default)")
def serve_cmd(
    access_log: Annotated[bool, typer.Option(help="uvicorn access log (off: it costs throughput).")] = False,
    *,
    flags: SettingsFlags,
) -> None:
    """Serve POST /recommend and friends with uvicorn; every REMI_* setting applies (see README)."""
    serve(flags, access_log=access_log)


def service_settings(flags: SettingsFlags) -> ServiceSettings:
    """The service's settings: the flags given, then REMI_* variables, then the defaults."""
    try:
        return ServiceSettings(**flags)
    except ValidationError as exc:
        raise settings_error(exc) from exc


def serve(flags: SettingsFlags, access_log: bool = False) -> None:
    """Checks the settings and the index root, then runs the server until it is stopped."""
    settings = service_settings(flags)
    # Native thread pools (OpenMP in FAISS, OpenBLAS in numpy) default to one thread per core and
    # spin while idle; per-request work is far too small to split, and the spinning threads steal
    # the cores other workers need (measured: 634 -> 1,024 req/s with 2 workers). One each, set
    # before anything imports numpy or FAISS.
    for var in NATIVE_THREAD_VARS:
        os.environ.setdefault(var, str(settings.faiss_threads))
    settings.export_env(os.environ)  # what every server process reads: ServiceSettings() == settings
    # With --backend milvus the versions come from `remi reindex --backend milvus`: wait for its alias.
    waits = settings.wait_for_index or settings.backend == "milvus"
    _check_serve_paths(settings.index_root, settings.artifacts, waits)

    from remi.logs import setup_logging
    from service import workers

    level = settings.log_level.lower()
    setup_logging(level)
    # The port first, before the model or a first index version costs time: a taken port is one
    # line and exit 2, for one worker as for several (service/workers.py, one server per port).
    listeners = workers.listen(settings.host, settings.port, settings.workers)
    try:
        if settings.redis_url and settings.seed_history:
            warning = "--seed-history is ignored with a Redis history store: load it with `remi history load`"
            logging.getLogger("cli").warning(warning, extra={"path": settings.seed_history})
            typer.echo(f"warning: {warning}", err=True)
        if settings.artifacts is not None and settings.wait_for_index:
            logging.getLogger("cli").warning(
                "--artifacts is ignored with REMI_WAIT_FOR_INDEX: waiting for a synced version",
                extra={"artifacts": str(settings.artifacts), "index_root": str(settings.index_root)},
            )
        elif settings.artifacts is not None and settings.backend == "milvus":
            logging.getLogger("cli").warning(
                "--artifacts is ignored with --backend milvus: publish with `remi reindex --backend milvus`",
                extra={"artifacts": str(settings.artifacts), "milvus_alias": settings.milvus_alias},
            )
        elif settings.artifacts is not None:
            _publish_first(settings.artifacts, settings.index_root)
        if settings.workers > 1:
            workers.serve_workers(
                settings.workers, settings.host, listeners.port, level, access_log, listeners=listeners
            )
        else:
            workers.serve_one(listeners, level, access_log)
    finally:
        listeners.close()


def _publish_first(artifacts: Path, root: Path) -> None:
    """The first index version from ``--artifacts`` when the root has none, once, before any worker starts.

    The server processes only read versions (retrieval.store); building one is the batch job's side
    (index.publish). A failure does not stop the command: the workers start, answer 503 and say
    why in /readyz.
    """
    from index.publish import publish_first

    try:
        publish_first(artifacts, root)
    except Exception as exc:  # a bad artifact folder must not stop the process
        logging.getLogger("cli").error("could not build the first index version", extra={"error": str(exc)})


def _check_serve_paths(root: Path, artifacts: Path | None, wait: bool = False) -> None:
    """Refuses a start that can never become ready (it would answer 503 until someone looks).

    An index root with at least one complete version starts even if ``current`` is broken: the
    worker then serves the last good version (see service/versions.py). Without one, only
    ``--artifacts`` (an existing folder) can give it a first version, or, with ``wait``
    (REMI_WAIT_FOR_INDEX), whoever fills the root: the replica's `remi index sync`, which may
    not have created it yet (the root is made here, so that the sync and the blocklist's disk
    copy find it).
    """
    from remi.contract import list_versions

    if root.exists() and not root.is_dir():
        raise RemiError(f"index root {root}: not a folder")
    if wait:
        root.mkdir(parents=True, exist_ok=True)
        return
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
