"""`gateway suppression list|show|add|remove|import|export TENANT ...`."""

from __future__ import annotations

import csv
import sys

import click

from ..suppression import CSV_FIELDS, EXPORT_PAGE, IMPORT_CHUNK, csv_row
from .output import current_admin, details, emit_json, format_time, json_option, table

COLUMNS = ["address", "scope", "reason", "source", "created_at", "expires_at"]
SCOPE_HELP = "tenant, marketing, domain:NAME or usecase:NAME."
IMPORT_BYTES = 256 * 1024   # CSV per admin call besides IMPORT_CHUNK rows: admin.max_request_bytes bounds a request


def _readable(rows: list[dict]) -> list[dict]:
    return [{**r, "created_at": format_time(r["created_at"]), "expires_at": format_time(r["expires_at"]) if r["expires_at"] else "never"}
            for r in rows]


@click.group()
def suppression() -> None:
    """A tenant's suppression list: addresses its mail must not go to."""


@suppression.command("list")
@click.argument("tenant")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@click.option("--after", "after_id", type=click.IntRange(min=0), default=0, help="Page on from this entry id.")
@json_option
def list_(tenant: str, limit: int, after_id: int, as_json: bool) -> None:
    """List entries (oldest first; --after ID pages on)."""
    page = current_admin().call("suppression.list", tenant=tenant, after_id=after_id, limit=limit)
    if as_json:
        emit_json(page)
        return
    table(_readable(page["entries"]), ["id"] + COLUMNS)
    if page["next_after"] is not None:
        click.echo(f"(more: --after {page['next_after']})")


@suppression.command("show")
@click.argument("tenant")
@click.argument("address")
@json_option
def show(tenant: str, address: str, as_json: bool) -> None:
    """Every entry of one address, and the scopes where it is suppressed now."""
    record = current_admin().call("suppression.show", tenant=tenant, address=address)
    if as_json:
        emit_json(record)
        return
    details({"address": record["address"], "suppressed in": record["live"] or ["nowhere (expired)"]})
    table(_readable(record["entries"]), COLUMNS[1:])


@suppression.command("add")
@click.argument("tenant")
@click.argument("address")
@click.option("--scope", default="tenant", show_default=True, help=SCOPE_HELP)
@click.option("--reason", type=click.Choice(["manual", "hard_bounce", "soft_bounce", "complaint", "unsubscribe"]), default="manual", show_default=True)
@click.option("--expires", "expires_at", default=None, help="Unix time or ISO 8601 date; default never.")
@json_option
def add(tenant: str, address: str, scope: str, reason: str, expires_at: str | None, as_json: bool) -> None:
    """Suppress an address (or refresh its entry)."""
    record = current_admin().call("suppression.add", tenant=tenant, address=address, scope=scope, reason=reason, expires_at=expires_at)
    emit_json(record) if as_json else details(record)


@suppression.command("remove")
@click.argument("tenant")
@click.argument("address")
@click.option("--scope", default=None, help=SCOPE_HELP + " Default: every scope.")
@json_option
def remove(tenant: str, address: str, scope: str | None, as_json: bool) -> None:
    """Remove an address from the list (mail to it flows again)."""
    record = current_admin().call("suppression.remove", tenant=tenant, address=address, scope=scope)
    emit_json(record) if as_json else details(record)


@suppression.command("import")
@click.argument("tenant")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--scope", default="tenant", show_default=True, help="Scope of rows without one. " + SCOPE_HELP)
@json_option
def import_(tenant: str, file, scope: str, as_json: bool) -> None:
    """Import a CSV (header row: address[,scope,reason,source,expires_at]); '-' reads stdin."""
    reader = csv.reader(file)
    header = next(reader, None)
    if not header:
        click.echo("gateway: the file is empty (a header row is needed)", err=True)
        sys.exit(2)
    total = {"added": 0, "updated": 0, "refused": []}
    admin = current_admin()
    line = 2
    while True:
        chunk, size = [], 0
        for row in reader:
            chunk.append(row)
            size += sum(len(c) + 3 for c in row)
            if len(chunk) >= IMPORT_CHUNK or size >= IMPORT_BYTES:
                break
        if not chunk:
            break
        result = admin.call("suppression.import", tenant=tenant, rows=[header, *chunk], scope=scope, first_line=line)
        line += len(chunk)
        total["added"] += result["added"]
        total["updated"] += result["updated"]
        total["refused"] += result["refused"]
    if as_json:
        emit_json(total)
        return
    click.echo(f"added {total['added']}, updated {total['updated']}, refused {len(total['refused'])}")
    for r in total["refused"]:
        click.echo(f"  line {r['line']}: {r['address'] or '(empty)'}: {r['reason']}")


@suppression.command("export")
@click.argument("tenant")
def export(tenant: str) -> None:
    """Write the list as CSV to stdout, page by page (header row first)."""
    admin = current_admin()
    w = csv.writer(sys.stdout, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    after = 0
    while True:
        page = admin.call("suppression.list", tenant=tenant, after_id=after, limit=EXPORT_PAGE)
        for e in page["entries"]:
            w.writerow(csv_row(e))
        sys.stdout.flush()
        if page["next_after"] is None:
            return
        after = page["next_after"]
