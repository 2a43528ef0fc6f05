"""Command-line options generated from a settings class, so a flag cannot drift from its setting.

:func:`settings_options` gives a command one ``--flag`` per field of a pydantic-settings class:
the field's description is the help, its default is the option's default (shown as
``[default: ...]``), a Literal's values are the choices and its bounds are stated. The command
receives only the flags the user actually typed (``SettingsFlags``) and hands them to the
settings class, which applies the precedence (flag > config file > REMI_* environment > default)
and is the one validator: a bad value is one ``error: invalid setting FIELD: ...`` line, exit 2.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import typer
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from remi.errors import RemiError

SettingsFlags = dict[str, Any]  # the settings flags given on the command line, by field name
Command = Callable[..., None]

_LOWER = {annotated_types.Ge: ("ge", "<="), annotated_types.Gt: ("gt", "<")}  # written "1 <= x"
_UPPER = {annotated_types.Le: ("le", "<="), annotated_types.Lt: ("lt", "<")}  # written "x <= 1"


def settings_options(
    model: type[BaseModel],
    *,
    exclude: Collection[str] = (),
    required: Collection[str] = (),
    panel: str | None = None,
) -> Callable[[Command], Command]:
    """Decorator: replaces the command's ``flags: SettingsFlags`` parameter by one option per field.

    ``exclude`` names fields that get no flag (secrets never do: a flag shows in ``ps``);
    ``required`` names fields whose flag must be given; ``panel`` groups the generated options
    under their own heading in ``--help``. The command's other parameters are kept as written.
    """

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "flags"]
        if len(own) == len(signature.parameters):
            raise TypeError(f"{command.__name__} has no `flags: SettingsFlags` parameter")
        fields = {
            name: field
            for name, field in model.model_fields.items()
            if name not in exclude and _base_type(field.annotation)[0] is not SecretStr
        }
        generated = [_option(name, field, name in required, panel) for name, field in fields.items()]
        context = inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        def wrapper(_ctx: typer.Context, **values: Any) -> None:
            flags = {name: values.pop(name) for name in fields if _typed(_ctx, name)}
            for name in fields:
                values.pop(name, None)
            command(**values, flags=flags)

        parameters = [*own, *generated, context]
        # typer builds a command's options from inspect.signature(), which reads __signature__
        wrapper.__dict__["__signature__"] = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        wrapper.__name__, wrapper.__qualname__ = command.__name__, command.__qualname__
        wrapper.__doc__, wrapper.__module__ = command.__doc__, command.__module__
        return wrapper

    return decorate


def settings_error(exc: ValidationError) -> RemiError:
    """The first problem of a settings validation, as the one-line user error the CLI prints."""
    err = exc.errors()[0]
    field = ".".join(str(x) for x in err["loc"])
    return RemiError(f"invalid setting {field}: {err['msg']}" if field else f"invalid settings: {err['msg']}")


def choices_metavar(choices: Any) -> str:
    """How --help shows a Literal's values, e.g. ``[sampled|ihn|rr|remi]``."""
    return f"[{'|'.join(str(v) for v in get_args(choices))}]"


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave this option (not its default): only those override the settings."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _option(name: str, field: FieldInfo, required: bool, panel: str | None) -> inspect.Parameter:
    """One keyword parameter ``Annotated[type, typer.Option(...)]`` for a settings field."""
    base, choices = _base_type(field.annotation)
    hint: Any = base if required or field.default is not None else base | None
    default = ... if required else field.default
    bounds = _bounds(field)
    option = typer.Option(
        help=f"{field.description} ({bounds})" if bounds else field.description,
        metavar=f"[{'|'.join(choices)}]" if choices else None,
        show_default=field.default not in (None, ""),
        rich_help_panel=panel,
    )
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[hint, option], default=default)


def _base_type(annotation: Any) -> tuple[Any, tuple[str, ...]]:
    """The command-line type of a field (``X | None`` -> X; a Literal -> str and its values)."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not NoneType]
        annotation = args[0] if len(args) == 1 else str
    if get_origin(annotation) is Literal:
        return str, tuple(str(v) for v in get_args(annotation))
    if annotation in (bool, int, float, str, Path, SecretStr):
        return annotation, ()
    return str, ()


def _bounds(field: FieldInfo) -> str:
    """The field's bounds as help text, e.g. ``1 <= x``, ``0 < x <= 1`` (the settings class checks them)."""
    lower = upper = ""
    for item in field.metadata:
        for kind, (attr, symbol) in _LOWER.items():
            if isinstance(item, kind):
                lower = f"{getattr(item, attr)} {symbol} "
        for kind, (attr, symbol) in _UPPER.items():
            if isinstance(item, kind):
                upper = f" {symbol} {getattr(item, attr)}"
    return f"{lower}x{upper}" if lower or upper else ""


def settings_table(model: type[BaseModel]) -> str:
    """The README's reference table of a settings class: variable, default, allowed values, meaning."""
    prefix = str(model.model_config.get("env_prefix", ""))
    lines = ["| setting (env) | default | what |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        choices = _base_type(field.annotation)[1]
        what = f"{field.description} One of {', '.join(choices)}." if choices else field.description
        lines.append(f"| `{prefix}{name.upper()}` | `{field.default}` | {what} |")
    return "\n".join(lines)
