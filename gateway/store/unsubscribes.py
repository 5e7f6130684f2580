"""Unsubscribe state: the token keys, and the writes a one-click, page or mailto request makes.

An unsubscribe is one suppression row (reason 'unsubscribe', the token's scope) plus its events,
``suppression_added`` and ``unsubscribed`` with the source, in one write. Repeating it changes
nothing and appends nothing: an entry already live in that scope (whatever its reason) stands. A
re-subscribe removes only the 'unsubscribe' entry of that scope: a complaint, a bounce or an
operator's entry is not the subscriber's to lift.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from .db import Database
from .events import append_event
from .suppressions import _add as add_suppression


def _keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT id, secret, created_at, retired_at FROM unsubscribe_keys ORDER BY id")]


def _ensure_key(conn: sqlite3.Connection, secret: bytes, now: float) -> list[dict[str, Any]]:
    if conn.execute("SELECT 1 FROM unsubscribe_keys WHERE retired_at IS NULL LIMIT 1").fetchone() is None:
        conn.execute("INSERT INTO unsubscribe_keys (secret, created_at) VALUES (?, ?)", (secret, now))
    return _keys(conn)


def _rotate(conn: sqlite3.Connection, secret: bytes, now: float) -> dict[str, Any]:
    cur = conn.execute("INSERT INTO unsubscribe_keys (secret, created_at) VALUES (?, ?)", (secret, now))
    append_event(conn, None, "unsubscribe_key_added", str(cur.lastrowid))
    return {"id": cur.lastrowid, "created_at": now, "retired_at": None}


def _retire(conn: sqlite3.Connection, key_id: int, now: float) -> int:
    n = conn.execute("UPDATE unsubscribe_keys SET retired_at = ? WHERE id = ? AND retired_at IS NULL", (now, key_id)).rowcount
    if n:
        append_event(conn, None, "unsubscribe_key_retired", str(key_id))
    return n


def _live(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int, address: str, now: float) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT id, reason, source, created_at FROM suppressions WHERE tenant_id = ? AND address = ? AND scope = ? AND scope_id = ?"
        " AND (expires_at IS NULL OR expires_at > ?)", (tenant_id, address, scope, scope_id, now)).fetchone()
    return dict(row) if row else None


def _owned(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int) -> bool:
    """Whether the scope's use case or domain still exists and belongs to the tenant (a deleted
    tenant's or use case's ids may be reused by SQLite: a token must not reach the new owner)."""
    table = "usecases" if scope == "usecase" else "domains"
    return conn.execute(f"SELECT 1 FROM {table} WHERE id = ? AND tenant_id = ?", (scope_id, tenant_id)).fetchone() is not None


_UNSETTLED = object()


def _settled(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int, address: str, now: float) -> object:
    """What an unsubscribe would answer without writing (None: the scope is gone; False: already
    suppressed there), or _UNSETTLED when it has to write. Two point lookups (``read_now``)."""
    if not _owned(conn, tenant_id, scope, scope_id):
        return None
    return False if _live(conn, tenant_id, scope, scope_id, address, now) is not None else _UNSETTLED


def _unsubscribe(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int, address: str, source: str,
                 detail: dict[str, Any], now: float) -> bool | None:
    if not _owned(conn, tenant_id, scope, scope_id):
        return None
    if _live(conn, tenant_id, scope, scope_id, address, now) is not None:
        return False
    add_suppression(conn, tenant_id, scope, scope_id, address, "unsubscribe", source, None, now, True)
    append_event(conn, tenant_id, "unsubscribed", address, {"scope": scope, "scope_id": scope_id, "source": source, **detail})
    return True


def _resubscribe(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int, address: str, source: str,
                 detail: dict[str, Any]) -> bool | None:
    if not _owned(conn, tenant_id, scope, scope_id):
        return None
    n = conn.execute("DELETE FROM suppressions WHERE tenant_id = ? AND address = ? AND scope = ? AND scope_id = ? AND reason = 'unsubscribe'",
                     (tenant_id, address, scope, scope_id)).rowcount
    if not n:
        return False
    append_event(conn, tenant_id, "suppression_removed", address, {"rows": n, "source": source})
    append_event(conn, tenant_id, "resubscribed", address, {"scope": scope, "scope_id": scope_id, "source": source, **detail})
    return True


def _page(conn: sqlite3.Connection, tenant_id: int, usecase_id: int, scope: str, scope_id: int, address: str, now: float) -> dict[str, Any] | None:
    tenant = conn.execute("SELECT name, display_name FROM tenants WHERE id = ?", (tenant_id,)).fetchone()
    if tenant is None or not _owned(conn, tenant_id, scope, scope_id):
        return None
    usecase = conn.execute("SELECT u.name, u.entity, d.name AS domain FROM usecases u JOIN domains d ON d.id = u.domain_id"
                           " WHERE u.id = ? AND u.tenant_id = ?", (usecase_id, tenant_id)).fetchone()
    domain = None
    if scope == "domain":
        row = conn.execute("SELECT name FROM domains WHERE id = ? AND tenant_id = ?", (scope_id, tenant_id)).fetchone()
        domain = row[0] if row else None
    return {"tenant": tenant["display_name"] or tenant["name"], "usecase": dict(usecase) if usecase else None,
            "domain": domain, "suppression": _live(conn, tenant_id, scope, scope_id, address, now)}


class Unsubscribes:
    def __init__(self, db: Database):
        self.db = db

    async def keys(self) -> list[dict[str, Any]]:
        """Every key, retired ones included: {id, secret, created_at, retired_at}. Never hand secrets beyond the service."""
        return await self.db.read(_keys)

    async def ensure_key(self, secret: bytes) -> list[dict[str, Any]]:
        """Every key, after storing ``secret`` as the first when none is live (one write, once)."""
        return await self.db.write(_ensure_key, secret, time.time())

    async def rotate(self, secret: bytes) -> dict[str, Any]:
        return await self.db.write(_rotate, secret, time.time())

    async def retire(self, key_id: int) -> int:
        return await self.db.write(_retire, key_id, time.time())

    async def unsubscribe(self, tenant_id: int, scope: tuple[str, int], address: str, *, source: str,
                          detail: dict[str, Any] | None = None, now: float | None = None) -> bool | None:
        """Suppress ``address`` at ``scope``; True when that changed anything, False when it was already
        suppressed there, None when the scope's use case or domain is gone (or not the tenant's).
        A repeat (mailbox providers retry, users click twice) is answered from a read of committed
        state without queueing a write: what it reports was committed by the first request."""
        now = time.time() if now is None else now
        settled = await self.db.read_point(_settled, tenant_id, scope[0], scope[1], address, now)
        if settled is not _UNSETTLED:
            return settled
        return await self.db.write(_unsubscribe, tenant_id, scope[0], scope[1], address, source, detail or {}, now)

    async def resubscribe(self, tenant_id: int, scope: tuple[str, int], address: str, *, source: str,
                          detail: dict[str, Any] | None = None) -> bool | None:
        """Lift the 'unsubscribe' entry at ``scope``; True when there was one (None as for unsubscribe)."""
        return await self.db.write(_resubscribe, tenant_id, scope[0], scope[1], address, source, detail or {})

    async def page(self, tenant_id: int, usecase_id: int, scope: tuple[str, int], address: str) -> dict[str, Any] | None:
        """What the confirmation page shows: the tenant's display name, the use case, the domain of a
        domain scope, and the live entry at the scope (None: subscribed). None when the tenant is gone."""
        return await self.db.read(_page, tenant_id, usecase_id, scope[0], scope[1], address, time.time())
