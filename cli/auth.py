"""``remi auth``: the API keys of the service's keys file (REMI_API_KEYS_FILE): add, list, revoke.

The file holds each key's SHA-256, never the key (service/auth.py says why that suffices); a
new key is printed once, on stdout, and cannot be shown again. Every change replaces the file
atomically, and a running service picks it up within a second, without a restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from remi.errors import RemiError
from service.auth import SCOPES, KeyEntry, new_key, read_keys, write_keys
from service.config import ServiceSettings

Opt = typer.Option
app = typer.Typer(add_completion=False)  # a part of the root app (cli/__init__.py)
auth_app = typer.Typer(help="API keys of the service (REMI_API_KEYS_FILE).", no_args_is_help=True)
app.add_typer(auth_app, name="auth")
KeysFile = Annotated[Path | None, Opt(help="The keys file (default REMI_API_KEYS_FILE).")]


def _keys_file(path: Path | None) -> Path:
    path = path or ServiceSettings().api_keys_file
    if path is None:
        raise RemiError("no keys file: pass --keys-file or set REMI_API_KEYS_FILE")
    return path


@auth_app.command("add-key")
def add_key_cmd(
    scopes: Annotated[str, Opt(help=f"Comma-separated scopes: {', '.join(SCOPES)}.")],
    name: Annotated[str, Opt(help="Who or what the key is for (shown by list-keys).")] = "",
    keys_file: KeysFile = None,
) -> None:
    """Create a key with these scopes: prints it once (stdout) and stores only its hash in the keys file."""
    path = _keys_file(keys_file)
    entries = read_keys_or_fail(path)
    try:
        key, entry = new_key(scopes.split(","), name)
    except ValueError as exc:
        raise RemiError(str(exc)) from exc
    write_keys(path, [*entries.values(), entry])
    typer.echo(key)
    typer.echo(f"key {entry.id} ({', '.join(entry.scopes)}) added to {path}; it is shown only this once", err=True)


@auth_app.command("list-keys")
def list_keys_cmd(keys_file: KeysFile = None) -> None:
    """The keys of the file (id, name, scopes, created), one JSON object a line; never the keys themselves."""
    for entry in read_keys_or_fail(_keys_file(keys_file)).values():
        typer.echo(json.dumps({"id": entry.id, "name": entry.name, "scopes": entry.scopes, "created": entry.created}))


@auth_app.command("revoke-key")
def revoke_key_cmd(
    key_id: Annotated[str, typer.Argument(help="The key's id (list-keys).")], keys_file: KeysFile = None
) -> None:
    """Remove a key: the service refuses it within a second, in every worker."""
    path = _keys_file(keys_file)
    entries = read_keys_or_fail(path)
    if entries.pop(key_id, None) is None:
        raise RemiError(f"no key {key_id!r} in {path}")
    write_keys(path, entries.values())
    typer.echo(f"key {key_id} revoked", err=True)


def read_keys_or_fail(path: Path) -> dict[str, KeyEntry]:
    try:
        return read_keys(path)
    except (OSError, ValueError) as exc:
        raise RemiError(f"cannot read the keys file: {exc}") from exc
