"""wrk against POST /recommend with ``recommend.lua`` (beside this module), and its one JSON line.

wrk costs far less client CPU per request than the Python client (``loadtest.client``), so on
a small machine it is the one that finds the server's ceiling. The Lua script posts a
``{"user_id", "k"}`` body per request for ids from a users file and, when wrk is done, prints
one line ``WRK_JSON {...}`` (requests, rate, latency percentiles in ms, socket errors, status
counts, fallbacks): :func:`parse_output` reads it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

RECOMMEND_LUA = Path(__file__).with_name("recommend.lua")
JSON_PREFIX = "WRK_JSON "


def wrk_argv(url: str, users_file: Path, concurrency: int, seconds: float, threads: int, k: int = 50) -> list[str]:
    """wrk's command line: ``threads`` capped at the connection count, whole seconds (at least 1)."""
    argv = ["wrk", f"-t{threads_used(concurrency, threads)}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s"]
    return argv + ["--latency", "-s", str(RECOMMEND_LUA), url, "--", str(users_file), str(k)]


def threads_used(concurrency: int, threads: int) -> int:
    """The wrk threads :func:`wrk_argv` asks for."""
    return max(1, min(threads, concurrency))


class WrkRun:
    """A wrk process started now; :meth:`finish` waits for it and returns its parsed summary."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self) -> dict[str, Any]:
        stdout, stderr = self.proc.communicate()
        return parse_output(stdout, stderr, self.proc.returncode)


def parse_output(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The ``WRK_JSON`` line's object; raises with wrk's own message when it failed or printed none."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith(JSON_PREFIX)), None)
    if returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({returncode}): {stderr.strip()[:500]} {stdout[-500:]}")
    summary: dict[str, Any] = json.loads(line[len(JSON_PREFIX) :])
    return summary


def ok_and_errors(summary: dict[str, Any]) -> tuple[int, int]:
    """2xx answers, and errors = non-2xx/3xx answers + socket errors (connect, read, write, timeout)."""
    ok = sum(n for code, n in summary["status_counts"].items() if 200 <= int(code) < 300)
    errors = int(summary["non_2xx_3xx"]) + sum(summary["socket_errors"].values())
    return ok, errors


def version() -> str:
    """wrk's version line (wrk -v prints it and exits non-zero)."""
    return subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
