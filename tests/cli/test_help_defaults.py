"""Defaults shown in `--help` are the ones the code uses (README.md#configuration-reference; HNSW
help once said 32/80/128).

`remi train`, `remi serve`, `remi index build` and `remi reindex` generate one flag per settings
field; these tests read the expected flags and defaults from the settings classes, so they
follow the code instead of a copy of it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel, SecretStr

from cli import app
from index.params import DEFAULTS, IndexSettings
from service.config import ServiceSettings
from training.config import TrainConfig

# "(default 48)", "(default 8000 or REMI_PORT)", "(default REMI_REDIS_PREFIX or remi:)", "[default: auto]"
DEFAULT_IN_HELP = re.compile(r"\(default:? (?:REMI_\w+ or )?([^\s),;]+)|\[default: ([^\]]+)\]")
WIDE = {**os.environ, "COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}
GENERATED: dict[str, tuple[type[BaseModel], set[str]]] = {  # command -> settings class, fields without a flag
    "train": (TrainConfig, set()),
    # secrets: from the environment or a secrets folder only, never a flag (visible in ps)
    "serve": (
        ServiceSettings,
        {"admin_token", "jwt_secret", "milvus_token", "redis_password", "redis_sentinel_password"},
    ),
    "index build": (IndexSettings, {"keep", "min_catalogue_overlap", "min_history_coverage"}),
    "reindex": (IndexSettings, set()),
}


def rendered_help(command: str) -> dict[str, str]:
    """`remi COMMAND --help` as a user sees it, as {flag: its whole row(s)} (rows may wrap)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *command.split(), "--help"], capture_output=True, text=True, env=WIDE
    )
    assert proc.returncode == 0, proc.stderr
    rows: dict[str, str] = {}
    flag = None
    for line in proc.stdout.splitlines():
        match = re.match(r"[│|]\s*\*?\s*(--[a-z0-9-]+)", line)
        if match:
            flag = match.group(1)
            rows[flag] = line
        elif flag and re.match(r"[│|]\s{4,}\S", line):  # a wrapped continuation of the row above
            rows[flag] += " " + line
        else:
            flag = None
    return rows


def shown_default(field_default: Any, flag: str) -> str:
    """How typer prints a default: a bool flag by its name, anything else as str()."""
    if isinstance(field_default, bool):
        return flag[2:] if field_default else f"no-{flag[2:]}"
    return str(field_default)


@pytest.mark.parametrize("command", sorted(GENERATED))
def test_every_setting_is_a_flag_with_its_description_and_real_default(command: str) -> None:
    model, without_flag = GENERATED[command]
    rows = rendered_help(command)
    for name, field in model.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in without_flag:
            assert flag not in rows, f"remi {command}: {flag} should not be a flag"
            continue
        assert flag in rows, f"remi {command}: no {flag} for setting {name}"
        row = re.sub(r"\s+", " ", rows[flag])
        assert field.description and field.description.split(" (")[0] in row, f"remi {command} {flag}: help"
        if field.default is None or field.default == "" or field.is_required():
            assert "[default:" not in row, f"remi {command} {flag}: {row}"
        elif name != "index_root":  # required on `remi serve`, as before
            shown = re.search(r"\[default: ([^\]]+)\]", row)
            assert shown, f"remi {command} {flag}: no default shown: {row}"
            assert shown.group(1) == shown_default(field.default, flag), f"remi {command} {flag}: {row}"


def test_every_settings_field_has_a_description() -> None:
    for model in (TrainConfig, ServiceSettings, IndexSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_index_build_help_shows_the_hnsw_and_ivfpq_defaults_the_builder_uses() -> None:
    from index.build import resolve_params

    rows = rendered_help("index build")
    shown = {}
    for flag, row in rows.items():
        match = re.search(r"\[default: (\d+)\]", row)
        if match:
            shown[flag[2:].replace("-", "_")] = int(match.group(1))
    hnsw = resolve_params("hnsw", 100_000, 64)  # what the builder really uses
    assert (shown["hnsw_m"], shown["ef_construction"], shown["ef_search"]) == (
        hnsw["m"],
        hnsw["ef_construction"],
        hnsw["ef_search"],
    )
    assert (hnsw["m"], hnsw["ef_construction"], hnsw["ef_search"]) == (48, 200, 64)  # help once said 32/80/128
    ivfpq = resolve_params("ivfpq", 100_000, 64)
    for name in ("nbits", "nprobe", "refine"):
        assert shown[name] == ivfpq[name] == DEFAULTS["ivfpq"][name]


def test_every_allowed_value_of_a_literal_setting_is_offered_in_help() -> None:
    rows = {**rendered_help("train"), **{f"index:{k}": v for k, v in rendered_help("index build").items()}}
    assert "[comirec-sa|comirec-dr|mind|dnn|sasrec]" in rows["--model"]
    assert "[off|log2|log3|log4]" in rows["--adaptive-interests"] and "[last|all]" in rows["--seq-targets"]
    assert "[sampled|ihn|rr|remi]" in rows["--scheme"]
    assert "[raw|cosine|standardized]" in rows["--ihn-scores"]
    assert "[authors|valid]" in rows["--rr-norm"]
    assert "[flat|hnsw|ivfpq|auto]" in rows["index:--kind"]


def real_default(command: str, name: str, option: Any) -> tuple[bool, Any]:
    """The default an option's help text should state: the setting it falls back to, or its own."""
    if command in GENERATED and name in GENERATED[command][0].model_fields:
        return True, GENERATED[command][0].model_fields[name].default
    if command in ("serve", "demo") and name in ServiceSettings.model_fields and option.default is None:
        return True, ServiceSettings.model_fields[name].default
    if command == "train" and name in TrainConfig.model_fields and option.default is None:
        return True, TrainConfig.model_fields[name].default
    if command == "history load" and option.default is None:
        service = {"prefix": "redis_prefix", "max_len": "history_max_len", "ttl_days": "history_ttl_days"}
        if name in service:
            return True, ServiceSettings.model_fields[service[name]].default
    if option.default is not None:
        return True, option.default
    return False, None


def walk(group: Any, ctx: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every leaf command with its full name (typer ships its own click, so by duck type)."""
    out = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        full = f"{prefix}{name}"
        if hasattr(command, "list_commands"):
            out += walk(command, ctx, full + " ")
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
    ctx = typer.Context(root)
    checked, wrong = 0, []
    for command_name, command in walk(root, ctx):
        for param in command.params:
            if getattr(param, "param_type_name", "") != "option":
                continue
            known, real = real_default(command_name, param.name or "", param)
            stated = [m.group(1) or m.group(2) for m in DEFAULT_IN_HELP.finditer(getattr(param, "help", None) or "")]
            if getattr(param, "show_default", False) is True and param.default is not None and not param.is_flag:
                stated.append(str(param.default))  # what `[default: ...]` will print
            for shown in stated:
                if not re.fullmatch(r"[\w.:/-]+", shown) or not known:
                    continue  # a formula ("4 sqrt(items)", "d / 4") or a behaviour, not a value
                if not any(c.isdigit() for c in shown) and not isinstance(real, bool | str | Path):
                    continue  # "when stderr is a terminal" and the like
                checked += 1
                if not same(shown, real):
                    wrong.append(f"remi {command_name} --{param.name}: help says {shown}, the code uses {real}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 60, f"only {checked} stated defaults found: the parser no longer sees them"


def test_secrets_are_never_flags() -> None:
    secret = [n for n, f in ServiceSettings.model_fields.items() if SecretStr in getattr(f.annotation, "__args__", ())]
    assert secret == ["milvus_token", "admin_token", "jwt_secret", "redis_password", "redis_sentinel_password"]
    help_text = rendered_help("serve")
    for name in secret:
        assert f"--{name.replace('_', '-')}" not in help_text, name


@pytest.mark.parametrize("model", [TrainConfig, ServiceSettings, IndexSettings], ids=lambda m: m.__name__)
def test_every_setting_is_still_read_from_its_environment_variable(
    model: type[BaseModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generated flags did not replace the REMI_* variables (precedence: tests/cli/test_settings.py)."""
    prefix = str(model.model_config.get("env_prefix"))
    for var in [v for v in os.environ if v.startswith("REMI_")]:
        monkeypatch.delenv(var)
    for name, field in model.model_fields.items():
        if field.default not in (None, ""):
            value = str(field.default).lower() if isinstance(field.default, bool) else str(field.default)
            monkeypatch.setenv(f"{prefix}{name.upper()}", value)
    read = model()
    assert read.model_fields_set == {n for n, f in model.model_fields.items() if f.default not in (None, "")}
