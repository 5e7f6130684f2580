"""The outbound queue: messages and their per-recipient state.

``put`` is the durable step behind every 250: the message, its recipients, its Message-ID record
and the 'queued' event commit together in one group commit.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from .db import Database
from .events import append_event


@dataclass(frozen=True, kw_only=True)
class NewMessage:
    queue_id: str
    tenant_id: int
    usecase_id: int
    mail_from: str
    message_id: str              # without <>
    body: bytes                  # prepared, unsigned
    recipients: list[str]
    thread_id: str = ""          # Message-ID that started the thread; defaults to message_id
    client: str = ""
    lifetime: float = 5 * 86400  # seconds until deferred recipients bounce
    hold_reason: str = ""        # non-empty: recipients start 'held' (e.g. 'paused')
    now: float = field(default_factory=time.time)


def recipient_domain(rcpt: str) -> str:
    return rcpt.rpartition("@")[2].lower()


def _put(conn: sqlite3.Connection, m: NewMessage) -> int:
    cur = conn.execute(
        "INSERT INTO messages (queue_id, tenant_id, usecase_id, mail_from, message_id, size, body, client, created_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (m.queue_id, m.tenant_id, m.usecase_id, m.mail_from, m.message_id, len(m.body), m.body, m.client, m.now, m.now + m.lifetime),
    )
    msg_id = cur.lastrowid
    state = "held" if m.hold_reason else "pending"
    conn.executemany(
        "INSERT INTO recipients (message_id, tenant_id, usecase_id, rcpt, domain, state, hold_reason, next_attempt_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(msg_id, m.tenant_id, m.usecase_id, r, recipient_domain(r), state, m.hold_reason, m.now, m.now) for r in m.recipients],
    )
    conn.execute(
        "INSERT OR IGNORE INTO message_ids (message_id, tenant_id, usecase_id, thread_id, queue_id, direction, created_at)"
        " VALUES (?, ?, ?, ?, ?, 'out', ?)",
        (m.message_id, m.tenant_id, m.usecase_id, m.thread_id or m.message_id, m.queue_id, m.now),
    )
    append_event(conn, m.tenant_id, "queued", m.queue_id,
                 {"from": m.mail_from, "recipients": len(m.recipients), "size": len(m.body), "held": bool(m.hold_reason)})
    return msg_id


class Queue:
    def __init__(self, db: Database):
        self.db = db

    async def put(self, message: NewMessage) -> int:
        """Commit the message durably; returns its row id once it is on disk."""
        return await self.db.write(_put, message)
