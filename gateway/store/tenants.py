"""Tenants: the isolation boundary. Every other table hangs off a tenant id."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .suppressions import delete_tenant

# Tables that a tenant can own, as (table, what to call a row, column that names it).
# Deleting a tenant is refused while any of these holds a row of it; tables that a later
# migration has not created yet are skipped.
OWNED_TABLES = [
    ("domains", "domain", "name"),
    ("usecases", "use case", "name"),
    ("channel_addresses", "channel address", "address"),
    ("connectors", "connector", "name"),
    ("messages", "queued message", "queue_id"),
    ("webhook_endpoints", "webhook endpoint", "name"),
]


def tenant_row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    d = dict(row)
    d["enabled"] = bool(d["enabled"])
    d["outbound_enabled"] = bool(d["outbound_enabled"])
    d["dmarc_reject"] = bool(d.get("dmarc_reject"))
    return d


def get_by_name(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    row = tenant_row(conn.execute("SELECT * FROM tenants WHERE name = ?", (name,)).fetchone())
    if row is None:
        raise NotFound(f"no tenant named {name!r}")
    return row


def _add(conn: sqlite3.Connection, name: str, display_name: str, monthly_quota: int) -> dict[str, Any]:
    try:
        cur = conn.execute(
            "INSERT INTO tenants (name, display_name, monthly_quota, created_at) VALUES (?, ?, ?, ?)",
            (name, display_name, monthly_quota, time.time()),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"a tenant named {name!r} already exists") from None
    append_event(conn, cur.lastrowid, "tenant_added", name)
    return tenant_row(conn.execute("SELECT * FROM tenants WHERE id = ?", (cur.lastrowid,)).fetchone())


def _set(conn: sqlite3.Connection, name: str, changes: dict[str, Any]) -> dict[str, Any]:
    tenant = get_by_name(conn, name)
    allowed = {"enabled", "outbound_enabled", "monthly_quota", "display_name", "dmarc_reject"}
    cols = [c for c in changes if c in allowed]
    if cols:
        conn.execute(
            f"UPDATE tenants SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
            [changes[c] for c in cols] + [tenant["id"]],
        )
        append_event(conn, tenant["id"], "tenant_updated", name, {c: changes[c] for c in cols})
    return get_by_name(conn, name)


def holdings(conn: sqlite3.Connection, tenant_id: int) -> list[str]:
    """What the tenant still owns, as 'domain example.com' strings."""
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    found = []
    for table, label, column in OWNED_TABLES:
        if table not in existing:
            continue
        for (value,) in conn.execute(f"SELECT {column} FROM {table} WHERE tenant_id = ? LIMIT 5", (tenant_id,)):
            found.append(f"{label} {value}")
    return found


def _delete(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    tenant = get_by_name(conn, name)
    held = holdings(conn, tenant["id"])
    if held:
        raise Conflict(f"tenant {name!r} still owns: {', '.join(held)}; delete those first")
    # The suppression list goes with the tenant (it is about other people's addresses, meaningless
    # without the tenant; keeping it would block the delete forever).
    delete_tenant(conn, tenant["id"])
    conn.execute("DELETE FROM api_keys WHERE tenant_id = ?", (tenant["id"],))  # its keys name nothing without it
    conn.execute("DELETE FROM tenants WHERE id = ?", (tenant["id"],))
    append_event(conn, None, "tenant_deleted", name)
    return tenant


class Tenants:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, name: str, *, display_name: str = "", monthly_quota: int = 0) -> dict[str, Any]:
        return await self.db.write(_add, name, display_name, monthly_quota)

    async def get(self, name: str) -> dict[str, Any]:
        # One probe of the unique name index: on SQLite on the caller's thread (read_point), not a hop
        # to the reader pool that costs several times the query (GET /v1/tenant, every admin call naming a tenant).
        return await self.db.read_point(get_by_name, name)

    async def get_by_id(self, tenant_id: int) -> dict[str, Any] | None:
        return await self.db.read(lambda c: tenant_row(c.execute("SELECT * FROM tenants WHERE id = ?", (tenant_id,)).fetchone()))

    async def list(self) -> list[dict[str, Any]]:
        return await self.db.read(lambda c: [tenant_row(r) for r in c.execute("SELECT * FROM tenants ORDER BY name")])

    async def update(self, name: str, **changes: Any) -> dict[str, Any]:
        return await self.db.write(_set, name, changes)

    async def holdings(self, name: str) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            return holdings(conn, get_by_name(conn, name)["id"])

        return await self.db.read(run)

    async def delete(self, name: str) -> dict[str, Any]:
        return await self.db.write(_delete, name)
