"""`gateway domain ...`: sending domains, their DNS records, verification and DKIM keys."""

from __future__ import annotations

import sys

import click

from .. import validate
from .output import current_admin, details, emit_json, format_age, json_option, table

tenant_option = click.option("--tenant", default=None, help="Act only if this tenant owns the domain.")
dkim_option = click.option("--dkim", type=click.Choice(["rsa", "ed25519", "both"]), default=None,
                           help="Key type(s): RSA-2048 (default), Ed25519, or both for dual signing.")


@click.group()
def domain() -> None:
    """Manage sending domains: DKIM keys, DNS records, verification."""


def _show_domain(record: dict) -> None:
    details(record, [k for k in ("name", "unicode", "tenant", "state", "return_path_domain", "last_outcome", "dmarc_policy", "inbound_enabled", "catchall",
                                           "used_by")
                     if k in record and (k != "unicode" or record["unicode"] != record["name"])])
    if record.get("keys"):
        click.echo("")
        table([{**k, "age": format_age(k["created_at"])} for k in record["keys"]], ["selector", "algorithm", "state", "age"])


@domain.command("add")
@click.argument("tenant")
@click.argument("name")
@click.option("--selector", default=None, help="DKIM selector (default: gw<YYYYMM>).")
@dkim_option
@json_option
def add(tenant: str, name: str, selector: str | None, dkim: str | None, as_json: bool) -> None:
    """Add a sending domain to a tenant and generate its DKIM keys."""
    record = current_admin().call("domain.add", tenant=tenant, domain=name, selector=selector, dkim=dkim)
    if as_json:
        emit_json(record)
        return
    _show_domain(record)
    click.echo(f"\nnext: publish the records from `gateway domain records {record['name']}`, then `gateway domain verify {record['name']}`")


@domain.command("records")
@click.argument("name")
@tenant_option
@click.option("--format", "fmt", type=click.Choice(["table", "zone"]), default="table", show_default=True,
              help="zone: BIND zone-file lines to paste as they are.")
@json_option
def records(name: str, tenant: str | None, fmt: str, as_json: bool) -> None:
    """List the DNS records the domain must publish."""
    result = current_admin().call("domain.records", domain=name, tenant=tenant)
    if as_json:
        emit_json(result)
        return
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if fmt == "zone":
        click.echo(result["zone"], nl=False)
        return
    for r in result["records"]:
        click.echo(f"{r['type']:<4} {r['name']}  ({'required' if r['required'] else 'optional'}; {r['purpose']})")
        click.echo(f"     {r['value']}")
        if r["note"]:
            click.echo(f"     # {r['note']}")


def _print_result(result: dict) -> None:
    rows = [{**r, "what": r["purpose"] + ("" if r["required"] else " (optional)"),
             "detail_found": " ".join(filter(None, [r.get("detail") or "", f"found: {r['found']}" if r["status"] == "mismatch" and r.get("found") else ""]))}
            for r in result["records"]]
    table(rows, ["what", "type", "name", "status", "detail_found"], ["RECORD", "TYPE", "NAME", "STATUS", "DETAIL"])
    click.echo("")
    line = f"{result['domain']}: {result['state']}"
    if result.get("outcome") == "error":
        line += " (unchanged: some lookups failed, try again)"
    if result.get("activated_selectors"):
        line += f"; DKIM selector(s) now signing: {', '.join(result['activated_selectors'])}"
    click.echo(line + f"  [{result.get('duration_ms', 0):.0f} ms]")


@domain.command("verify")
@click.argument("name")
@tenant_option
@json_option
def verify(name: str, tenant: str | None, as_json: bool) -> None:
    """Query DNS now and check every record. Exit 1 unless the domain is verified."""
    result = current_admin().call("domain.verify", domain=name, tenant=tenant)
    emit_json(result) if as_json else _print_result(result)
    sys.exit(0 if result["state"] == "verified" else 1)


@domain.command("reverify")
@click.option("--older-than", type=click.FloatRange(0, validate.MAX_SECONDS), default=0.0, help="Only domains last checked this many seconds ago.")
@json_option
def reverify(older_than: float, as_json: bool) -> None:
    """Verify every verified or failing domain again now."""
    result = current_admin().call("domain.reverify", older_than=older_than)
    emit_json(result) if as_json else details({**result, "states": [f"{k} {v}" for k, v in result["states"].items()]})


@domain.command("list")
@tenant_option
@json_option
def list_(tenant: str | None, as_json: bool) -> None:
    """List domains (of one tenant with --tenant)."""
    rows = current_admin().call("domain.list", tenant=tenant)
    if as_json:
        emit_json(rows)
        return
    table([{**r, "checked": format_age(r["checked_at"])} for r in rows], ["name", "tenant", "state", "selectors", "checked"],
          ["NAME", "TENANT", "STATE", "SELECTORS", "CHECKED AGO"])


@domain.command("show")
@click.argument("name")
@tenant_option
@json_option
def show(name: str, tenant: str | None, as_json: bool) -> None:
    """Show a domain: keys and their ages, records and their last result, what uses it."""
    record = current_admin().call("domain.show", domain=name, tenant=tenant)
    if as_json:
        emit_json(record)
        return
    _show_domain(record)
    click.echo("")
    table([{**r, "what": r["purpose"] + ("" if r["required"] else " (optional)")} for r in record["records"]],
          ["what", "type", "name", "last_status", "last_detail"], ["RECORD", "TYPE", "NAME", "LAST RESULT", "DETAIL"])


@domain.command("inbound")
@click.argument("name")
@tenant_option
@click.option("--on/--off", "enabled", default=None, help="Receive on the MX for this domain (only while it is verified).")
@click.option("--catchall", default=None, metavar="USECASE", help="Mail to any other local part goes to this use case of the domain.")
@click.option("--no-catchall", is_flag=True, help="No catch-all: unknown local parts are refused (550 5.1.1).")
@json_option
def inbound(name: str, tenant: str | None, enabled: bool | None, catchall: str | None, no_catchall: bool, as_json: bool) -> None:
    """Turn receiving on or off for a domain, and set or clear its catch-all."""
    record = current_admin().call("domain.inbound", domain=name, tenant=tenant, enabled=enabled, catchall=catchall,
                                  no_catchall=no_catchall)
    emit_json(record) if as_json else details(record, ["name", "tenant", "state", "inbound_enabled", "catchall"])


@domain.command("delete")
@click.argument("name")
@tenant_option
@json_option
def delete(name: str, tenant: str | None, as_json: bool) -> None:
    """Delete a domain and its keys; refused while a use case or connector uses it."""
    result = current_admin().call("domain.delete", domain=name, tenant=tenant)
    emit_json(result) if as_json else click.echo(f"deleted domain {result['name']} ({result['keys_removed']} key file(s) removed)")


@domain.command("rotate-dkim")
@click.argument("name")
@tenant_option
@click.option("--selector", default=None, help="New selector (default: gw<YYYYMM>, with a letter when taken).")
@dkim_option
@json_option
def rotate_dkim(name: str, tenant: str | None, selector: str | None, dkim: str | None, as_json: bool) -> None:
    """Add a new DKIM key; it signs once its record verifies, and the old key retires."""
    record = current_admin().call("domain.rotate_dkim", domain=name, tenant=tenant, selector=selector, dkim=dkim)
    if as_json:
        emit_json(record)
        return
    _show_domain(record)
    click.echo(f"\nnext: publish the pending key's record (`gateway domain records {record['name']}`), then `gateway domain verify {record['name']}`")


@domain.command("remove-selector")
@click.argument("name")
@click.argument("selector")
@tenant_option
@json_option
def remove_selector(name: str, selector: str, tenant: str | None, as_json: bool) -> None:
    """Remove a retired (or never used) DKIM key and its file."""
    result = current_admin().call("domain.remove_selector", domain=name, selector=selector, tenant=tenant)
    emit_json(result) if as_json else click.echo(f"removed DKIM selector {result['selector']} ({result['state']}) of {result['domain']}")
