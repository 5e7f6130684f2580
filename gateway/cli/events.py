"""`gateway events list|tail`: the events table, read over the admin socket.

`tail --follow` polls `events.list` with an ``after_id`` cursor every --interval seconds (no
streaming method: each poll is one short read, the daemon keeps no per-follower state, and a
follower cannot hold anything up). It ends quietly on Ctrl-C and when its reader goes away (EPIPE).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime
from typing import Any

import click

from .output import current_admin, emit_json, format_time, json_option, table

PAGE = 1000
RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: float | None = None) -> float:
    """'90s', '10m', '2h', '3d', '1w' ago, or an ISO date/time (local unless it carries an offset)."""
    m = RELATIVE.match(value.strip())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(value.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected e.g. 30m, 2h, 3d or 2026-12-01T09:00") from None


def summary(data: dict[str, Any], width: int = 90) -> str:
    text = " ".join(f"{k}={v}" for k, v in data.items() if v not in (None, "", [], {}))
    return text if len(text) <= width else text[: width - 3] + "..."


def _row(e: dict[str, Any]) -> dict[str, Any]:
    return {"id": e["id"], "time": format_time(e["created_at"]), "tenant": e.get("tenant") or "-", "kind": e["kind"],
            "subject": e["subject"] or "-", "details": summary(e["data"])}


def _line(e: dict[str, Any]) -> str:
    r = _row(e)
    return f"{r['time']}  {r['id']:>8}  {r['tenant']:<12}  {r['kind']:<18}  {r['subject']:<24}  {r['details']}".rstrip()


@click.group()
def events() -> None:
    """The event log: queued, delivered, deferred, bounced, held, webhook_disabled..."""


@events.command("list")
@click.option("--tenant", metavar="T", help="Only this tenant's events.")
@click.option("--type", "kind", metavar="KIND", help="Only events of this type (e.g. bounced).")
@click.option("--since", metavar="WHEN", help="From this time on (30m, 2h, 3d, or 2026-12-01T09:00), oldest first. Default: the newest --limit.")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
def list_(tenant: str | None, kind: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """List events, in the order they happened."""
    rows = current_admin().call("events.list", tenant=tenant, type=kind, limit=limit,
                                since=parse_since(since) if since else None, newest=since is None)
    if as_json:
        emit_json(rows)
        return
    table([_row(e) for e in rows], ["id", "time", "tenant", "kind", "subject", "details"],
          ["ID", "TIME", "TENANT", "TYPE", "SUBJECT", "DETAILS"])


@events.command("tail")
@click.option("--tenant", metavar="T", help="Only this tenant's events.")
@click.option("--type", "kind", metavar="KIND", help="Only events of this type.")
@click.option("-n", "--lines", type=click.IntRange(0, 10000), default=10, show_default=True, help="Recent events shown first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they are appended (Ctrl-C ends).")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True, help="Seconds between polls with --follow.")
@json_option
def tail(tenant: str | None, kind: str | None, lines: int, follow: bool, interval: float, as_json: bool) -> None:
    """The latest events; with --follow, the new ones as they come (JSON lines with --json)."""
    admin = current_admin()
    show = (lambda e: json.dumps(e, sort_keys=True, default=str)) if as_json else _line
    try:
        rows = admin.call("events.list", tenant=tenant, type=kind, limit=lines, newest=True) if lines else []
        cursor = rows[-1]["id"] if rows else 0
        for e in rows:
            click.echo(show(e))
        if not follow:
            return
        if not rows:
            # Start at the end: the newest event of any kind (what -n 0 means), not the first ever.
            newest = admin.call("events.list", limit=1, newest=True)
            cursor = newest[-1]["id"] if newest else 0
        sys.stdout.flush()
        while True:
            rows = admin.call("events.list", tenant=tenant, type=kind, after_id=cursor, limit=PAGE)
            for e in rows:
                click.echo(show(e))
            if rows:
                cursor = rows[-1]["id"]
                sys.stdout.flush()
            if len(rows) < PAGE:
                time.sleep(interval)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        # The reader went away (`| head`): stop, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
