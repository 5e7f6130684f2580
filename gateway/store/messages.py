"""A tenant's outbound messages as its applications read them (GET /v1/messages): pages of the
``messages`` table newest first, each with its recipients counted by state.

Every read takes the tenant; a use case narrows further (a sender key's). Pages walk
``messages_tenant`` / ``messages_usecase`` (migration 0025) by id; a state or recipient filter,
which no index answers, looks at most keyset.SCAN messages a page. One message's whole status (recipients,
attempts) is ``store.queue.show``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from . import keyset
from .db import Database
from .events import SUBJECT_SQL, _of_subject
from .queue import STATES, _show, state_of


def _select(where: list[str]) -> str:
    return ("SELECT m.id, m.queue_id, u.name AS usecase, m.mail_from, m.message_id, m.size, m.created_at, m.expires_at"
            f" FROM messages m LEFT JOIN usecases u ON u.id = m.usecase_id WHERE {' AND '.join(where)} ORDER BY m.id DESC LIMIT ?")


def _page(conn: sqlite3.Connection, tenant_id: int, usecase_id: int | None, state: str | None, recipient: str | None,
          since: float | None, until: float | None, cursor: int | None, limit: int) -> tuple[list[dict[str, Any]], int | None]:
    lo, hi = keyset.id_range(conn, "messages", since, until, cursor, newest=True)
    where, args = ["m.tenant_id = ?", "m.id > ?", "m.deleting = 0"], [tenant_id, lo]
    if hi is not None:
        where.append("m.id < ?")
        args.append(hi)
    if usecase_id is not None:
        where.append("m.usecase_id = ?")
        args.append(usecase_id)
    edge = None
    if state is not None or recipient is not None:
        edge = keyset.edge(conn, f"FROM messages m WHERE {' AND '.join(where)}", args, "m.id", newest=True)
        if edge is not None:
            where.append("m.id >= ?")
            args.append(edge)
        for column, value in (("r.state = ?", state), ("r.rcpt = ? COLLATE NOCASE", recipient)):
            if value is not None:
                where.append(f"EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND {column})")
                args.append(value)
    rows = [dict(r) for r in conn.execute(_select(where), (*args, limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    if rows:
        counts: dict[int, dict[str, int]] = {r["id"]: dict.fromkeys(STATES, 0) for r in rows}
        marks = ", ".join("?" * len(rows))
        for message_id, st, n in conn.execute(
                f"SELECT message_id, state, COUNT(*) FROM recipients WHERE message_id IN ({marks}) GROUP BY message_id, state",
                list(counts)):
            counts[message_id][st] = n
        for r in rows:
            r["counts"] = counts[r["id"]]
            r["recipients"] = sum(counts[r["id"]].values())
            r["state"] = state_of(counts[r["id"]])
    if more:
        return rows, rows[-1]["id"]
    return rows, edge


# A status read of a message this small (recipients, attempts of them all) runs on the caller's
# thread: ~a dozen index probes, a fraction of the hop to a reader (~100-250 us CPU). A bigger one
# (a retried mailing) goes to a reader, as its rows are many.
SMALL_RECIPIENTS = 10
SMALL_ATTEMPTS = 30
SMALL_EVENTS = 100


def _small(conn: sqlite3.Connection, queue_id: str, tenant_id: int) -> bool:
    """Whether the tenant's message (if any) is small enough to read here; one probe of the queue id
    and of its recipients (stops counting past the bound). Scoped by tenant, so another tenant's
    message answers as fast as no message (no timing oracle)."""
    row = conn.execute(
        "SELECT COUNT(*), IFNULL(SUM(attempts), 0) FROM (SELECT attempts FROM recipients"
        " WHERE message_id = (SELECT id FROM messages WHERE queue_id = ? AND tenant_id = ?) LIMIT ?) AS r",  # PostgreSQL: named
        (queue_id, tenant_id, SMALL_RECIPIENTS + 1)).fetchone()
    return row[0] <= SMALL_RECIPIENTS and row[1] <= SMALL_ATTEMPTS


def _status(conn: sqlite3.Connection, queue_id: str, tenant_id: int, usecase_id: int | None, events: int) -> dict[str, Any] | None:
    message = _show(conn, queue_id)
    if message is None or message["tenant_id"] != tenant_id or (usecase_id is not None and message["usecase_id"] != usecase_id):
        return None
    message["events"] = _of_subject(conn, tenant_id, queue_id, events)
    return message


def _explain(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[str]:
    return [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]


class Messages:
    def __init__(self, db: Database):
        self.db = db

    async def page(self, tenant_id: int, *, usecase_id: int | None = None, state: str | None = None,
                   recipient: str | None = None, since: float | None = None, until: float | None = None,
                   cursor: int | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Messages newest first (created in [since, until), with a recipient in ``state``, to
        ``recipient`` in any case), below the row id ``cursor``; and the id the next page starts below
        (None: no more). With ``state`` or ``recipient`` a page looks at most keyset.SCAN messages."""
        return await self.db.read(_page, tenant_id, usecase_id, state, recipient, since, until, cursor, limit)

    async def status(self, queue_id: str, tenant_id: int, *, usecase_id: int | None = None,
                     events: int = 100) -> dict[str, Any] | None:
        """``store.queue.show``'s message with its newest ``events`` events, from one snapshot (one hop to
        a reader for a big message, none for a small one: the hop costs more than its reads); None
        unless it is the tenant's (and the use case's)."""
        if events <= SMALL_EVENTS and await self.db.read_point(_small, queue_id, tenant_id):
            return await self.db.read_point_snapshot(_status, queue_id, tenant_id, usecase_id, events)
        return await self.db.read(_status, queue_id, tenant_id, usecase_id, events)

    async def plans(self, tenant_id: int, usecase_id: int, queue_id: str) -> dict[str, list[str]]:
        """EXPLAIN QUERY PLAN of the reads a status page and a message list make (tests check the indexes)."""
        def run(conn: sqlite3.Connection) -> dict[str, list[str]]:
            return {
                "status": _explain(conn, "SELECT id FROM messages WHERE queue_id = ?", (queue_id,)),
                "recipients": _explain(conn, "SELECT id FROM recipients WHERE message_id = ?", (1,)),
                "attempts": _explain(conn, "SELECT a.id FROM attempts a JOIN recipients r ON r.id = a.recipient_id"
                                           " WHERE r.message_id = ?", (1,)),
                "events": _explain(conn, SUBJECT_SQL, (queue_id, tenant_id, 100)),
                "list": _explain(conn, _select(["m.tenant_id = ?", "m.id > ?", "m.deleting = 0"]), (tenant_id, 0, 101)),
                "list_usecase": _explain(conn, _select(["m.tenant_id = ?", "m.id > ?", "m.deleting = 0", "m.usecase_id = ?"]),
                                         (tenant_id, 0, usecase_id, 101)),
                "events_usecase": _explain(conn, "SELECT e.id FROM events e WHERE e.tenant_id = ? AND e.id > ?"
                                                 " AND e.usecase_id = ? ORDER BY e.id DESC LIMIT 101", (tenant_id, 0, usecase_id)),
            }
        return await self.db.read(run)
