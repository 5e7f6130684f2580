"""`gateway tenant ...`."""

from __future__ import annotations

import click

from .. import validate
from .output import current_admin, details, emit_json, json_option, table

COLUMNS = ["name", "display_name", "enabled", "outbound_enabled", "monthly_quota"]


@click.group()
def tenant() -> None:
    """Manage tenants (isolated workspaces)."""


def _show(record: dict, as_json: bool) -> None:
    if as_json:
        emit_json(record)
    else:
        details(record, [k for k in COLUMNS + ["dmarc_reject", "owns"] if k in record])


@tenant.command("add")
@click.argument("name")
@click.option("--display-name", default="", help="Human name of the tenant.")
@click.option("--quota", "monthly_quota", type=click.IntRange(0, validate.MAX_MONTHLY_QUOTA), default=0, show_default=True, help="Messages per month; 0 = unlimited.")
@json_option
def add(name: str, display_name: str, monthly_quota: int, as_json: bool) -> None:
    """Create a tenant."""
    _show(current_admin().call("tenant.add", name=name, display_name=display_name, monthly_quota=monthly_quota), as_json)


@tenant.command("list")
@json_option
def list_(as_json: bool) -> None:
    """List tenants."""
    rows = current_admin().call("tenant.list")
    emit_json(rows) if as_json else table(rows, COLUMNS, ["NAME", "DISPLAY NAME", "ENABLED", "OUTBOUND", "QUOTA"])


@tenant.command("show")
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show one tenant and what it owns."""
    _show(current_admin().call("tenant.show", name=name), as_json)


@tenant.command("enable")
@click.argument("name")
@click.option("--outbound", is_flag=True, help="Only (re-)enable outbound mail.")
@json_option
def enable(name: str, outbound: bool, as_json: bool) -> None:
    """Enable a tenant (or only its outbound mail)."""
    _show(current_admin().call("tenant.enable", name=name, outbound=outbound), as_json)


@tenant.command("disable")
@click.argument("name")
@click.option("--outbound", is_flag=True, help="Only disable outbound mail.")
@json_option
def disable(name: str, outbound: bool, as_json: bool) -> None:
    """Disable a tenant (or only its outbound mail)."""
    _show(current_admin().call("tenant.disable", name=name, outbound=outbound), as_json)


@tenant.command("update")
@click.argument("name")
@click.option("--display-name", default=None)
@click.option("--quota", "monthly_quota", type=click.IntRange(0, validate.MAX_MONTHLY_QUOTA), default=None)
@click.option("--dmarc-reject/--no-dmarc-reject", default=None,
              help="Refuse at the final dot (550 5.7.1) inbound mail whose DMARC policy is reject and fails.")
@json_option
def update(name: str, display_name: str | None, monthly_quota: int | None, dmarc_reject: bool | None, as_json: bool) -> None:
    """Change a tenant's display name, quota or inbound DMARC choice."""
    _show(current_admin().call("tenant.update", name=name, display_name=display_name, monthly_quota=monthly_quota,
                               dmarc_reject=dmarc_reject), as_json)


@tenant.command("delete")
@click.argument("name")
@json_option
def delete(name: str, as_json: bool) -> None:
    """Delete a tenant; refused while it owns anything."""
    record = current_admin().call("tenant.delete", name=name)
    emit_json(record) if as_json else click.echo(f"deleted tenant {record['name']}")
