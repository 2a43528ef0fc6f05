"""Schemathesis, every check (`--checks all`), against the live server's /openapi.json.

Runs the `schemathesis run` CLI in a subprocess rather than its pytest plugin: the plugin reaches
into pytest internals (`Function._nodeid`) and broke with pytest 9.2; the CLI is its stable
interface. Bounded (a fixed number of cases per operation, fixed seed, one worker) so it takes
well under a minute; the admin token is sent so /admin/reload's body is exercised too.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.conftest import SHARED_REDIS, Server, delete_prefix, start_server


@pytest.fixture(scope="module")
def api(artifacts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared fixture's server, with REMI_EVENT_MAX_FUTURE_S past the largest integer a body may
    hold: an event timestamp's bound then does not move with the clock, so the document states it
    exactly (by default it states the bound as of when it was built, which the server's own bound
    only ever passes: schemathesis would call a timestamp a second past it schema-violating)."""
    prefix = f"remi-test:{uuid.uuid4().hex[:12]}:"
    root = tmp_path_factory.mktemp("fuzz") / "root"
    server = start_server(
        root,
        artifacts_dir,
        REMI_REDIS_URL=SHARED_REDIS,
        REMI_REDIS_PREFIX=prefix,
        REMI_ADMIN_TOKEN="s3cret",
        REMI_EVENT_MAX_FUTURE_S=str(2**53),
    )
    yield server
    server.stop()
    delete_prefix(SHARED_REDIS, prefix)


def test_api_conforms_to_its_schema_with_every_check(api: Server, tmp_path: Path) -> None:
    args = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/openapi.json",
        "--checks", "all",
        "--max-examples", "60",
        "--seed", "20261128",
        "--workers", "1",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--request-timeout", "30",
        "--header", "Authorization: Bearer s3cret",
        "--no-color",
    ]  # fmt: skip
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    print(proc.stdout[-4000:])  # the summary, shown with -s or on failure
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:]
