"""API keys of the HTTP API (gateway/api/): one row per key, only a keyed hash of its token.

The token is made by the caller (gateway/api/keys.py) and never reaches the store; what is kept is
``hash``, an HMAC-SHA256 of the whole token under the pepper (meta ``api_key_pepper``, 32 random bytes
made by the first key). A copy of the database alone is not enough to try tokens offline without the
pepper only when the pepper lives elsewhere; here it lives beside the rows so that every node of a
shared store checks keys alike, and the tokens' 256 random bits are what make a stolen hash useless.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .tenants import get_by_name

PEPPER_KEY = "api_key_pepper"

KEY_COLUMNS = ("SELECT k.*, t.name AS tenant, t.enabled AS tenant_enabled, u.name AS usecase"
               " FROM api_keys k JOIN tenants t ON t.id = k.tenant_id LEFT JOIN usecases u ON u.id = k.usecase_id")


def key_row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    d = dict(row)
    d.pop("hash", None)
    d["tenant_enabled"] = bool(d.get("tenant_enabled"))
    return d


def pepper(conn: sqlite3.Connection) -> bytes:
    """The pepper, made once (inside a write; readers use ``read_pepper``)."""
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING", (PEPPER_KEY, secrets.token_hex(32)))
    return bytes.fromhex(conn.execute("SELECT value FROM meta WHERE key = ?", (PEPPER_KEY,)).fetchone()[0])


def read_pepper(conn: sqlite3.Connection) -> bytes | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (PEPPER_KEY,)).fetchone()
    return bytes.fromhex(row[0]) if row else None


def _add(conn: sqlite3.Connection, tenant: str, role: str, usecase: str | None, name: str, expires_at: float | None,
         rate_limit: float, public_id: str, digest) -> dict[str, Any]:
    t = get_by_name(conn, tenant)
    usecase_id = None
    if usecase is not None:
        row = conn.execute("SELECT id FROM usecases WHERE tenant_id = ? AND name = ?", (t["id"], usecase)).fetchone()
        if row is None:
            raise NotFound(f"tenant {tenant!r} has no use case named {usecase!r}")
        usecase_id = row[0]
    try:
        cur = conn.execute(
            "INSERT INTO api_keys (public_id, tenant_id, role, usecase_id, name, hash, rate_limit, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (public_id, t["id"], role, usecase_id, name, digest(pepper(conn)), rate_limit, time.time(), expires_at))
    except sqlite3.IntegrityError:
        raise Conflict(f"an API key {public_id!r} already exists") from None
    append_event(conn, t["id"], "apikey_added", public_id, {"role": role, "usecase": usecase, "name": name, "expires_at": expires_at})
    return key_row(conn.execute(KEY_COLUMNS + " WHERE k.id = ?", (cur.lastrowid,)).fetchone())


def _revoke(conn: sqlite3.Connection, public_id: str, tenant: str | None) -> dict[str, Any]:
    row = conn.execute(KEY_COLUMNS + " WHERE k.public_id = ?", (public_id,)).fetchone()
    if row is None or (tenant is not None and row["tenant"] != tenant):
        raise NotFound(f"no API key {public_id!r}")
    if row["revoked_at"] is None:
        conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (time.time(), row["id"]))
        append_event(conn, row["tenant_id"], "apikey_revoked", public_id, {"role": row["role"], "name": row["name"]})
    return key_row(conn.execute(KEY_COLUMNS + " WHERE k.id = ?", (row["id"],)).fetchone())


def _lookup(conn: sqlite3.Connection, public_id: str) -> tuple[dict[str, Any], str, bytes] | None:
    row = conn.execute(KEY_COLUMNS + " WHERE k.public_id = ?", (public_id,)).fetchone()
    salt = read_pepper(conn)
    if row is None or salt is None:
        return None
    return key_row(row), row["hash"], salt


class ApiKeys:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, tenant: str, *, role: str, public_id: str, digest, usecase: str | None = None, name: str = "",
                  expires_at: float | None = None, rate_limit: float = 0.0) -> dict[str, Any]:
        """Store a key. ``digest(pepper) -> hex`` hashes the token (which the store never sees)."""
        return await self.db.write(_add, tenant, role, usecase, name, expires_at, rate_limit, public_id, digest)

    async def lookup(self, public_id: str) -> tuple[dict[str, Any], str, bytes] | None:
        """(the key, its stored hash, the pepper) to check a presented token against, or None."""
        return await self.db.read(_lookup, public_id)

    async def list(self, tenant: str | None = None, *, after: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """Keys by id, those past ``after`` (keyset paging: the API reads a page, never the whole list)."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if tenant is None:
                rows = conn.execute(KEY_COLUMNS + " WHERE k.id > ? ORDER BY k.id LIMIT ?", (after, limit))
            else:
                t = get_by_name(conn, tenant)
                rows = conn.execute(KEY_COLUMNS + " WHERE k.tenant_id = ? AND k.id > ? ORDER BY k.id LIMIT ?", (t["id"], after, limit))
            return [key_row(r) for r in rows]

        return await self.db.read(run)

    async def get(self, tenant: str, public_id: str) -> dict[str, Any]:
        """One key of the tenant; NotFound for another tenant's as for none."""
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            t = get_by_name(conn, tenant)
            row = conn.execute(KEY_COLUMNS + " WHERE k.public_id = ? AND k.tenant_id = ?", (public_id, t["id"])).fetchone()
            if row is None:
                raise NotFound(f"no API key {public_id!r}")
            return key_row(row)

        return await self.db.read(run)

    async def revoke(self, public_id: str, *, tenant: str | None = None) -> dict[str, Any]:
        return await self.db.write(_revoke, public_id, tenant)

    def touch_soon(self, key_id: int, when: float) -> None:
        """Record a use, in the next group commit (not waited for; the caller limits how often)."""
        fut = self.db.write_soon(lambda c: c.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (when, key_id)))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a lost touch is harmless
