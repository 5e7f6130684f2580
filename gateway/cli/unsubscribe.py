"""`gateway unsubscribe ...`: the keys that sign List-Unsubscribe links."""

from __future__ import annotations

import click

from .output import current_admin, details, emit_json, json_option, table

COLUMNS = ["id", "state", "created_at", "retired_at"]


@click.group()
def unsubscribe() -> None:
    """One-click unsubscribe links: their signing keys."""


@unsubscribe.command("keys")
@json_option
def keys(as_json: bool) -> None:
    """List the keys (never their secrets): signing (the newest), verifying, retired."""
    rows = current_admin().call("unsubscribe.keys")
    emit_json(rows) if as_json else table(rows, COLUMNS)


@unsubscribe.command("rotate-key")
@json_option
def rotate_key(as_json: bool) -> None:
    """Make a new signing key. Links already sent keep working until their key is retired."""
    record = current_admin().call("unsubscribe.rotate_key")
    emit_json(record) if as_json else details(record, COLUMNS)


@unsubscribe.command("retire-key")
@click.argument("key_id", type=int, metavar="ID")
@json_option
def retire_key(key_id: int, as_json: bool) -> None:
    """Retire a key: links signed with it answer 400 from now on."""
    record = current_admin().call("unsubscribe.retire_key", key_id=key_id)
    emit_json(record) if as_json else details(record, COLUMNS)
