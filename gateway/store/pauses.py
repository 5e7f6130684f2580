"""Pauses: global, per tenant, per use case. Paused mail is accepted and queued, but held.

Pausing holds the scope's pending and deferred recipients that no worker has claimed
(hold_reason 'paused'); new messages in the scope start held (queue.put checks the pauses table in
its own transaction). Resuming puts back to pending every 'paused' recipient of the scope that no
other pause still covers: resuming a tenant while a global pause stands releases nothing.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .. import holds
from ..holds import covering
from .queue import pauses

SCOPES = ("global", "tenant", "usecase")


def _scope_where(scope: str) -> str:
    return {"global": "1", "tenant": "tenant_id = ?", "usecase": "usecase_id = ?"}[scope]


def _scope_args(scope: str, tenant_id: int | None, usecase_id: int | None) -> tuple:
    return {"global": (), "tenant": (tenant_id,), "usecase": (usecase_id,)}[scope]


def _find(conn: sqlite3.Connection, scope: str, tenant_id: int | None, usecase_id: int | None) -> sqlite3.Row | None:
    return conn.execute(
        "SELECT * FROM pauses WHERE scope = ? AND tenant_id IS ? AND usecase_id IS ?", (scope, tenant_id, usecase_id)
    ).fetchone()


def _subject(scope: str, tenant: str | None, usecase: str | None) -> str:
    return {"global": "global", "tenant": f"tenant {tenant}", "usecase": f"usecase {tenant}/{usecase}"}[scope]


def _pause(conn: sqlite3.Connection, scope: str, tenant_id: int | None, usecase_id: int | None, label: str, now: float) -> dict[str, Any]:
    if _find(conn, scope, tenant_id, usecase_id) is not None:
        raise Conflict(f"{label} is already paused")
    conn.execute("INSERT INTO pauses (scope, tenant_id, usecase_id, created_at) VALUES (?, ?, ?, ?)", (scope, tenant_id, usecase_id, now))
    held = conn.execute(
        "UPDATE recipients SET state = 'held', hold_reason = 'paused', updated_at = ?"
        f" WHERE state IN ('pending', 'deferred') AND claimed_by IS NULL AND {_scope_where(scope)}",
        (now, *_scope_args(scope, tenant_id, usecase_id)),
    ).rowcount
    append_event(conn, tenant_id, "paused", label, {"scope": scope, "held": held})
    return {"scope": scope, "paused": label, "held": held}


def _resume(conn: sqlite3.Connection, scope: str, tenant_id: int | None, usecase_id: int | None, label: str, now: float) -> dict[str, Any]:
    row = _find(conn, scope, tenant_id, usecase_id)
    if row is None:
        raise NotFound(f"{label} is not paused")
    conn.execute("DELETE FROM pauses WHERE id = ?", (row["id"],))
    # Which of the scope's paused recipients are free now is decided per (tenant, use case) by
    # gateway.holds, on the pauses that remain: another pause may still cover them.
    remaining = pauses(conn)
    released = 0
    for tid, uid in conn.execute(
        f"SELECT DISTINCT tenant_id, usecase_id FROM recipients WHERE state = 'held' AND hold_reason = 'paused' AND {_scope_where(scope)}",
        _scope_args(scope, tenant_id, usecase_id),
    ).fetchall():
        if holds.hold_reason(operator_held=False, pauses=covering(remaining, tid, uid)):
            continue
        released += conn.execute(
            "UPDATE recipients SET state = 'pending', hold_reason = '', next_attempt_at = ?, updated_at = ?"
            " WHERE state = 'held' AND hold_reason = 'paused' AND tenant_id = ? AND usecase_id = ?",
            (now, now, tid, uid),
        ).rowcount
    still = conn.execute(
        f"SELECT COUNT(*) FROM recipients WHERE state = 'held' AND hold_reason = 'paused' AND {_scope_where(scope)}",
        _scope_args(scope, tenant_id, usecase_id),
    ).fetchone()[0]
    append_event(conn, tenant_id, "resumed", label, {"scope": scope, "released": released, "still_paused": still})
    return {"scope": scope, "resumed": label, "released": released, "still_paused": still}


def _list(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT p.scope, t.name AS tenant, u.name AS usecase, p.created_at,"
        " (SELECT COUNT(*) FROM recipients r WHERE r.state = 'held' AND r.hold_reason = 'paused' AND"
        "  (p.scope = 'global' OR (p.scope = 'tenant' AND r.tenant_id = p.tenant_id) OR (p.scope = 'usecase' AND r.usecase_id = p.usecase_id))"
        " ) AS held"
        " FROM pauses p LEFT JOIN tenants t ON t.id = p.tenant_id LEFT JOIN usecases u ON u.id = p.usecase_id ORDER BY p.id"
    )
    return [dict(r) for r in rows]


def resolve_scope(conn: sqlite3.Connection, tenant: str | None, usecase: str | None) -> tuple[str, int | None, int | None]:
    """(scope, tenant_id, usecase_id) from names; NotFound when a name is unknown."""
    if tenant is None:
        return "global", None, None
    row = conn.execute("SELECT id FROM tenants WHERE name = ?", (tenant,)).fetchone()
    if row is None:
        raise NotFound(f"no tenant named {tenant!r}")
    tenant_id = row[0]
    if usecase is None:
        return "tenant", tenant_id, None
    row = conn.execute("SELECT id FROM usecases WHERE tenant_id = ? AND name = ?", (tenant_id, usecase)).fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant!r} has no use case named {usecase!r}")
    return "usecase", tenant_id, row[0]


class Pauses:
    def __init__(self, db: Database):
        self.db = db

    async def pause(self, tenant: str | None = None, usecase: str | None = None) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            scope, tenant_id, usecase_id = resolve_scope(conn, tenant, usecase)
            return _pause(conn, scope, tenant_id, usecase_id, _subject(scope, tenant, usecase), time.time())

        return await self.db.write(run)

    async def resume(self, tenant: str | None = None, usecase: str | None = None) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            scope, tenant_id, usecase_id = resolve_scope(conn, tenant, usecase)
            return _resume(conn, scope, tenant_id, usecase_id, _subject(scope, tenant, usecase), time.time())

        return await self.db.write(run)

    async def list(self) -> list[dict[str, Any]]:
        return await self.db.read(_list)

    async def tenant_id(self, name: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return resolve_scope(conn, name, None)[1]

        return await self.db.read(run)
