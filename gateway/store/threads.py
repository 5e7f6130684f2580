"""Message-ID records (table ``message_ids``) as the processor reads and writes them.

Outbound messages record their Message-ID when queued (store/queue.py ``_put``); the processor
records each inbound message's own Message-ID (direction 'in', its thread and the parent it
answers) in the same write that finishes the row (store/inbound.py ``_finish``), so a later
outbound reply threads and its References chain can be rebuilt across directions.

``known`` is the one lookup by Message-ID alone, across tenants (index message_ids_by_id,
migration 0021): thread resolution (gateway/inbound/threads.py) must tell a parent of another
tenant (refused: confused deputy) from an unknown one. What it returns never leaves the processor:
the decision is made on it and only the flag reaches the tenant.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .db import Database

MAX_LOOKUP = 64   # Message-IDs looked up for one message (In-Reply-To plus the newest References)


def known(conn: sqlite3.Connection, message_ids: Sequence[str]) -> list[dict[str, Any]]:
    ids = list(dict.fromkeys(message_ids))[:MAX_LOOKUP]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        "SELECT message_id, tenant_id, usecase_id, thread_id, direction, queue_id FROM message_ids INDEXED BY message_ids_by_id"
        f" WHERE message_id IN ({marks})", ids).fetchall()
    return [dict(r) for r in rows]


def record_in(conn: sqlite3.Connection, *, message_id: str, tenant_id: int, usecase_id: int | None, thread_id: str,
              parent: str, now: float) -> None:
    """The inbound message's own record; an id the tenant already has (a resent copy, our own
    outbound id echoed back) keeps its first record."""
    conn.execute(
        "INSERT OR IGNORE INTO message_ids (message_id, tenant_id, usecase_id, thread_id, queue_id, direction, created_at, parent)"
        " VALUES (?, ?, ?, ?, NULL, 'in', ?, ?)", (message_id, tenant_id, usecase_id, thread_id, now, parent))


def _outbound(conn: sqlite3.Connection, message_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT message_id, tenant_id, usecase_id, thread_id, queue_id FROM message_ids INDEXED BY message_ids_by_id"
        " WHERE message_id = ? AND direction = 'out'", (message_id,)).fetchall()
    return [dict(r) for r in rows]


class Threads:
    def __init__(self, db: Database):
        self.db = db

    async def known(self, message_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Every record of these Message-IDs, any tenant: {message_id, tenant_id, usecase_id, thread_id,
        direction, queue_id}. For the processor's decision only; never shown to a tenant."""
        return await self.db.read(known, list(message_ids))

    def known_here(self, message_ids: Sequence[str]) -> list[dict[str, Any]]:
        """``known`` on the calling thread's own read connection: for the processor's worker thread,
        which looks the parent up right after parsing instead of handing the loop another hop."""
        return self.db.read_now_snapshot(known, list(message_ids))

    async def outbound(self, message_id: str) -> list[dict[str, Any]]:
        """Our outbound messages with this Message-ID (a returned message named in a DSN or ARF)."""
        return await self.db.read(_outbound, message_id)
