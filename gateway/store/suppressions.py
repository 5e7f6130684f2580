"""The suppression list's rows: add (insert or refresh), remove, look up, list.

The store keeps facts; which scopes apply to a send (the use case, its domain, its kind) is decided
by the caller, which passes the scopes to check. A lookup for one recipient is one indexed probe of
the unique index (tenant_id, address, scope, scope_id), whatever the size of the list.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from .db import Database
from .events import append_event

Scope = tuple[str, int]   # ('tenant', 0) | ('domain', domain_id) | ('usecase', usecase_id) | ('marketing', 0)


def _add(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int, address: str, reason: str, source: str,
         expires_at: float | None, now: float, event: bool) -> dict[str, Any]:
    row = conn.execute(
        "INSERT INTO suppressions (tenant_id, scope, scope_id, address, reason, source, created_at, updated_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, address, scope, scope_id) DO UPDATE SET reason = excluded.reason, source = excluded.source,"
        " updated_at = excluded.updated_at, expires_at = excluded.expires_at"
        " RETURNING id, created_at = updated_at AS added",
        (tenant_id, scope, scope_id, address, reason, source, now, now, expires_at),
    ).fetchone()
    if event:
        append_event(conn, tenant_id, "suppression_added", address,
                     {"scope": scope, "scope_id": scope_id, "reason": reason, "source": source, "expires_at": expires_at})
    return {"id": row[0], "added": bool(row[1])}


def _remove(conn: sqlite3.Connection, tenant_id: int, address: str, scopes: Sequence[Scope] | None, source: str) -> int:
    if scopes is None:
        n = conn.execute("DELETE FROM suppressions WHERE tenant_id = ? AND address = ?", (tenant_id, address)).rowcount
    else:
        n = sum(conn.execute("DELETE FROM suppressions WHERE tenant_id = ? AND address = ? AND scope = ? AND scope_id = ?",
                             (tenant_id, address, s, i)).rowcount for s, i in scopes)
    if n:
        append_event(conn, tenant_id, "suppression_removed", address, {"rows": n, "source": source})
    return n


def _find(conn: sqlite3.Connection, tenant_id: int, address: str, scopes: Sequence[Scope], now: float) -> dict[str, Any] | None:
    for scope, scope_id in scopes:
        row = conn.execute(
            "SELECT id, tenant_id, scope, scope_id, address, reason, source, created_at, updated_at, expires_at FROM suppressions"
            " WHERE tenant_id = ? AND address = ? AND scope = ? AND scope_id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (tenant_id, address, scope, scope_id, now),
        ).fetchone()
        if row is not None:
            return dict(row)
    return None


def _list(conn: sqlite3.Connection, tenant_id: int, address: str | None, after_id: int, limit: int) -> list[dict[str, Any]]:
    where, args = ["tenant_id = ?", "id > ?"], [tenant_id, after_id]
    if address is not None:
        where.append("address = ?")
        args.append(address)
    return [dict(r) for r in conn.execute(
        "SELECT id, tenant_id, scope, scope_id, address, reason, source, created_at, updated_at, expires_at FROM suppressions"
        f" WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*args, limit))]


class Suppressions:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, tenant_id: int, scope: Scope, address: str, reason: str, *, source: str = "",
                  expires_at: float | None = None, now: float | None = None, event: bool = True) -> dict[str, Any]:
        """Insert or refresh one entry (``address`` already normalised); {"id", "added": False when it existed}."""
        return await self.db.write(_add, tenant_id, scope[0], scope[1], address, reason, source, expires_at,
                                   time.time() if now is None else now, event)

    async def remove(self, tenant_id: int, address: str, scopes: Sequence[Scope] | None = None, *, source: str = "") -> int:
        """Delete the address's entries in ``scopes`` (all of them when None); rows removed."""
        return await self.db.write(_remove, tenant_id, address, list(scopes) if scopes is not None else None, source)

    async def find(self, tenant_id: int, address: str, scopes: Sequence[Scope], now: float | None = None) -> dict[str, Any] | None:
        """The first live entry for ``address`` in any of ``scopes`` (checked in the order given), or None."""
        return await self.db.read(_find, tenant_id, address, list(scopes), time.time() if now is None else now)

    async def list(self, tenant_id: int, *, address: str | None = None, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return await self.db.read(_list, tenant_id, address, after_id, limit)
