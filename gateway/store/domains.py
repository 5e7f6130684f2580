"""Sending domains and their DKIM keys.

Every function that reads or changes one domain takes the tenant that must own it: a domain of
another tenant is "not found", with the same message as a domain that does not exist, so a caller
scoped to one tenant learns nothing about the others. Only the operator-wide ``owner`` and
``list(None)`` cross tenants, and the daemon's own components (signing keys, re-verification).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .suppressions import delete_scope
from .tenants import get_by_name as tenant_by_name

KEY_COLUMNS = "id, selector, algorithm, key_path, public_key, state, created_at, activated_at, retired_at"


def _domain_row(row: sqlite3.Row | None) -> dict[str, Any] | None:
    if row is None:
        return None
    d = dict(row)
    d["last_result"] = json.loads(d.get("last_result") or "{}")
    return d


def _keys(conn: sqlite3.Connection, domain_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {KEY_COLUMNS} FROM dkim_keys WHERE domain_id = ? ORDER BY created_at, id", (domain_id,))
    return [dict(r) for r in rows]


def get_domain(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    """The domain with its keys, when ``tenant`` owns it; else NotFound."""
    row = _domain_row(conn.execute(
        "SELECT d.*, t.name AS tenant FROM domains d JOIN tenants t ON t.id = d.tenant_id WHERE d.name = ? AND t.name = ?",
        (name, tenant),
    ).fetchone())
    if row is None:
        tenant_by_name(conn, tenant)  # an unknown tenant is reported as such
        raise NotFound(f"tenant {tenant!r} has no domain {name!r}")
    row["keys"] = _keys(conn, row["id"])
    return row


def _conflicting(conn: sqlite3.Connection, tenant_id: int, name: str) -> str | None:
    """A domain of another tenant that is this name, a parent of it or a subdomain of it.

    Senders may use subdomains of a verified domain, so a parent held by one tenant and a child
    held by another would let one send as the other."""
    for (other,) in conn.execute(
        "SELECT name FROM domains WHERE tenant_id != ? AND (name = ? OR name LIKE ? ESCAPE '\\' OR ? LIKE '%.' || name)",
        (tenant_id, name, "%." + name.replace("_", "\\_"), name),
    ):
        return other
    return None


def check_free(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    """The tenant, when it may add the domain; else NotFound or Conflict."""
    t = tenant_by_name(conn, tenant)
    if conn.execute("SELECT 1 FROM domains WHERE name = ? AND tenant_id = ?", (name, t["id"])).fetchone():
        raise Conflict(f"tenant {tenant!r} already has the domain {name!r}")
    other = _conflicting(conn, t["id"], name)
    if other is not None:
        # The other tenant's name is not told: a subdomain of the name asked for (secret-launch.example.com
        # for example.com) is theirs to know; this tenant learns only that the name is taken.
        what = "is held" if other == name else "overlaps a domain (a parent or subdomain of it) held"
        raise Conflict(f"domain {name!r} {what} by another tenant; one domain belongs to one tenant")
    return t


def _insert_key(conn: sqlite3.Connection, domain_id: int, key: dict[str, Any], now: float) -> None:
    """A new pending key, its private PEM in the same row (and so the same transaction as the domain or
    the rotation that makes it): a node that reads the row can sign with it, no file needed."""
    conn.execute(
        "INSERT INTO dkim_keys (domain_id, selector, algorithm, key_path, public_key, private_pem, state, created_at) "
        "VALUES (?, ?, ?, '', ?, ?, 'pending', ?)",
        (domain_id, key["selector"], key["algorithm"], key["public_key"], key["private_pem"], now),
    )


def _add(conn: sqlite3.Connection, tenant: str, name: str, token: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    t = check_free(conn, tenant, name)
    now = time.time()
    cur = conn.execute(
        "INSERT INTO domains (tenant_id, name, verification_token, created_at) VALUES (?, ?, ?, ?)",
        (t["id"], name, token, now),
    )
    for key in keys:
        _insert_key(conn, cur.lastrowid, key, now)
    append_event(conn, t["id"], "domain_added", name, {"selectors": [k["selector"] for k in keys]})
    return get_domain(conn, tenant, name)


def users(conn: sqlite3.Connection, tenant_id: int, domain_id: int, name: str) -> list[str]:
    """What uses the domain: its use cases, and connectors whose settings send as it."""
    found = [f"use case {n}" for (n,) in conn.execute(
        "SELECT name FROM usecases WHERE domain_id = ? AND tenant_id = ? ORDER BY name", (domain_id, tenant_id))]
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'connectors'").fetchone():
        for cname, settings in conn.execute("SELECT name, settings FROM connectors WHERE tenant_id = ? ORDER BY name", (tenant_id,)):
            try:
                values = json.loads(settings or "{}")
            except ValueError:
                continue
            for key in ("sender", "from", "reply_to", "domain"):
                value = str(values.get(key) or "").lower()
                host = value.rpartition("@")[2].strip(" >")
                if host == name or host.endswith("." + name):
                    found.append(f"connector {cname}")
                    break
    return found


def _delete(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    domain = get_domain(conn, tenant, name)
    held = users(conn, domain["tenant_id"], domain["id"], name)
    if held:
        raise Conflict(f"domain {name!r} is in use by {', '.join(held)}; delete or move those first")
    conn.execute("DELETE FROM dkim_keys WHERE domain_id = ?", (domain["id"],))
    delete_scope(conn, domain["tenant_id"], "domain", domain["id"])
    conn.execute("DELETE FROM domains WHERE id = ?", (domain["id"],))
    append_event(conn, domain["tenant_id"], "domain_deleted", name)
    return domain


def _set_inbound(conn: sqlite3.Connection, tenant: str, name: str, enabled: bool | None, catchall: str | None,
                 clear_catchall: bool) -> dict[str, Any]:
    """Turn receiving on or off and set (or clear) the catch-all use case, which must be of this domain."""
    domain = get_domain(conn, tenant, name)
    changes: dict[str, Any] = {}
    if enabled is not None:
        changes["inbound_enabled"] = int(enabled)
    if clear_catchall:
        changes["catchall_usecase_id"] = None
    elif catchall is not None:
        row = conn.execute("SELECT id, domain_id FROM usecases WHERE tenant_id = ? AND name = ?", (domain["tenant_id"], catchall)).fetchone()
        if row is None:
            raise NotFound(f"tenant {tenant!r} has no use case {catchall!r}")
        if row["domain_id"] != domain["id"]:
            raise Conflict(f"use case {catchall!r} is not of the domain {name!r}; a catch-all receives for its own domain")
        changes["catchall_usecase_id"] = row["id"]
    if changes:
        conn.execute(f"UPDATE domains SET {', '.join(f'{c} = ?' for c in changes)} WHERE id = ?", (*changes.values(), domain["id"]))
        append_event(conn, domain["tenant_id"], "domain_inbound_changed", name,
                     {**({"inbound": bool(enabled)} if enabled is not None else {}),
                      **({"catchall": None if clear_catchall else catchall} if clear_catchall or catchall is not None else {})})
    return get_domain(conn, tenant, name)


def inbound_of(conn: sqlite3.Connection, domain_id: int) -> dict[str, Any]:
    """The domain's inbound switches for people: on/off and the catch-all use case's name."""
    row = conn.execute("SELECT d.inbound_enabled, u.name FROM domains d LEFT JOIN usecases u ON u.id = d.catchall_usecase_id "
                       "WHERE d.id = ?", (domain_id,)).fetchone()
    return {"inbound_enabled": bool(row[0]), "catchall": row[1]} if row else {"inbound_enabled": False, "catchall": None}


def _add_keys(conn: sqlite3.Connection, tenant: str, name: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    domain = get_domain(conn, tenant, name)
    taken = {k["selector"] for k in domain["keys"]}
    for key in keys:
        if key["selector"] in taken:
            raise Conflict(f"domain {name!r} already has a DKIM selector {key['selector']!r}")
        _insert_key(conn, domain["id"], key, time.time())
    append_event(conn, domain["tenant_id"], "dkim_rotation_started", name, {"selectors": [k["selector"] for k in keys]})
    return get_domain(conn, tenant, name)


def _remove_key(conn: sqlite3.Connection, tenant: str, name: str, selector: str) -> dict[str, Any]:
    domain = get_domain(conn, tenant, name)
    key = next((k for k in domain["keys"] if k["selector"] == selector), None)
    if key is None:
        raise NotFound(f"domain {name!r} has no DKIM selector {selector!r}")
    if key["state"] == "active":
        raise Conflict(f"DKIM selector {selector!r} of {name!r} is active (it signs mail); rotate first, then remove it once retired")
    conn.execute("DELETE FROM dkim_keys WHERE id = ?", (key["id"],))
    append_event(conn, domain["tenant_id"], "dkim_key_removed", name, {"selector": selector, "state": key["state"]})
    return key


def _record(conn: sqlite3.Connection, domain_id: int, token: str, state: str | None, result: dict[str, Any],
            verified_selectors: list[str]) -> dict[str, Any] | None:
    """Store one verification run. ``state`` None keeps the state (only errors, nothing definitive)."""
    row = conn.execute("SELECT * FROM domains WHERE id = ? AND verification_token = ?", (domain_id, token)).fetchone()
    if row is None:
        return None  # deleted (or re-added) while DNS was being asked: nothing to record
    now = time.time()
    old = row["state"]
    new = state or old
    conn.execute(
        "UPDATE domains SET state = ?, checked_at = ?, last_result = ?, verified_at = CASE WHEN ? = 'verified' THEN ? ELSE verified_at END "
        "WHERE id = ?",
        (new, now, json.dumps(result, separators=(",", ":")), new, now, domain_id),
    )
    activated = []
    if new == "verified":
        for selector in verified_selectors:
            # fetchall: a RETURNING statement must run to its end before the transaction can commit.
            rows = conn.execute(
                "UPDATE dkim_keys SET state = 'active', activated_at = ? WHERE domain_id = ? AND selector = ? AND state = 'pending' "
                "RETURNING algorithm",
                (now, domain_id, selector),
            ).fetchall()
            activated += [(selector, r[0]) for r in rows]
        for selector, algorithm in activated:
            # The rotation is complete: the key it replaces stops signing but stays published until removed.
            conn.execute(
                "UPDATE dkim_keys SET state = 'retired', retired_at = ? WHERE domain_id = ? AND algorithm = ? AND state = 'active' "
                "AND selector NOT IN (SELECT value FROM json_each(?))",
                (now, domain_id, algorithm, json.dumps([s for s, _ in activated])),
            )
            append_event(conn, row["tenant_id"], "dkim_key_activated", row["name"], {"selector": selector, "algorithm": algorithm})
    if new != old:
        kind = {"verified": "domain_verified", "failing": "domain_failing", "pending": "domain_pending"}[new]
        failed = [r["name"] + " " + r["type"] for r in result.get("records", []) if r.get("required") and r.get("status") != "verified"]
        append_event(conn, row["tenant_id"], kind, row["name"], {"from": old, "failed": failed})
    return {"name": row["name"], "tenant_id": row["tenant_id"], "from": old, "state": new, "activated": [s for s, _ in activated]}


class Domains:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, tenant: str, name: str, *, token: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.db.write(_add, tenant, name, token, keys)

    async def get(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.read(get_domain, tenant, name)

    async def check_free(self, tenant: str, name: str) -> None:
        """Raise what ``add`` would (unknown tenant, domain held), before keys are made for it."""
        await self.db.read(check_free, tenant, name)

    async def owner(self, name: str) -> str | None:
        """Operator scope: the name of the tenant that holds the domain, or None."""
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT t.name FROM domains d JOIN tenants t ON t.id = d.tenant_id WHERE d.name = ?", (name,)).fetchone()
            return row[0] if row else None

        return await self.db.read(run)

    async def list(self, tenant: str | None = None, *, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """One tenant's domains, or (None, operator scope) every domain, by name; a page is the
        ``limit`` names after ``after`` (keyset: the name index, never OFFSET)."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            sql = ("SELECT d.id, d.name, d.state, d.verified_at, d.checked_at, d.created_at, t.name AS tenant, "
                   "(SELECT group_concat(selector || ':' || state, ' ') FROM dkim_keys k WHERE k.domain_id = d.id) AS selectors "
                   "FROM domains d JOIN tenants t ON t.id = d.tenant_id WHERE d.name > ?")
            if tenant is None:
                return [dict(r) for r in conn.execute(sql + " ORDER BY d.name LIMIT ?", (after or "", limit))]
            tenant_by_name(conn, tenant)
            return [dict(r) for r in conn.execute(sql + " AND t.name = ? ORDER BY d.name LIMIT ?", (after or "", tenant, limit))]

        return await self.db.read(run)

    async def users(self, tenant: str, name: str) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            domain = get_domain(conn, tenant, name)
            return users(conn, domain["tenant_id"], domain["id"], name)

        return await self.db.read(run)

    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.write(_delete, tenant, name)

    async def set_inbound(self, tenant: str, name: str, *, enabled: bool | None = None, catchall: str | None = None,
                          clear_catchall: bool = False) -> dict[str, Any]:
        return await self.db.write(_set_inbound, tenant, name, enabled, catchall, clear_catchall)

    async def inbound(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.read(lambda c: inbound_of(c, get_domain(c, tenant, name)["id"]))

    async def add_keys(self, tenant: str, name: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
        return await self.db.write(_add_keys, tenant, name, keys)

    async def remove_key(self, tenant: str, name: str, selector: str) -> dict[str, Any]:
        return await self.db.write(_remove_key, tenant, name, selector)

    async def record(self, domain_id: int, token: str, state: str | None, result: dict[str, Any],
                     verified_selectors: list[str]) -> dict[str, Any] | None:
        return await self.db.write(_record, domain_id, token, state, result, verified_selectors)

    async def signing_keys(self, domain: str | int) -> list[dict[str, Any]]:
        """The ACTIVE keys of a domain (by name or id), to sign with:
        [{selector, algorithm, key_path, private_pem (None: not imported), domain}]."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            column = "d.id" if isinstance(domain, int) else "d.name"
            rows = conn.execute(
                "SELECT k.selector, k.algorithm, k.key_path, k.private_pem, d.name AS domain FROM dkim_keys k "
                "JOIN domains d ON d.id = k.domain_id "
                f"WHERE {column} = ? AND k.state = 'active' ORDER BY k.algorithm DESC, k.activated_at DESC",
                (domain,),
            )
            return [dict(r) for r in rows]

        return await self.db.read(run)

    async def due(self, checked_before: float, limit: int = 100000) -> list[dict[str, Any]]:
        """Verified and failing domains last checked before the given time, oldest first (re-verifier)."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT d.name, t.name AS tenant FROM domains d JOIN tenants t ON t.id = d.tenant_id "
                "WHERE d.state IN ('verified', 'failing') AND coalesce(d.checked_at, 0) < ? ORDER BY coalesce(d.checked_at, 0) LIMIT ?",
                (checked_before, limit),
            )
            return [dict(r) for r in rows]

        return await self.db.read(run)

    async def without_pem(self) -> list[dict[str, Any]]:
        """Keys whose private PEM is not in the store yet (rows from before migration 0033), with the
        file each names: [{id, domain, selector, algorithm, state, key_path}]."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT k.id, d.name AS domain, k.selector, k.algorithm, k.state, k.key_path FROM dkim_keys k "
                "JOIN domains d ON d.id = k.domain_id WHERE k.private_pem IS NULL ORDER BY d.name, k.selector, k.id")
            return [dict(r) for r in rows]

        return await self.db.read(run)

    async def import_pem(self, key_id: int, private_pem: str) -> bool:
        """Store an old row's PEM, once: False when it has one already (another node or process was first)."""
        def run(conn: sqlite3.Connection) -> bool:
            return conn.execute("UPDATE dkim_keys SET private_pem = ? WHERE id = ? AND private_pem IS NULL",
                                (private_pem, key_id)).rowcount == 1

        return await self.db.write(run)
