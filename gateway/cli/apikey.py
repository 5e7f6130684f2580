"""`gateway apikey add|list|revoke`: keys of the tenant HTTP API (api.listen)."""

from __future__ import annotations

import time
from datetime import datetime

import click

from .events import RELATIVE, UNITS
from .output import current_admin, details, emit_json, json_option, table

COLUMNS = ["public_id", "tenant", "role", "usecase", "name", "created_at", "expires_at", "revoked_at", "last_used_at"]


def parse_expiry(value: str, now: float | None = None) -> float:
    """'90d', '12h', '1w' from now, or an ISO date/time (local unless it carries an offset)."""
    m = RELATIVE.match(value.strip())
    if m:
        return (time.time() if now is None else now) + float(m.group(1)) * UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected e.g. 90d, 12h or 2027-06-30") from None


@click.group()
def apikey() -> None:
    """API keys: what tenant staff and apps use to call the HTTP API, each with one role."""


@apikey.command("add")
@click.argument("tenant")
@click.option("--role", required=True, type=click.Choice(["owner", "admin", "agent", "sender"]),
              help="owner: everything; admin: all but domain authentication and the outbound switch; "
                   "agent: replies from channel addresses, inbox, status; sender: one use case's sending and status.")
@click.option("--usecase", metavar="U", help="The use case a sender key sends through (required for --role sender).")
@click.option("--name", default="", metavar="N", help="What the key is for (shown in list and in the audit events).")
@click.option("--expires", metavar="WHEN", help="When the key stops working: 90d, 12h, 1w from now, or a date (default: never).")
@click.option("--rate-limit", type=float, default=0.0, metavar="N", help="Requests a second (default: api.rate_limit).")
@json_option
def add(tenant: str, role: str, usecase: str | None, name: str, expires: str | None, rate_limit: float, as_json: bool) -> None:
    """Make a key. Its token is printed once: only a hash of it is kept."""
    expires_at = parse_expiry(expires) if expires else None
    record = current_admin().call("apikey.add", tenant=tenant, role=role, usecase=usecase, name=name,
                                  expires_at=expires_at, rate_limit=rate_limit)
    if as_json:
        emit_json(record)
        return
    details(record, ["public_id", "tenant", "role", "usecase", "name", "expires_at"])
    click.echo(f"token: {record['token']}")
    click.echo("(shown once: store it now; only a hash is kept)", err=True)


@apikey.command("list")
@click.argument("tenant", required=False)
@json_option
def list_keys(tenant: str | None, as_json: bool) -> None:
    """List keys (never their tokens), of one tenant or all."""
    rows = current_admin().call("apikey.list", tenant=tenant)
    emit_json(rows) if as_json else table(rows, COLUMNS)


@apikey.command("revoke")
@click.argument("key", metavar="KEY")
@click.option("--tenant", metavar="T", help="Only if the key is this tenant's.")
@json_option
def revoke(key: str, tenant: str | None, as_json: bool) -> None:
    """Revoke a key by its public id (or by its whole token). It stops working at once."""
    record = current_admin().call("apikey.revoke", key=key, tenant=tenant)
    emit_json(record) if as_json else details(record, COLUMNS)
