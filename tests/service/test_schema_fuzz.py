"""Schemathesis, every check (`--checks all`), against the live server's /openapi.json.

Runs the `schemathesis run` CLI in a subprocess rather than its pytest plugin: the plugin reaches
into pytest internals (`Function._nodeid`) and broke with pytest 9.2; the CLI is its stable
interface. Bounded (a fixed number of cases per operation, fixed seed, one worker) so it takes
well under a minute; the admin token is sent so /admin/reload's body is exercised too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.service.conftest import Server


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
