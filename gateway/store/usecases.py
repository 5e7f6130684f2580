"""Use cases (how a tenant sends from a verified domain) and their SMTP credentials.

Tenant-scoped like the domains: every function that names a use case takes the tenant that must
own it. ``credential`` and ``context`` are the submission path's lookups: the credential names its
use case, and the context is everything a session needs to decide, read fresh on every call because
a domain can turn failing or a tenant be disabled while a session is open.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ..errors import Conflict, InvalidArgument, NotFound
from .addresses import for_senders, of_usecase
from .db import Database
from .events import append_event
from .suppressions import delete_scope
from .tenants import get_by_name as tenant_by_name

CONTEXT_SQL = """
SELECT u.id, u.name, u.entity, u.kind, u.route, u.rate_limit, u.unsubscribe_scope, u.list_unsubscribe, u.suppressed_action,
       t.id AS tenant_id, t.name AS tenant, t.enabled AS tenant_enabled, t.outbound_enabled, t.monthly_quota,
       d.id AS domain_id, d.name AS domain, d.state AS domain_state
FROM usecases u JOIN tenants t ON t.id = u.tenant_id JOIN domains d ON d.id = u.domain_id
"""


def _senders(conn: sqlite3.Connection, usecase_id: int) -> list[str]:
    return [a for (a,) in conn.execute("SELECT address FROM usecase_senders WHERE usecase_id = ? ORDER BY address", (usecase_id,))]


def _context(conn: sqlite3.Connection, row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    d = dict(row)
    d["tenant_enabled"] = bool(d["tenant_enabled"])
    d["outbound_enabled"] = bool(d["outbound_enabled"])
    d["senders"] = _senders(conn, d["id"])
    d["usecase_id"], d["usecase"] = d["id"], d["name"]
    return d


def get_usecase(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    row = conn.execute(CONTEXT_SQL + " WHERE t.name = ? AND u.name = ?", (tenant, name)).fetchone()
    if row is None:
        tenant_by_name(conn, tenant)
        raise NotFound(f"tenant {tenant!r} has no use case {name!r}")
    d = _context(conn, row)
    d["credentials"] = conn.execute(
        "SELECT count(*) FROM credentials WHERE usecase_id = ? AND revoked_at IS NULL", (d["id"],)).fetchone()[0]
    return d


def _check_route(conn: sqlite3.Connection, tenant_id: int, route: str) -> None:
    if route == "direct":
        return
    kind, _, connector = route.partition(":")
    if kind != "connector" or not connector:
        raise InvalidArgument(f"invalid route {route!r}: expected 'direct' or 'connector:NAME'")
    row = conn.execute("SELECT direction FROM connectors WHERE tenant_id = ? AND name = ?", (tenant_id, connector)).fetchone()
    if row is None:
        raise NotFound(f"the tenant has no connector {connector!r}")
    if row[0] == "in":
        raise InvalidArgument(f"connector {connector!r} is inbound only; a route needs direction out or both")


# A new use case's id: above every id a use case ever had that events still name. SQLite gives a
# deleted newest row's id to the next insert, and events keep their use case after it is gone (a
# sender key reads its use case's events by that id): a reused id would hand a new use case's keys the
# old one's events. Two reads from the ends of the primary key and of events_usecase.
FRESH_ID_SQL = ("SELECT MAX(COALESCE((SELECT MAX(id) FROM usecases), 0),"
                " COALESCE((SELECT MAX(usecase_id) FROM events WHERE usecase_id IS NOT NULL), 0)) + 1")


def _add(conn: sqlite3.Connection, tenant: str, domain: str, name: str, fields: dict[str, Any], senders: list[str]) -> dict[str, Any]:
    t = tenant_by_name(conn, tenant)
    row = conn.execute("SELECT id, state FROM domains WHERE name = ? AND tenant_id = ?", (domain, t["id"])).fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant!r} has no domain {domain!r}")
    if row["state"] != "verified":
        raise Conflict(f"domain {domain!r} is {row['state']}, not verified; publish its records and run `gateway domain verify {domain}`")
    _check_route(conn, t["id"], fields["route"])
    try:
        cur = conn.execute(
            "INSERT INTO usecases (id, tenant_id, domain_id, name, entity, kind, unsubscribe_scope, route, rate_limit, created_at,"
            f" list_unsubscribe, suppressed_action) VALUES (({FRESH_ID_SQL}), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t["id"], row["id"], name, fields["entity"], fields["kind"], fields["unsubscribe_scope"], fields["route"],
             fields["rate_limit"], time.time(), fields.get("list_unsubscribe"), fields.get("suppressed_action", "refuse")),
        )
    except sqlite3.IntegrityError:
        raise Conflict(f"tenant {tenant!r} already has a use case named {name!r}") from None
    conn.executemany("INSERT INTO usecase_senders (usecase_id, address) VALUES (?, ?)", [(cur.lastrowid, a) for a in senders])
    append_event(conn, t["id"], "usecase_added", name, {"domain": domain, "kind": fields["kind"]})
    return get_usecase(conn, tenant, name)


def _update(conn: sqlite3.Connection, tenant: str, name: str, changes: dict[str, Any], senders: list[str] | None) -> dict[str, Any]:
    current = get_usecase(conn, tenant, name)
    if "route" in changes:
        _check_route(conn, current["tenant_id"], changes["route"])
    cols = [c for c in ("name", "entity", "kind", "unsubscribe_scope", "route", "rate_limit", "list_unsubscribe", "suppressed_action")
            if c in changes]
    if cols:
        try:
            conn.execute(f"UPDATE usecases SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                         [changes[c] for c in cols] + [current["id"]])
        except sqlite3.IntegrityError:
            raise Conflict(f"tenant {tenant!r} already has a use case named {changes.get('name')!r}") from None
    if senders is not None:
        conn.execute("DELETE FROM usecase_senders WHERE usecase_id = ?", (current["id"],))
        conn.executemany("INSERT INTO usecase_senders (usecase_id, address) VALUES (?, ?)", [(current["id"], a) for a in senders])
    append_event(conn, current["tenant_id"], "usecase_updated", changes.get("name", name),
                 {**{c: changes[c] for c in cols}, **({"senders": senders} if senders is not None else {})})
    return get_usecase(conn, tenant, changes.get("name", name))


def _delete(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    current = get_usecase(conn, tenant, name)
    existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "messages" in existing:
        (queued,) = conn.execute("SELECT count(*) FROM messages WHERE usecase_id = ?", (current["id"],)).fetchone()
        if queued:
            # Finished mail goes by itself after queue.keep_messages (the sweeper); then this succeeds.
            raise Conflict(f"use case {name!r} still has {queued} message(s) in the queue; they are removed "
                           "queue.keep_messages after they finish, or delete them with `gateway queue delete`")
    addresses = of_usecase(conn, current["id"])
    if addresses:
        # An address carries the operator's settings (copy, footer, vCard): never dropped as a side effect.
        raise Conflict(f"use case {name!r} is used by channel address(es) {', '.join(addresses)}; delete them or move them "
                       "to another use case (`gateway address update --usecase`) first")
    catchall = conn.execute("SELECT name FROM domains WHERE catchall_usecase_id = ?", (current["id"],)).fetchone()
    if catchall is not None:
        raise Conflict(f"use case {name!r} is the catch-all of {catchall[0]!r}; turn it off first "
                       f"(`gateway domain inbound {catchall[0]} --no-catchall`)")
    if "pauses" in existing:
        conn.execute("DELETE FROM pauses WHERE usecase_id = ?", (current["id"],))
    delete_scope(conn, current["tenant_id"], "usecase", current["id"])
    try:
        conn.execute("DELETE FROM usecases WHERE id = ?", (current["id"],))
    except sqlite3.IntegrityError:
        raise Conflict(f"use case {name!r} is still referenced by queued or recorded mail") from None
    append_event(conn, current["tenant_id"], "usecase_deleted", name)
    return current


def _credential_rows(conn: sqlite3.Connection, usecase_id: int, after: int = 0, limit: int = -1) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, username, created_at, last_used_at, revoked_at FROM credentials WHERE usecase_id = ? AND id > ? ORDER BY id LIMIT ?",
        (usecase_id, after, limit))
    return [dict(r) for r in rows]


def _add_credential(conn: sqlite3.Connection, tenant: str, usecase: str, username: str, password_hash: str) -> dict[str, Any]:
    current = get_usecase(conn, tenant, usecase)
    try:
        cur = conn.execute("INSERT INTO credentials (usecase_id, username, password_hash, created_at) VALUES (?, ?, ?, ?)",
                           (current["id"], username, password_hash, time.time()))
    except sqlite3.IntegrityError:
        raise Conflict(f"username {username!r} is taken") from None
    append_event(conn, current["tenant_id"], "credential_added", usecase, {"username": username})
    return next(c for c in _credential_rows(conn, current["id"]) if c["id"] == cur.lastrowid)


def _revoke_credential(conn: sqlite3.Connection, tenant: str, usecase: str, username: str) -> dict[str, Any]:
    current = get_usecase(conn, tenant, usecase)
    row = conn.execute("SELECT id, revoked_at FROM credentials WHERE usecase_id = ? AND username = ?", (current["id"], username)).fetchone()
    if row is None:
        raise NotFound(f"use case {usecase!r} has no credential {username!r}")
    if row["revoked_at"] is None:
        conn.execute("UPDATE credentials SET revoked_at = ? WHERE id = ?", (time.time(), row["id"]))
        append_event(conn, current["tenant_id"], "credential_revoked", usecase, {"username": username})
    return next(c for c in _credential_rows(conn, current["id"]) if c["id"] == row["id"])


class Usecases:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, tenant: str, *, domain: str, name: str, senders: list[str], **fields: Any) -> dict[str, Any]:
        return await self.db.write(_add, tenant, domain, name, fields, senders)

    async def get(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.read(get_usecase, tenant, name)

    async def list(self, tenant: str | None = None, *, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """One tenant's use cases, or (None, operator scope) all of them; with a tenant, a page is the
        ``limit`` names after ``after`` (keyset on the tenant's name index)."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if tenant is None:
                rows = conn.execute(CONTEXT_SQL + " ORDER BY t.name, u.name")
            else:
                tenant_by_name(conn, tenant)
                rows = conn.execute(CONTEXT_SQL + " WHERE t.name = ? AND u.name > ? ORDER BY u.name LIMIT ?", (tenant, after or "", limit))
            return [_context(conn, r) for r in rows]

        return await self.db.read(run)

    async def update(self, tenant: str, name: str, changes: dict[str, Any], senders: list[str] | None = None) -> dict[str, Any]:
        return await self.db.write(_update, tenant, name, changes, senders)

    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.write(_delete, tenant, name)

    async def context(self, usecase_id: int) -> dict[str, Any] | None:
        """What a submission session needs about its use case, read fresh (None when deleted).

        ``addresses``: the tenant's channel addresses a sender of this use case may use, by address
        (``store.addresses.for_senders``), so MAIL and DATA decide on them without a query."""
        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            ctx = _context(conn, conn.execute(CONTEXT_SQL + " WHERE u.id = ?", (usecase_id,)).fetchone())
            if ctx is not None:
                ctx["addresses"] = for_senders(conn, ctx["tenant_id"], ctx["domain"])
            return ctx

        return await self.db.read(run)

    # ------------------------------------------------------------------ credentials

    async def add_credential(self, tenant: str, usecase: str, username: str, password_hash: str) -> dict[str, Any]:
        return await self.db.write(_add_credential, tenant, usecase, username, password_hash)

    async def credentials(self, tenant: str, usecase: str, *, after: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """The use case's credentials by id (keyset: the ``limit`` after id ``after``); never their hashes."""
        return await self.db.read(lambda c: _credential_rows(c, get_usecase(c, tenant, usecase)["id"], after, limit))

    async def revoke_credential(self, tenant: str, usecase: str, username: str) -> dict[str, Any]:
        return await self.db.write(_revoke_credential, tenant, usecase, username)

    async def credential(self, username: str) -> dict[str, Any] | None:
        """The credential row for AUTH (hash included: never hand it beyond the service)."""
        return await self.db.read(lambda c: (lambda r: dict(r) if r else None)(c.execute(
            "SELECT id, usecase_id, username, password_hash, revoked_at FROM credentials WHERE username = ?", (username,)).fetchone()))

    async def record_use(self, uses: dict[int, float], rehash: list[tuple[int, str, str]]) -> None:
        """Last use per credential id, and legacy hashes replaced by keyed ones (only where the stored
        hash is still the one that was verified: a concurrent change wins), in one write."""
        def run(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE credentials SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                             [(when, cid) for cid, when in uses.items()])
            conn.executemany("UPDATE credentials SET password_hash = ? WHERE id = ? AND password_hash = ?",
                             [(new, cid, old) for cid, old, new in rehash])

        await self.db.write(run)

    async def legacy_credentials(self) -> int:
        """How many unrevoked credentials still carry an argon2 hash (they migrate on their next login)."""
        return await self.db.read(lambda c: c.execute(
            "SELECT count(*) FROM credentials WHERE revoked_at IS NULL AND password_hash LIKE '$argon2%'").fetchone()[0])

    async def credential_key(self, new_key: str) -> bytes:
        """The key of the keyed password hashes (made by migration 0007); ``new_key`` (hex) is stored
        only when the database has none (the one write, rare: a database whose key row was removed)."""
        def get(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT value FROM meta WHERE key = 'credential_key'").fetchone()
            return row[0] if row else None

        def ensure(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('credential_key', ?)", (new_key,))
            return get(conn)

        value = await self.db.read(get) or await self.db.write(ensure)
        return bytes.fromhex(value)
