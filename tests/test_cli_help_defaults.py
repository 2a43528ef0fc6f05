"""Defaults shown in `--help` are the ones the code uses (issue 9 C: HNSW help said 32/80/128)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import typer

from index.params import DEFAULTS
from remi.cli import app
from service.config import ServiceSettings
from training.config import TrainConfig

# "(default 48)", "(default 1 or REMI_WORKERS)", "(default 127.0.0.1 or REMI_HOST)", "[default: auto]"
DEFAULT_IN_HELP = re.compile(r"\(default:? ([^\s),;]+)|\[default: ([^\]]+)\]")
INDEX_NAMES = {"hnsw_m": "m"}


def test_index_build_help_shows_the_hnsw_and_ivfpq_defaults_the_builder_uses() -> None:
    env = {**os.environ, "COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "remi.cli", "index", "build", "--help"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    shown = {}
    for line in proc.stdout.splitlines():
        match = re.search(r"--([a-z-]+)\s.*\(default (\d+)\)", line)
        if match:
            shown[match.group(1).replace("-", "_")] = int(match.group(2))
    hnsw = DEFAULTS["hnsw"]
    assert shown["hnsw_m"] == hnsw["m"]
    assert shown["ef_construction"] == hnsw["ef_construction"]
    assert shown["ef_search"] == hnsw["ef_search"]
    for name in ("nbits", "nprobe", "refine"):
        assert shown[name] == DEFAULTS["ivfpq"][name]


def real_default(command: str, name: str, option: Any) -> tuple[bool, Any]:
    """The default an option's help text should state: the setting it falls back to, or its own."""
    if command in ("serve", "demo") and name in ServiceSettings.model_fields and option.default is None:
        return True, ServiceSettings.model_fields[name].default
    if command == "train" and name in TrainConfig.model_fields and option.default is None:
        return True, TrainConfig.model_fields[name].default
    if command in ("index build", "reindex") and option.default is None:
        key = INDEX_NAMES.get(name, name)
        for kind in ("hnsw", "ivfpq"):
            if DEFAULTS[kind].get(key) is not None:
                return True, DEFAULTS[kind][key]
        return False, None
    if option.default is not None:
        return True, option.default
    return False, None


def walk(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf command with its full name (typer ships its own click, so by duck type)."""
    out = []
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if hasattr(command, "commands"):
            out += walk(command, full + " ")
        else:
            out.append((full, command))
    return out


def same(shown: str, real: Any) -> bool:
    if isinstance(real, bool):
        return shown.lower() in (str(real).lower(), "on" if real else "off")
    if isinstance(real, int | float):
        try:
            return float(shown) == float(real)
        except ValueError:
            return False
    return shown == str(real)


def test_every_default_stated_in_any_commands_help_is_the_real_default() -> None:
    root = typer.main.get_command(app)
    checked, wrong = 0, []
    for command_name, command in walk(root):
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option" or not getattr(param, "help", None):
                continue
            known, real = real_default(command_name, param.name or "", param)
            for match in DEFAULT_IN_HELP.finditer(param.help):
                shown = match.group(1) or match.group(2)
                if not re.fullmatch(r"[\w.:/-]+", shown) or not known:
                    continue  # a formula ("4 sqrt(items)", "d / 4") or a behaviour, not a value
                if not any(c.isdigit() for c in shown) and not isinstance(real, bool | str):
                    continue  # "when stderr is a terminal" and the like
                checked += 1
                if not same(shown, real):
                    wrong.append(f"remi {command_name} --{param.name}: help says {shown}, the code uses {real}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 10, f"only {checked} stated defaults found: the parser no longer sees them"
