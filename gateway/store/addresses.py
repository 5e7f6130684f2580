"""Channel addresses: the "email address" objects of a tenant's contact-center channel.

An address belongs to one tenant, one of its domains (the address's own domain, not a parent of
it) and one use case of that domain. Tenant-scoped like the domains: every function takes the
tenant that must own the address, and another tenant's address is "not found" with the same
message as one that does not exist. ``address`` is stored in the suppression list's one spelling
(gateway/suppression.py ``normalise_address``), so lookups compare strings.

``for_senders`` is the submission path's read: the addresses a use case's session may meet as a
sender, put into the cached use-case context (never a query per message).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .tenants import get_by_name as tenant_by_name

FIELDS = ("display_name", "direction", "enabled", "reply_copy", "header_text", "header_html", "footer_text", "footer_html", "vcard")

_SELECT = """
SELECT a.id, a.address, a.tenant_id, t.name AS tenant, a.domain_id, d.name AS domain, d.state AS domain_state,
       d.inbound_enabled, a.usecase_id, u.name AS usecase, a.display_name, a.direction, a.enabled, a.reply_copy,
       a.header_text, a.header_html, a.footer_text, a.footer_html, a.vcard, a.created_at, a.updated_at
FROM channel_addresses a JOIN tenants t ON t.id = a.tenant_id JOIN domains d ON d.id = a.domain_id
JOIN usecases u ON u.id = a.usecase_id
"""


def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    d = dict(row)
    for flag in ("enabled", "vcard", "inbound_enabled"):
        d[flag] = bool(d[flag])
    return d


def get_address(conn: sqlite3.Connection, tenant: str, address: str) -> dict[str, Any]:
    row = _row(conn.execute(_SELECT + " WHERE t.name = ? AND a.address = ?", (tenant, address)).fetchone())
    if row is None:
        tenant_by_name(conn, tenant)  # an unknown tenant is reported as such
        raise NotFound(f"tenant {tenant!r} has no channel address {address!r}")
    return row


def _placement(conn: sqlite3.Connection, tenant_id: int, tenant: str, address: str, usecase: str) -> tuple[int, int]:
    """(domain id, use case id) for ``address`` sent through ``usecase``: the address's domain is one
    of the tenant's domains and the use case is of that domain."""
    domain = address.rpartition("@")[2]
    row = conn.execute("SELECT id FROM domains WHERE tenant_id = ? AND name = ?", (tenant_id, domain)).fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant!r} has no domain {domain!r}; an address belongs to one of the tenant's domains")
    uc = conn.execute("SELECT id, domain_id FROM usecases WHERE tenant_id = ? AND name = ?", (tenant_id, usecase)).fetchone()
    if uc is None:
        raise NotFound(f"tenant {tenant!r} has no use case {usecase!r}")
    if uc["domain_id"] != row["id"]:
        raise Conflict(f"use case {usecase!r} is not of the domain {domain!r}; an address's use case sends from its domain")
    return row["id"], uc["id"]


def _add(conn: sqlite3.Connection, tenant: str, address: str, usecase: str, fields: dict[str, Any]) -> dict[str, Any]:
    t = tenant_by_name(conn, tenant)
    domain_id, usecase_id = _placement(conn, t["id"], tenant, address, usecase)
    now = time.time()
    cols = [c for c in FIELDS if c in fields]
    try:
        conn.execute(
            f"INSERT INTO channel_addresses (tenant_id, domain_id, usecase_id, address, created_at, updated_at"
            f"{''.join(', ' + c for c in cols)}) VALUES (?, ?, ?, ?, ?, ?{', ?' * len(cols)})",
            (t["id"], domain_id, usecase_id, address, now, now, *[fields[c] for c in cols]),
        )
    except sqlite3.IntegrityError:
        # UNIQUE across tenants, but domains are never shared, so the holder is this tenant.
        raise Conflict(f"the channel address {address!r} already exists") from None
    append_event(conn, t["id"], "address_added", address, {"usecase": usecase, **{c: fields[c] for c in ("direction", "enabled") if c in fields}})
    return get_address(conn, tenant, address)


def _update(conn: sqlite3.Connection, tenant: str, address: str, usecase: str | None, changes: dict[str, Any]) -> dict[str, Any]:
    current = get_address(conn, tenant, address)
    cols = [c for c in FIELDS if c in changes]
    values = [changes[c] for c in cols]
    if usecase is not None:
        _, usecase_id = _placement(conn, current["tenant_id"], tenant, address, usecase)
        cols.append("usecase_id")
        values.append(usecase_id)
    conn.execute(f"UPDATE channel_addresses SET {''.join(f'{c} = ?, ' for c in cols)}updated_at = ? WHERE id = ?",
                 (*values, time.time(), current["id"]))
    # The event names what changed, not the texts themselves (they can be long).
    data = {c: changes[c] for c in ("direction", "enabled", "vcard", "reply_copy", "display_name") if c in changes}
    data.update({c: bool(changes[c]) for c in ("header_text", "header_html", "footer_text", "footer_html") if c in changes})
    if usecase is not None:
        data["usecase"] = usecase
    append_event(conn, current["tenant_id"], "address_updated", address, data)
    return get_address(conn, tenant, address)


def _delete(conn: sqlite3.Connection, tenant: str, address: str) -> dict[str, Any]:
    current = get_address(conn, tenant, address)
    # Processed inbound rows keep their history: their address_id is set NULL (ON DELETE SET NULL).
    conn.execute("DELETE FROM channel_addresses WHERE id = ?", (current["id"],))
    append_event(conn, current["tenant_id"], "address_deleted", address, {"usecase": current["usecase"]})
    return current


def of_usecase(conn: sqlite3.Connection, usecase_id: int, limit: int = 5) -> list[str]:
    """Addresses sent through the use case (a use case is not deleted from under them)."""
    return [a for (a,) in conn.execute("SELECT address FROM channel_addresses WHERE usecase_id = ? ORDER BY address LIMIT ?",
                                       (usecase_id, limit))]


def for_senders(conn: sqlite3.Connection, tenant_id: int, domain: str) -> dict[str, dict[str, Any]]:
    """The tenant's addresses on ``domain`` or its subdomains (where a use case of ``domain`` may send
    from), by address: what the submission policy and preparation need about each."""
    rows = conn.execute(
        "SELECT a.id, a.address, a.usecase_id, a.display_name, a.direction, a.enabled, a.reply_copy, a.header_text,"
        " a.header_html, a.footer_text, a.footer_html, a.vcard FROM channel_addresses a JOIN domains d ON d.id = a.domain_id"
        " WHERE a.tenant_id = ? AND (d.name = ? OR d.name LIKE ? ESCAPE '\\')",
        (tenant_id, domain, "%." + domain.replace("_", "\\_")),
    )
    out = {}
    for r in rows:
        d = dict(r)
        d["enabled"], d["vcard"] = bool(d["enabled"]), bool(d["vcard"])
        out[d["address"]] = d
    return out


class Addresses:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, tenant: str, address: str, *, usecase: str, **fields: Any) -> dict[str, Any]:
        return await self.db.write(_add, tenant, address, usecase, fields)

    async def get(self, tenant: str, address: str) -> dict[str, Any]:
        return await self.db.read(get_address, tenant, address)

    async def list(self, tenant: str, *, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """The tenant's addresses in order; a page is the ``limit`` addresses after ``after`` (keyset)."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            tenant_by_name(conn, tenant)
            return [_row(r) for r in conn.execute(_SELECT + " WHERE t.name = ? AND a.address > ? ORDER BY a.address LIMIT ?",
                                                  (tenant, after or "", limit))]

        return await self.db.read(run)

    async def update(self, tenant: str, address: str, *, usecase: str | None = None, **changes: Any) -> dict[str, Any]:
        return await self.db.write(_update, tenant, address, usecase, changes)

    async def delete(self, tenant: str, address: str) -> dict[str, Any]:
        return await self.db.write(_delete, tenant, address)
