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

from . import keyset, stats
from .db import Database
from .keyset import first_id_since, id_range


# Events about one outbound message: their subject is its queue id, and they belong to its use case.
MESSAGE_KINDS = frozenset({"queued", "held", "released", "retried", "deleted", "delivered", "deferred", "bounced",
                           "suppressed", "complained", "dsn_sent"})

# The id the events INSERT just took, read on the server (PostgreSQL; its identity's sequence).
_PG_EVENT_ID = "currval(pg_get_serial_sequence('events', 'id'))"


def _usecase_of(conn: sqlite3.Connection, kind: str, subject: str, data: dict[str, Any]) -> tuple[int | None, bool]:
    """(the use case an event is about, whether it is the tenant's own traffic): the one its data
    names, else for a message event its message's (a DSN the gateway wrote is not the tenant's)."""
    named = data.get("usecase_id")
    if isinstance(named, int):
        return named, True
    if kind in MESSAGE_KINDS and subject:
        row = conn.execute("SELECT usecase_id, mail_from FROM messages WHERE queue_id = ?", (subject,)).fetchone()
        if row is not None:
            return row[0], row[1] != ""
    return None, False


def append_event(conn: sqlite3.Connection, tenant_id: int | None, kind: str, subject: str = "", data: dict | None = None,
                 *, message: tuple[int, bool] | None = None) -> None:
    """Append one event row; called inside the write that caused it, so both commit together. The
    day's statistics it counts for (store/stats.py) are added in the same write. ``message``: the
    (use case, is the tenant's own mail) of the outbound message it is about, when the caller has
    the row at hand (the queue's put, delivery's record: it spares a lookup per event)."""
    now = time.time()
    data = data or {}
    if tenant_id is None:
        usecase, own = None, False
    elif message is not None and not isinstance(data.get("usecase_id"), int):
        usecase, own = message
    else:
        usecase, own = _usecase_of(conn, kind, subject, data)
    inserted = conn.execute(
        "INSERT INTO events (created_at, tenant_id, kind, subject, data, usecase_id) VALUES (?, ?, ?, ?, ?, ?)",
        (now, tenant_id, kind, subject, json.dumps(data, separators=(",", ":")), usecase),
    )
    if tenant_id is not None:
        if usecase is not None and own:
            stats.count(conn, tenant_id, usecase, kind, data, now)
        # An endpoint narrowed to a use case or an address takes only the events whose data names it.
        usecase_id, address_id = data.get("usecase_id"), data.get("address_id")
        # On PostgreSQL the event's id stays on the server (currval, this session's): the write
        # need not wait for the INSERT's answer, a round trip in pg.py's pipelined batch.
        on_pg = getattr(conn, "dialect", "sqlite") == "postgresql"
        conn.execute(
            "INSERT INTO webhook_outbox (endpoint_id, event_id, created_at)"
            f" SELECT id, {_PG_EVENT_ID if on_pg else '?'}, ? FROM webhook_endpoints INDEXED BY webhook_endpoints_live"
            " WHERE tenant_id = ? AND enabled = 1 AND (events = '*' OR instr(events, ?) > 0)"
            " AND (usecase_id IS NULL OR usecase_id = ?) AND (address_id IS NULL OR address_id = ?)",
            (*(() if on_pg else (inserted.lastrowid,)), now, tenant_id, f",{kind},", usecase_id, address_id),
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


# One subject's events (a message's, for its status read), pinned to events_subject: with a tenant
# too the planner otherwise walks events_tenant, every event the tenant ever had (EXPLAIN showed it).
SUBJECT_SQL = ("SELECT e.id, e.created_at, e.kind, e.subject, e.data, e.usecase_id, u.name AS usecase"
               " FROM events e INDEXED BY events_subject LEFT JOIN usecases u ON u.id = e.usecase_id"
               " WHERE e.subject = ? AND e.tenant_id = ? ORDER BY e.id DESC LIMIT ?")


def _of_subject(conn: sqlite3.Connection, tenant_id: int, subject: str, limit: int) -> list[dict[str, Any]]:
    return [_event_row(r) for r in conn.execute(SUBJECT_SQL, (subject, tenant_id, limit))][::-1]


def _tenant_page(conn: sqlite3.Connection, tenant_id: int, usecase_id: int | None, kinds: list[str], since: float | None,
                 until: float | None, cursor: int | None, newest: bool, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    lo, hi = id_range(conn, "events", since, until, cursor, newest)
    where, args = ["e.tenant_id = ?", "e.id > ?"], [tenant_id, lo]
    if hi is not None:
        where.append("e.id < ?")
        args.append(hi)
    if usecase_id is not None:
        where.append("e.usecase_id = ?")
        args.append(usecase_id)
    order = "DESC" if newest else "ASC"
    # A sender key's use case through its own index: events_tenant would walk every event of the tenant.
    source = "events e INDEXED BY events_usecase" if usecase_id is not None else "events e"
    edge = None
    if kinds:
        edge = keyset.edge(conn, f"FROM {source} WHERE {' AND '.join(where)}", args, "e.id", newest)
        if edge is not None:
            where.append("e.id >= ?" if newest else "e.id <= ?")
            args.append(edge)
        where.append(f"e.kind IN ({', '.join('?' * len(kinds))})")
        args += kinds
    rows = [_event_row(r) for r in conn.execute(
        f"SELECT e.id, e.created_at, e.kind, e.subject, e.data, e.usecase_id, u.name AS usecase FROM {source}"
        f" LEFT JOIN usecases u ON u.id = e.usecase_id WHERE {' AND '.join(where)} ORDER BY e.id {order} LIMIT ?",
        (*args, limit + 1))]
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1]["id"]
    return rows, edge


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

    async def of_subject(self, tenant_id: int, subject: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` events of the tenant about ``subject`` (a queue id...), in id order."""
        return await self.db.read(_of_subject, tenant_id, subject, limit)

    async def tenant_page(self, tenant_id: int, *, usecase_id: int | None = None, kinds: list[str] = (),
                          since: float | None = None, until: float | None = None, cursor: int | None = None,
                          newest: bool = True, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """One page of a tenant's events (of one use case, of some kinds, created in [since, until)),
        newest first or oldest first, after the id ``cursor``; and the id the next page goes on
        after (None: no more). With ``kinds`` a page looks at most keyset.SCAN rows, so it may be short
        and still have a next page."""
        return await self.db.read(_tenant_page, tenant_id, usecase_id, list(kinds), since, until, cursor, newest, limit)
