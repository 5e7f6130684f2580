"""Events: the append-only record that logs, metrics and webhooks are fed from.

``append_event`` runs inside the write that caused the event. In the same statement list it fills
the webhook outbox: one row per enabled endpoint of the event's tenant that subscribed to its kind
(an INSERT ... SELECT through the partial index ``webhook_endpoints_live``), so the event and its
deliveries-to-be commit together or not at all. An endpoint narrowed to a use case or a channel
address (migration 0022) takes only the events whose data names it; a ``received`` event whose use
case or address has a forwarding rule also gets a row in the forwarder's outbox (store/forwards.py). For a tenant without endpoints that is one probe of
an empty index range: no cache to keep coherent, and nothing a second gateway node could miss.
"""

from __future__ import annotations

import asyncio

import json
import sqlite3
import time
from typing import Any

from .db import Database


def append_event(conn: sqlite3.Connection, tenant_id: int | None, kind: str, subject: str = "", data: dict | None = None) -> None:
    """Append one event row; called inside the write that caused it, so both commit together."""
    now = time.time()
    event_id = conn.execute(
        "INSERT INTO events (created_at, tenant_id, kind, subject, data) VALUES (?, ?, ?, ?, ?)",
        (now, tenant_id, kind, subject, json.dumps(data or {}, separators=(",", ":"))),
    ).lastrowid
    if tenant_id is not None:
        usecase_id = address_id = None
        if data:
            usecase_id, address_id = data.get("usecase_id"), data.get("address_id")
        # An endpoint narrowed to a use case or an address takes only the events naming it.
        conn.execute(
            "INSERT INTO webhook_outbox (endpoint_id, event_id, created_at)"
            " SELECT id, ?, ? FROM webhook_endpoints INDEXED BY webhook_endpoints_live"
            " WHERE tenant_id = ? AND enabled = 1 AND (events = '*' OR instr(events, ?) > 0)"
            " AND (usecase_id IS NULL OR usecase_id = ?) AND (address_id IS NULL OR address_id = ?)",
            (event_id, now, tenant_id, f",{kind},", usecase_id, address_id),
        )
        if kind == "received" and (usecase_id is not None or address_id is not None):
            # A forwarding rule of its use case or address: the forwarder queues it (forwards.py).
            conn.execute(
                "INSERT INTO inbound_forward_outbox (tenant_id, inbound_id, created_at) SELECT ?, ?, ?"
                " WHERE EXISTS (SELECT 1 FROM inbound_forwards WHERE tenant_id = ? AND (usecase_id = ? OR address_id = ?))",
                (tenant_id, subject, now, tenant_id, usecase_id, address_id),
            )


def _event_row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["data"] = json.loads(d["data"])
    return d


def first_id_since(conn: sqlite3.Connection, since: float) -> int:
    """The id of the first event appended at or after ``since``: a binary search over ids (events
    are appended in time order), a few point reads instead of an index on created_at that every
    insert would pay for."""
    lo_hi = conn.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
    if lo_hi[0] is None:
        return 1
    lo, hi = lo_hi[0], lo_hi[1] + 1
    while lo < hi:
        mid = (lo + hi) // 2
        # ids may have gaps (swept, rolled back): the next row at or after mid stands for it.
        row = conn.execute("SELECT id, created_at FROM events WHERE id >= ? ORDER BY id LIMIT 1", (mid,)).fetchone()
        if row is None or row[1] >= since:
            hi = mid
        else:
            lo = row[0] + 1
    return lo


def _list(conn: sqlite3.Connection, tenant_id: int | None, subject: str | None, kind: str | None, after_id: int,
          since: float | None, limit: int, newest: bool) -> list[dict[str, Any]]:
    if since is not None:
        after_id = max(after_id, first_id_since(conn, since) - 1)
    where, args = ["e.id > ?"], [after_id]
    for column, value in (("e.tenant_id", tenant_id), ("e.subject", subject), ("e.kind", kind)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    order = "DESC" if newest else "ASC"
    sql = (f"SELECT e.*, t.name AS tenant FROM events e LEFT JOIN tenants t ON t.id = e.tenant_id"
           f" WHERE {' AND '.join(where)} ORDER BY e.id {order} LIMIT ?")
    rows = [_event_row(r) for r in conn.execute(sql, (*args, limit))]
    return rows[::-1] if newest else rows


class Events:
    def __init__(self, db: Database):
        self.db = db

    async def append(self, tenant_id: int | None, kind: str, subject: str = "", data: dict | None = None) -> None:
        await self.db.write(append_event, tenant_id, kind, subject, data)

    def append_soon(self, tenant_id: int | None, kind: str, subject: str = "", data: dict | None = None) -> asyncio.Future:
        """``append`` queued for the next group commit, not waited for (gateway/store/db.py write_soon)."""
        return self.db.write_soon(append_event, tenant_id, kind, subject, data)

    async def list(self, *, tenant_id: int | None = None, subject: str | None = None, kind: str | None = None,
                   after_id: int = 0, since: float | None = None, limit: int = 100,
                   newest: bool = False) -> list[dict[str, Any]]:
        """Events in id order after ``after_id`` (and at or after ``since``); with ``newest`` the last
        ``limit`` of them (still in id order). Each row carries its tenant's name."""
        return await self.db.read(_list, tenant_id, subject, kind, after_id, since, limit, newest)
