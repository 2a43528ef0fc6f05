"""Pytest markers that sort the suite by what a test needs: ``trains`` (torch training), ``server``
(a real server or CLI process) and ``redis`` (the shared Redis server or one of its own).

Why by reading the code rather than by hand: a marker written by hand goes stale the day a test
starts a server through a new helper. Each test is marked from the source of its function, of the
fixtures it uses (the whole closure) and of the same module's helpers it calls, one level deep, so
a test moved between files keeps its marks and a new test gets them without anyone remembering.
The fast inner loop (README, Development) is ``python -m pytest -m "not trains and not server"``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import pytest

# What each mark looks for in the code a test runs.
PATTERNS: dict[str, re.Pattern[str]] = {
    "trains": re.compile(r"(?<![.\w])train\(|\btrained_run\b|\bartifacts_dir\b|\"train\"|'train'|\bsa_run\b"),
    "server": re.compile(
        r"start_server\(|ServerProcess|subprocess\.|Popen\(|run_cli\(|\"serve\"|'serve'|\bapi\b: |uvicorn\.run|"
        r"multiprocessing|\bworkers\b=\s*2|mp\.get_context"
    ),
    "redis": re.compile(
        r"needs_redis|redis_prefix|own_redis|6379|REDIS_URL|redis\.Redis|redis_url|RedisHistory|from_url\("
    ),
}
DESCRIPTIONS = {
    "trains": "trains a torch model (seconds to a minute each)",
    "server": "starts a process: a real server, a CLI run or workers",
    "redis": "talks to a real Redis (the shared one, under its own key prefix, or one it starts)",
}


def register(config: pytest.Config) -> None:
    for name, text in DESCRIPTIONS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _source(obj: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _helpers_called(code: str, names: dict[str, Any], seen: set[str]) -> list[str]:
    """Sources of the test-suite functions that ``code`` calls (resolved in the test's module)."""
    found = []
    for name in set(re.findall(r"\b(\w+)\(", code)) - seen:
        obj = names.get(name)
        if inspect.isfunction(obj) and obj.__module__.startswith("tests"):
            seen.add(name)
            found.append(_source(obj))
    return found


def code_of(item: pytest.Function, depth: int = 2) -> str:
    """The source a test runs: its function, every fixture in its closure, and the test-suite
    helpers these call (resolved in the test's module, ``depth`` calls deep)."""
    parts = [_source(item.function), " ".join(item.fixturenames)]
    for defs in item._fixtureinfo.name2fixturedefs.values():
        parts += [_source(d.func) for d in defs]
    names, seen = item.function.__globals__, set()
    new = parts
    for _ in range(depth):
        new = _helpers_called("\n".join(new), names, seen)
        parts += new
    return "\n".join(parts)


def apply(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        code = code_of(item)
        for name, pattern in PATTERNS.items():
            if pattern.search(code):
                item.add_marker(getattr(pytest.mark, name))
