"""Connectors: a tenant's external mail servers (SMTP smarthost, SendGrid API out; IMAP/POP3 in).

Names are unique per tenant. One connector may carry outgoing settings and incoming ones (under
``settings.incoming``) at once; its direction follows what it carries. The secrets (outgoing
password or API token; the incoming mailbox's password in ``incoming_secret``) are stored in their
own columns and are never part of what listings return: they carry ``has_secret`` and
``has_incoming_secret`` instead. Only ``spec`` (used by delivery and `connector test`, inside the
daemon) and ``store.mailboxes.incoming`` (the poller) read them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .tenants import get_by_name

_COLUMNS = ("c.id, c.tenant_id, t.name AS tenant, c.name, c.kind, c.direction, c.enabled, c.settings, c.secret != '' AS has_secret,"
            " c.incoming_secret != '' AS has_incoming_secret, c.created_at")


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    d = dict(row)
    d["enabled"] = bool(d["enabled"])
    d["has_secret"] = bool(d["has_secret"])
    d["has_incoming_secret"] = bool(d["has_incoming_secret"])
    d["settings"] = json.loads(d["settings"])
    return d


def _get(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    tenant_id = get_by_name(conn, tenant)["id"]
    row = _row(conn.execute(f"SELECT {_COLUMNS} FROM connectors c JOIN tenants t ON t.id = c.tenant_id"
                            " WHERE c.tenant_id = ? AND c.name = ?", (tenant_id, name)).fetchone())
    if row is None:
        raise NotFound(f"tenant {tenant!r} has no connector named {name!r}")
    return row


def _add(conn: sqlite3.Connection, tenant: str, name: str, kind: str, direction: str, enabled: bool,
         settings: dict[str, Any], secret: str, incoming_secret: str) -> dict[str, Any]:
    tenant_id = get_by_name(conn, tenant)["id"]
    try:
        conn.execute(
            "INSERT INTO connectors (tenant_id, name, kind, direction, enabled, settings, secret, incoming_secret, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (tenant_id, name, kind, direction, int(enabled), json.dumps(settings, sort_keys=True), secret, incoming_secret,
             time.time()),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"tenant {tenant!r} already has a connector named {name!r}") from None
    append_event(conn, tenant_id, "connector_added", name, {"kind": kind})
    return _get(conn, tenant, name)


def _update(conn: sqlite3.Connection, tenant: str, name: str, settings: dict[str, Any], unset: list[str],
            secret: str | None, enabled: bool | None) -> dict[str, Any]:
    current = _get(conn, tenant, name)
    merged = {k: v for k, v in {**current["settings"], **settings}.items() if k not in unset}
    conn.execute("UPDATE connectors SET settings = ? WHERE id = ?", (json.dumps(merged, sort_keys=True), current["id"]))
    if secret is not None:
        conn.execute("UPDATE connectors SET secret = ? WHERE id = ?", (secret, current["id"]))
    if enabled is not None:
        conn.execute("UPDATE connectors SET enabled = ? WHERE id = ?", (int(enabled), current["id"]))
    changed = sorted(set(settings) | set(unset)) + (["secret"] if secret is not None else []) + (["enabled"] if enabled is not None else [])
    append_event(conn, current["tenant_id"], "connector_updated", name, {"changed": changed})
    return _get(conn, tenant, name)


def _set_incoming(conn: sqlite3.Connection, tenant: str, name: str, incoming: dict[str, Any] | None,
                  secret: str | None) -> dict[str, Any]:
    current = _get(conn, tenant, name)
    settings = {k: v for k, v in current["settings"].items() if k != "incoming"}
    if incoming is not None:
        settings["incoming"] = incoming
    outgoing = current["kind"] in ("smtp", "sendgrid")
    direction = ("both" if outgoing else "in") if incoming is not None else "out"
    conn.execute("UPDATE connectors SET settings = ?, direction = ? WHERE id = ?",
                 (json.dumps(settings, sort_keys=True), direction, current["id"]))
    if secret is not None:
        conn.execute("UPDATE connectors SET incoming_secret = ? WHERE id = ?", (secret, current["id"]))
    # New settings get a new try at once: a backoff earned with the old ones (a wrong password) ends.
    conn.execute("UPDATE mailbox_checkpoints SET failures = 0, backoff_until = NULL WHERE connector_id = ?", (current["id"],))
    if incoming is None:
        conn.execute("UPDATE connectors SET incoming_secret = '' WHERE id = ?", (current["id"],))
        conn.execute("DELETE FROM mailbox_checkpoints WHERE connector_id = ?", (current["id"],))
        conn.execute("DELETE FROM mailbox_uidls WHERE connector_id = ?", (current["id"],))
    changed = ["incoming"] + (["incoming_secret"] if secret is not None else [])
    append_event(conn, current["tenant_id"], "connector_updated", name, {"changed": changed})
    return _get(conn, tenant, name)


def routed_by(conn: sqlite3.Connection, tenant_id: int, name: str) -> list[str]:
    """Use cases of the tenant whose route is this connector."""
    return [r[0] for r in conn.execute("SELECT name FROM usecases WHERE tenant_id = ? AND route = ? ORDER BY name",
                                       (tenant_id, f"connector:{name}"))]


def _delete(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    current = _get(conn, tenant, name)
    users = routed_by(conn, current["tenant_id"], name)
    if users:
        raise Conflict(f"connector {name!r} is the route of use case(s) {', '.join(users)}; change their route first")
    conn.execute("DELETE FROM connectors WHERE id = ?", (current["id"],))
    append_event(conn, current["tenant_id"], "connector_deleted", name, {"kind": current["kind"]})
    return current


def _spec(conn: sqlite3.Connection, tenant_id: int, name: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT id, tenant_id, name, kind, enabled, settings, secret, incoming_secret FROM connectors"
                       " WHERE tenant_id = ? AND name = ?",
                       (tenant_id, name)).fetchone()
    if row is None:
        return None
    d = dict(row)
    d["enabled"] = bool(d["enabled"])
    d["settings"] = json.loads(d["settings"])
    return d


class Connectors:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, tenant: str, name: str, kind: str, *, direction: str = "out", enabled: bool = True,
                  settings: dict[str, Any] | None = None, secret: str = "", incoming_secret: str = "") -> dict[str, Any]:
        return await self.db.write(_add, tenant, name, kind, direction, enabled, settings or {}, secret, incoming_secret)

    async def set_incoming(self, tenant: str, name: str, incoming: dict[str, Any] | None, *,
                           secret: str | None = None) -> dict[str, Any]:
        """Replace the connector's incoming settings (None removes them, with their secret and the
        mailbox's checkpoint); ``secret`` replaces the incoming password when given."""
        return await self.db.write(_set_incoming, tenant, name, incoming, secret)

    async def get(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.read(_get, tenant, name)

    async def list(self, tenant: str | None = None, *, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
        """Every connector (of one tenant, by name: those after ``after``, at most ``limit``, -1 all)."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = f"SELECT {_COLUMNS} FROM connectors c JOIN tenants t ON t.id = c.tenant_id"
            if tenant is None:
                return [_row(r) for r in conn.execute(sql + " ORDER BY t.name, c.name")]
            tenant_id = get_by_name(conn, tenant)["id"]
            return [_row(r) for r in conn.execute(sql + " WHERE c.tenant_id = ? AND c.name > ? ORDER BY c.name LIMIT ?",
                                                  (tenant_id, after, limit))]

        return await self.db.read(run)

    async def update(self, tenant: str, name: str, *, settings: dict[str, Any] | None = None, unset: list[str] | None = None,
                     secret: str | None = None, enabled: bool | None = None) -> dict[str, Any]:
        return await self.db.write(_update, tenant, name, settings or {}, unset or [], secret, enabled)

    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.write(_delete, tenant, name)

    async def spec(self, tenant_id: int, name: str) -> dict[str, Any] | None:
        """The connector with its secret, for delivery inside the daemon; None when it does not exist."""
        return await self.db.read(_spec, tenant_id, name)

    async def spec_by_tenant_name(self, tenant: str, name: str) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            tenant_id = get_by_name(conn, tenant)["id"]
            spec = _spec(conn, tenant_id, name)
            if spec is None:
                raise NotFound(f"tenant {tenant!r} has no connector named {name!r}")
            return spec

        return await self.db.read(run)
