"""What the delivery scheduler reads and writes: claims, attempts, outcomes, DSNs.

A worker *claims* due recipients (``claimed_by`` = its token) through the partial index
``recipients_due``, so picking work costs the same with a thousand or a million rows queued. After
an attempt, ``record`` writes in one transaction: the attempt rows, each recipient's new state
(claim dropped), the events, and, when recipients failed for good, the DSN message and their
``dsn_sent`` flag. A crash between claim and record leaves rows claimed by a dead token; the
scheduler's start calls ``release_all`` (one daemon per state dir, so every claim is stale then).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .db import Database
from .events import append_event
from .queue import _PAUSE_COVERS, NewMessage, _put

# Same terms as the partial index's WHERE, so SQLite can use it; INDEXED BY pins it, because the planner
# otherwise prefers recipients_by_state (0006) and sorts every deferred row (checked with EXPLAIN).
_DUE = "state IN ('pending', 'deferred') AND claimed_by IS NULL"


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One recipient's result of one attempt, as the scheduler decided it."""

    recipient_id: int
    state: str                   # delivered | deferred | bounced | held
    code: int | None = None
    enhanced: str = ""
    reply: str = ""
    remote: str = ""
    duration: float = 0.0
    next_attempt_at: float = 0.0  # deferred: when to try again
    hold_reason: str = ""
    attempted: bool = True        # False: no remote was asked (held before sending): no attempts row
    event: dict[str, Any] = field(default_factory=dict)  # extra event fields (rcpt, delay...)


@dataclass(frozen=True, kw_only=True)
class Dsn:
    """A DSN to queue in the same write, covering ``recipient_ids``."""

    message: NewMessage
    recipient_ids: Sequence[int]
    original_queue_id: str
    tenant_id: int


def _claim(conn: sqlite3.Connection, token: str, now: float, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        f"UPDATE recipients SET claimed_by = ? WHERE id IN"
        f" (SELECT id FROM recipients INDEXED BY recipients_due WHERE {_DUE} AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
        f" RETURNING id, message_id, rcpt, domain, attempts",
        (token, now, limit),
    ).fetchall()
    if not rows:
        return []
    msg_ids = sorted({r["message_id"] for r in rows})
    messages: dict[int, dict[str, Any]] = {}
    index: dict[int, int] = {}
    for i in range(0, len(msg_ids), 500):
        chunk = msg_ids[i:i + 500]
        marks = ','.join('?' * len(chunk))
        for m in conn.execute(
            "SELECT id, queue_id, tenant_id, usecase_id, mail_from, message_id, body, created_at, expires_at, held, hold_reason"
            f" FROM messages WHERE id IN ({marks})",
            chunk,
        ):
            messages[m["id"]] = dict(m)
        # VERP needs each recipient's position among its message's rows (gateway/verp.py): one
        # query for the chunk (the recipients_message index, already in id order), not one per row.
        last, n = None, 0
        for rid, mid in conn.execute(f"SELECT id, message_id FROM recipients WHERE message_id IN ({marks}) ORDER BY message_id, id", chunk):
            n = n + 1 if mid == last else 0
            last = mid
            index[rid] = n
    out = []
    for r in rows:
        rec = dict(r)
        rec["index"] = index[r["id"]]
        rec["message"] = messages[r["message_id"]]
        out.append(rec)
    return out


def _release(conn: sqlite3.Connection, token: str | None, ids: Sequence[int] | None) -> int:
    if ids is not None:
        n = 0
        for i in range(0, len(ids), 500):
            chunk = list(ids[i:i + 500])
            n += conn.execute(
                f"UPDATE recipients SET claimed_by = NULL WHERE claimed_by = ? AND id IN ({','.join('?' * len(chunk))})",
                (token, *chunk),
            ).rowcount
        return n
    if token is None:
        return conn.execute("UPDATE recipients SET claimed_by = NULL WHERE claimed_by IS NOT NULL").rowcount
    return conn.execute("UPDATE recipients SET claimed_by = NULL WHERE claimed_by = ?", (token,)).rowcount


def _record(conn: sqlite3.Connection, token: str, tenant_id: int, queue_id: str, outcomes: Sequence[Outcome],
            dsn: Dsn | None, now: float) -> dict[str, Any]:
    recorded = []
    for o in outcomes:
        updated = conn.execute(
            "UPDATE recipients SET state = ?, hold_reason = ?, attempts = attempts + ?, next_attempt_at = ?,"
            " claimed_by = NULL, last_code = ?, last_enhanced = ?, last_reply = ?, updated_at = ?"
            " WHERE id = ? AND claimed_by = ?",
            (o.state, o.hold_reason, 1 if o.attempted else 0, o.next_attempt_at if o.state == "deferred" else now,
             o.code, o.enhanced, o.reply, now, o.recipient_id, token),
        ).rowcount
        if not updated:
            continue  # deleted by an operator meanwhile (or the claim was released): nothing to record
        recorded.append(o.recipient_id)
        if o.attempted:
            conn.execute(
                "INSERT INTO attempts (recipient_id, at, duration, outcome, code, enhanced, reply, remote) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (o.recipient_id, now, o.duration, o.state, o.code, o.enhanced, o.reply, o.remote),
            )
        data = {"code": o.code, "enhanced": o.enhanced, "reply": o.reply, "remote": o.remote, **o.event}
        if o.state == "deferred":
            data["next_attempt_at"] = o.next_attempt_at
        if o.state == "held":
            data["reason"] = o.hold_reason
        append_event(conn, tenant_id, o.state, queue_id, data)
        if o.state == "deferred":
            # An operator hold or a pause that came while this recipient was in flight skipped it
            # (claimed rows are not touched): it takes effect now, or the retry would ignore it.
            hold = conn.execute(
                "SELECT CASE WHEN (SELECT held FROM messages WHERE id = recipients.message_id) = 1 THEN 'operator'"
                f" WHEN EXISTS ({_PAUSE_COVERS}) THEN 'paused' END FROM recipients WHERE id = ?",
                (o.recipient_id,),
            ).fetchone()[0]
            if hold:
                conn.execute("UPDATE recipients SET state = 'held', hold_reason = ? WHERE id = ?", (hold, o.recipient_id))
                append_event(conn, tenant_id, "held", queue_id, {"rcpt": o.event.get("rcpt"), "reason": hold, "recipients": 1})
    result: dict[str, Any] = {"dsn": None, "recorded": recorded}
    if dsn is not None:
        ids = [i for i in dsn.recipient_ids if i in recorded]
        # Exactly one DSN per failed recipient: rows already covered are skipped, and if none is left
        # no DSN is queued at all.
        fresh = [i for i in ids if conn.execute("SELECT dsn_sent FROM recipients WHERE id = ?", (i,)).fetchone()[0] == 0]
        if fresh:
            put = _put(conn, dsn.message)
            conn.executemany("UPDATE recipients SET dsn_sent = 1 WHERE id = ?", [(i,) for i in fresh])
            append_event(conn, dsn.tenant_id, "dsn_sent", dsn.original_queue_id,
                         {"dsn_queue_id": dsn.message.queue_id, "to": dsn.message.recipients[0], "recipients": len(fresh)})
            result["dsn"] = put["queue_id"] if isinstance(put, dict) else dsn.message.queue_id
    return result


def _routing(conn: sqlite3.Connection, usecase_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT u.id, u.tenant_id, u.name, u.route, d.name AS domain, d.id AS domain_id FROM usecases u"
        " JOIN domains d ON d.id = u.domain_id WHERE u.id = ?",
        (usecase_id,),
    ).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["keys"] = [dict(k) for k in conn.execute(
        "SELECT selector, algorithm, key_path FROM dkim_keys WHERE domain_id = ? AND state = 'active' ORDER BY algorithm DESC, id",
        (row["domain_id"],),
    )]
    return out


def _due_plan(conn: sqlite3.Connection) -> list[str]:
    return [r[-1] for r in conn.execute(
        f"EXPLAIN QUERY PLAN SELECT id FROM recipients INDEXED BY recipients_due WHERE {_DUE} AND next_attempt_at <= ?"
        " ORDER BY next_attempt_at LIMIT 100",
        (time.time(),),
    )]


class Delivery:
    def __init__(self, db: Database):
        self.db = db

    async def claim(self, token: str, limit: int, now: float | None = None) -> list[dict[str, Any]]:
        """Claim up to ``limit`` due recipients; each comes with its message (body included)."""
        return await self.db.write(_claim, token, time.time() if now is None else now, limit)

    async def release_all(self) -> int:
        """Drop every claim (at start: the process that held them is gone)."""
        return await self.db.write(_release, None, None)

    async def release(self, token: str, ids: Sequence[int] | None = None) -> int:
        """Drop this worker token's claims (all, or the given recipient ids)."""
        return await self.db.write(_release, token, list(ids) if ids is not None else None)

    async def record(self, token: str, tenant_id: int, queue_id: str, outcomes: Sequence[Outcome],
                     dsn: Dsn | None = None, now: float | None = None) -> dict[str, Any]:
        """Attempts, states, events and the DSN, in one commit; returns {"dsn": queue id or None}."""
        return await self.db.write(_record, token, tenant_id, queue_id, list(outcomes), dsn, time.time() if now is None else now)

    async def routing(self, usecase_id: int) -> dict[str, Any] | None:
        """{route, domain, tenant_id, keys: [{selector, algorithm, key_path}]} for a use case."""
        return await self.db.read(_routing, usecase_id)

    async def due_plan(self) -> list[str]:
        """EXPLAIN QUERY PLAN of the due-work query (benchmarks and tests check it uses the index)."""
        return await self.db.read(_due_plan)
