"""The outbound queue: messages and their per-recipient state, and what operators do to them.

``put`` is the durable step behind every 250: the message, its recipients, its Message-ID record,
the tenant's monthly usage and the 'queued' event commit together in one group commit. Whether the
message starts held by a pause is decided inside that same transaction, so a pause committed a
moment earlier always wins (no window where the listener's view of the pauses is stale).

Recipient states: pending (due at next_attempt_at), deferred (a temporary failure, retried at
next_attempt_at), delivered, bounced, suppressed (on the list when its turn came), held (hold_reason 'paused', 'operator' or why a stage gave up).
Operator actions never touch a recipient while a worker has it claimed: that attempt finishes and
records its own outcome. `delete` of a message in flight deletes what is not claimed and marks the
message ``deleting``; its claimed recipients go once their attempt is recorded (or their claim is
released), so nothing is sent again and nothing recorded about a row that is gone.

Whether a recipient is held (operator, pause) is decided by ``gateway.holds`` on facts read here.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import holds
from ..errors import NotFound
from ..holds import Pause, covering
from .db import Database
from .events import append_event
from .idempotency import Record as Idempotency, earlier, remember

STATES = ("pending", "deferred", "delivered", "bounced", "held", "suppressed")
ACTIVE = ("pending", "deferred")

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# Every two-character string of it, by the 10 bits it encodes: an id is 8 lookups (base64.b32encode
# is Python code in 3.11, with a translate after it, ~4x as slow: measurable on the MX's loop).
_PAIRS = tuple(a + b for a in _B32 for b in _B32)


class QueueIds:
    """Queue ids: 16 characters of Crockford base32, 10 of milliseconds then 6 of randomness.

    They sort by creation time (to the millisecond) and are unique within a process even in the
    same millisecond (the random part counts up); across restarts 30 random bits make a clash
    vanishingly rare, and the UNIQUE constraint would refuse one rather than overwrite.
    """

    def __init__(self) -> None:
        self._last_ms = 0
        self._seq = 0
        # Seeded from the OS once: the random part only has to differ between processes, and a
        # getrandom() call per id releases the GIL, which the store's writer thread then holds
        # (measured: ~5% of the MX listener's loop time under load, scripts/bench_mx.py --profile).
        self._random = random.Random(os.urandom(16))

    def new(self, now: float | None = None) -> str:
        ms = int((time.time() if now is None else now) * 1000)
        if ms <= self._last_ms:
            ms = self._last_ms
            self._seq = (self._seq + 1) & 0x3FFFFFFF
        else:
            self._last_ms = ms
            self._seq = self._random.getrandbits(29)  # room to count up
        value = (ms << 30) | self._seq  # 71 bits in 80: sixteen characters of 5 bits, the highest first
        p = _PAIRS
        return (p[value >> 70] + p[(value >> 60) & 1023] + p[(value >> 50) & 1023] + p[(value >> 40) & 1023]
                + p[(value >> 30) & 1023] + p[(value >> 20) & 1023] + p[(value >> 10) & 1023] + p[value & 1023])


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
    parents: Sequence[str] = ()  # In-Reply-To then References (newest first): the thread is found from these
    client: str = ""
    lifetime: float = 5 * 86400  # seconds until deferred recipients bounce
    hold_reason: str = ""        # non-empty: recipients start 'held' (e.g. 'paused')
    counts_to_quota: bool = True  # False for mail the gateway writes itself (DSNs): not the tenant's usage
    now: float = field(default_factory=time.time)
    event_data: Mapping[str, Any] | None = None   # more for the 'queued' event (the API: source, key, metadata, tags)
    idempotency: Idempotency | None = None        # the API's Idempotency-Key: stored with the message, or its earlier answer


def recipient_domain(rcpt: str) -> str:
    return rcpt.rpartition("@")[2].lower()


def month_of(ts: float) -> str:
    return time.strftime("%Y-%m", time.gmtime(ts))


def pauses(conn: sqlite3.Connection) -> list[Pause]:
    """Every pause in force (a handful of rows): the facts ``holds`` decides on."""
    return [Pause(r[0], r[1], r[2]) for r in conn.execute("SELECT scope, tenant_id, usecase_id FROM pauses")]


def _thread_of(conn: sqlite3.Connection, m: NewMessage) -> tuple[str, str]:
    """(thread id, parent): the thread of the first of the message's parents we have a record of,
    and that parent; else a new thread (the message's own id) and no parent."""
    for parent in m.parents:
        row = conn.execute("SELECT thread_id FROM message_ids WHERE tenant_id = ? AND message_id = ?", (m.tenant_id, parent)).fetchone()
        if row is not None:
            return m.thread_id or row[0], parent
    return m.thread_id or m.message_id, ""


# The ancestors of one recorded message through the parent links, itself first; bounded by depth
# (a cycle of links repeats ids until then, removed by the caller).
_LINEAGE_SQL = """
WITH RECURSIVE up(message_id, parent, depth) AS (
    SELECT message_id, parent, 0 FROM message_ids WHERE tenant_id = ? AND message_id = ?
    UNION ALL
    SELECT p.message_id, p.parent, up.depth + 1 FROM up JOIN message_ids p ON p.tenant_id = ? AND p.message_id = up.parent
    WHERE up.parent != '' AND up.depth < ?
)
SELECT message_id FROM up ORDER BY depth
"""


def lineage(conn: sqlite3.Connection, tenant_id: int, parents: Sequence[str], limit: int) -> list[str]:
    """The conversation above the first of ``parents`` (In-Reply-To, then References newest first)
    that the tenant has a record of, oldest first and ending with it; [] when none is known."""
    if not parents:
        return []
    marks = ", ".join("?" * len(parents))
    known = {r[0] for r in conn.execute(f"SELECT message_id FROM message_ids WHERE tenant_id = ? AND message_id IN ({marks})",
                                        (tenant_id, *parents))}
    first = next((p for p in parents if p in known), None)
    if first is None:
        return []
    chain: list[str] = []
    for (mid,) in conn.execute(_LINEAGE_SQL, (tenant_id, first, tenant_id, limit)):
        if mid in chain:
            break
        chain.append(mid)
    return chain[::-1]


def _put(conn: sqlite3.Connection, m: NewMessage) -> dict[str, Any]:
    if m.idempotency is not None:
        answered = earlier(conn, m.idempotency)
        if answered is not None:   # the key answered already: nothing more is written
            return {"replayed": answered, "queue_id": answered["queue_id"]}
    hold_reason = m.hold_reason or holds.hold_reason(operator_held=False, pauses=covering(pauses(conn), m.tenant_id, m.usecase_id))
    # The body is written through a blob handle into a zeroblob of its size, not bound: Python's
    # sqlite3 resets a cached statement after use but keeps its bindings, so a bound body stayed in
    # memory until the next message (24 MB of RSS after a 24 MB message, measured). The commit
    # still makes two passing copies (the zeroblob is expanded because ``body`` is not the record's
    # last column; a migration moving it there would spare those too).
    # PostgreSQL (pg.py) has no blob handles and keeps no bindings: the body is bound, one statement.
    bound = getattr(conn, "dialect", "sqlite") == "postgresql"
    cur = conn.execute(
        "INSERT INTO messages (queue_id, tenant_id, usecase_id, mail_from, message_id, size, body, client, created_at, expires_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, {'?' if bound else 'zeroblob(?)'}, ?, ?, ?)",
        (m.queue_id, m.tenant_id, m.usecase_id, m.mail_from, m.message_id, len(m.body), m.body if bound else len(m.body),
         m.client, m.now, m.now + m.lifetime),
    )
    msg_id = cur.lastrowid
    if m.body and not bound:
        with conn.blobopen("messages", "body", msg_id) as blob:
            blob.write(m.body)
    state = "held" if hold_reason else "pending"
    conn.executemany(
        "INSERT INTO recipients (message_id, tenant_id, usecase_id, rcpt, domain, state, hold_reason, next_attempt_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(msg_id, m.tenant_id, m.usecase_id, r, recipient_domain(r), state, hold_reason, m.now, m.now) for r in m.recipients],
    )
    thread_id, parent = _thread_of(conn, m)
    conn.execute(
        "INSERT OR IGNORE INTO message_ids (message_id, tenant_id, usecase_id, thread_id, queue_id, direction, created_at, parent)"
        " VALUES (?, ?, ?, ?, ?, 'out', ?, ?)",
        (m.message_id, m.tenant_id, m.usecase_id, thread_id, m.queue_id, m.now, parent),
    )
    if m.counts_to_quota:
        conn.execute(
            "INSERT INTO usage_monthly (tenant_id, month, messages) VALUES (?, ?, 1)"
            " ON CONFLICT (tenant_id, month) DO UPDATE SET messages = messages + 1",
            (m.tenant_id, month_of(m.now)),
        )
    message = (m.usecase_id, m.mail_from != "")
    append_event(conn, m.tenant_id, "queued", m.queue_id,
                 {"from": m.mail_from, "recipients": len(m.recipients), "size": len(m.body), "held": bool(hold_reason),
                  **(m.event_data or {})}, message=message)
    if hold_reason:
        append_event(conn, m.tenant_id, "held", m.queue_id, {"reason": hold_reason, "recipients": len(m.recipients)}, message=message)
    result = {"id": msg_id, "queue_id": m.queue_id, "message_id": m.message_id, "hold_reason": hold_reason, "thread_id": thread_id}
    if m.idempotency is not None:
        remember(conn, m.idempotency, result, m.now)
    return result


# --------------------------------------------------------------------------- reading

# GROUP BY names t.name and u.name too: PostgreSQL takes only grouped columns or ones the key determines.
_LIST_SQL = """
SELECT m.queue_id, m.tenant_id, t.name AS tenant, u.name AS usecase, m.mail_from, m.message_id, m.size,
       m.created_at, m.expires_at, m.client,
       COUNT(r.id) AS recipients,
       SUM(r.state = 'pending') AS pending, SUM(r.state = 'deferred') AS deferred,
       SUM(r.state = 'delivered') AS delivered, SUM(r.state = 'bounced') AS bounced,
       SUM(r.state = 'held') AS held, SUM(r.state = 'suppressed') AS suppressed, MIN(CASE WHEN r.state IN ('pending', 'deferred') THEN r.next_attempt_at END) AS next_attempt_at
FROM messages m
JOIN tenants t ON t.id = m.tenant_id
LEFT JOIN usecases u ON u.id = m.usecase_id
JOIN recipients r ON r.message_id = m.id
WHERE {where}
GROUP BY m.id, t.name, u.name
ORDER BY m.id
LIMIT ?
"""


def state_of(row: dict[str, Any]) -> str:
    """One word for a message: the least-finished state among its recipients."""
    for state in ("held", "deferred", "pending", "bounced", "suppressed", "delivered"):
        if row.get(state):
            return state
    return "empty"


def _list(conn: sqlite3.Connection, tenant_id: int | None, state: str | None, limit: int,
          finished: bool = False) -> list[dict[str, Any]]:
    where, args = ["m.deleting = 0"], []
    if tenant_id is not None:
        where.append("m.tenant_id = ?")
        args.append(tenant_id)
    if state is not None:
        where.append("m.id IN (SELECT message_id FROM recipients WHERE state = ?)")
        args.append(state)
    elif not finished:
        # What is still to do: walks recipients_by_state over open rows only, however many finished.
        where.append("m.id IN (SELECT message_id FROM recipients WHERE state IN ('pending', 'deferred', 'held'))")
    rows = [dict(r) for r in conn.execute(_LIST_SQL.format(where=" AND ".join(where)), (*args, limit))]
    for row in rows:
        row["state"] = state_of(row)
    return rows


def _show(conn: sqlite3.Connection, queue_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT m.id, m.queue_id, m.tenant_id, t.name AS tenant, m.usecase_id, u.name AS usecase, m.mail_from, m.message_id,"
        " m.size, m.client, m.created_at, m.expires_at, m.held, m.hold_reason, i.thread_id,"
        " f.finished_at, f.body_dropped_at"
        " FROM messages m JOIN tenants t ON t.id = m.tenant_id LEFT JOIN usecases u ON u.id = m.usecase_id"
        " LEFT JOIN finished_messages f ON f.message_id = m.id"
        " LEFT JOIN message_ids i ON i.tenant_id = m.tenant_id AND i.message_id = m.message_id"
        " WHERE m.queue_id = ?",
        (queue_id,),
    ).fetchone()
    if row is None:
        return None
    msg = dict(row)
    rcpts = [dict(r) for r in conn.execute(
        "SELECT id, rcpt, state, hold_reason, attempts, next_attempt_at, claimed_by IS NOT NULL AS in_flight,"
        " last_code, last_enhanced, last_reply, updated_at, dsn_sent FROM recipients WHERE message_id = ? ORDER BY id",
        (msg["id"],),
    )]
    attempts: dict[int, list[dict[str, Any]]] = {}
    for a in conn.execute(
        "SELECT a.recipient_id, a.at, a.duration, a.outcome, a.code, a.enhanced, a.reply, a.remote, a.class, a.class_reason FROM attempts a"
        " JOIN recipients r ON r.id = a.recipient_id WHERE r.message_id = ? ORDER BY a.id",
        (msg["id"],),
    ):
        a = dict(a)
        attempts.setdefault(a.pop("recipient_id"), []).append(a)
    for index, r in enumerate(rcpts):
        r["index"] = index
        r["in_flight"] = bool(r["in_flight"])
        r["attempt_log"] = attempts.get(r.pop("id"), [])
    msg["recipients"] = rcpts
    del msg["id"]
    return msg


def _counts(conn: sqlite3.Connection, tenant_id: int | None) -> dict[str, int]:
    counts = dict.fromkeys(STATES, 0)
    if tenant_id is None:
        rows = conn.execute("SELECT state, COUNT(*) FROM recipients GROUP BY state")
    else:
        rows = conn.execute("SELECT state, COUNT(*) FROM recipients WHERE tenant_id = ? GROUP BY state", (tenant_id,))
    for state, n in rows:
        counts[state] = n
    counts["messages"] = conn.execute(
        "SELECT COUNT(*) FROM messages" + (" WHERE tenant_id = ?" if tenant_id is not None else ""),
        () if tenant_id is None else (tenant_id,),
    ).fetchone()[0]
    return counts


# --------------------------------------------------------------------------- operator actions


def _select_messages(conn: sqlite3.Connection, queue_ids: Sequence[str] | None, tenant_id: int | None) -> list[tuple[int, str, int]]:
    """(row id, queue id, tenant id) of the named messages (None: all), narrowed to a tenant."""
    args: list[Any] = []
    where = ["deleting = 0"]  # deleted, waiting only for an attempt in flight to be recorded
    if tenant_id is not None:
        where.append("tenant_id = ?")
        args.append(tenant_id)
    if queue_ids is None:
        return [tuple(r) for r in conn.execute(f"SELECT id, queue_id, tenant_id FROM messages WHERE {' AND '.join(where)} ORDER BY id", args)]
    found = []
    for qid in queue_ids:
        row = conn.execute(f"SELECT id, queue_id, tenant_id FROM messages WHERE queue_id = ? AND {' AND '.join(where)}", (qid, *args)).fetchone()
        if row is not None:
            found.append(tuple(row))
    return found


def _act(conn: sqlite3.Connection, action: str, queue_ids: Sequence[str] | None, tenant_id: int | None,
         now: float) -> dict[str, Any]:
    """Apply one operator action; returns {"changed": {queue_id: recipients changed}, "missing": [...]}."""
    messages = _select_messages(conn, queue_ids, tenant_id)
    found = {qid for _, qid, _ in messages}
    missing = [q for q in (queue_ids or ()) if q not in found]
    if missing:
        # One unknown id refuses the whole request: operators act on exactly what they named.
        raise NotFound(f"not in the queue{' of that tenant' if tenant_id is not None else ''}: {', '.join(missing[:10])}")
    changed: dict[str, int] = {}
    in_flight: dict[str, int] = {}
    for msg_id, qid, tid in messages:
        if action == "hold":
            # Recipients a worker holds right now are held after their attempt (unless delivered).
            busy = conn.execute("SELECT COUNT(*) FROM recipients WHERE message_id = ? AND claimed_by IS NOT NULL"
                                " AND state IN ('pending', 'deferred')", (msg_id,)).fetchone()[0]
            if busy:
                in_flight[qid] = busy
            # An operator hold outranks a pause: resuming does not release it, `release` does.
            n = conn.execute(
                "UPDATE recipients SET state = 'held', hold_reason = 'operator', updated_at = ?"
                " WHERE message_id = ? AND claimed_by IS NULL AND (state IN ('pending', 'deferred')"
                " OR (state = 'held' AND hold_reason = 'paused'))",
                (now, msg_id),
            ).rowcount
            conn.execute("UPDATE messages SET held = 1, hold_reason = 'operator' WHERE id = ?", (msg_id,))
        elif action == "release":
            # Held for any reason but a pause: due now, or back to 'paused' while a pause covers it.
            msg_tenant, msg_usecase = conn.execute("SELECT tenant_id, usecase_id FROM messages WHERE id = ?", (msg_id,)).fetchone()
            reason = holds.hold_reason(operator_held=False, pauses=covering(pauses(conn), msg_tenant, msg_usecase))
            if reason:
                n = conn.execute(
                    "UPDATE recipients SET hold_reason = ?, updated_at = ?"
                    " WHERE message_id = ? AND state = 'held' AND hold_reason != 'paused'",
                    (reason, now, msg_id),
                ).rowcount
            else:
                n = conn.execute(
                    "UPDATE recipients SET state = 'pending', hold_reason = '', next_attempt_at = ?, updated_at = ?"
                    " WHERE message_id = ? AND state = 'held' AND hold_reason != 'paused'",
                    (now, now, msg_id),
                ).rowcount
            conn.execute("UPDATE messages SET held = 0, hold_reason = '' WHERE id = ?", (msg_id,))
        elif action == "retry":
            n = conn.execute(
                "UPDATE recipients SET next_attempt_at = ?, updated_at = ?"
                " WHERE message_id = ? AND state IN ('pending', 'deferred') AND claimed_by IS NULL",
                (now, now, msg_id),
            ).rowcount
        elif action == "delete":
            n = conn.execute("SELECT COUNT(*) FROM recipients WHERE message_id = ?", (msg_id,)).fetchone()[0]
            busy = conn.execute("SELECT COUNT(*) FROM recipients WHERE message_id = ? AND claimed_by IS NOT NULL",
                                (msg_id,)).fetchone()[0]
            if busy:
                # A worker is sending it now: what the remote answers is still recorded, then those
                # recipients go too (see _drop_deleted). Deleting them now would release nothing and
                # resend nothing, but the attempt's outcome would be lost.
                in_flight[qid] = busy
                conn.execute("UPDATE messages SET deleting = 1 WHERE id = ?", (msg_id,))
            drop_deleted(conn, msg_id, everything=not busy)
        else:
            raise ValueError(f"unknown queue action {action!r}")
        changed[qid] = n
        event = {"hold": "held", "release": "released", "retry": "retried", "delete": "deleted"}[action]
        if n or action == "delete":
            append_event(conn, tid, event, qid, {"recipients": n, "by": "operator"})
    return {"changed": changed, "missing": missing, "in_flight": in_flight}


def drop_deleted(conn: sqlite3.Connection, msg_id: int, *, everything: bool = False) -> int:
    """Delete a deleted message's recipients that no worker holds (all of them with ``everything``),
    and the message once none is left. Returns the recipients deleted."""
    claim = "" if everything else " AND claimed_by IS NULL"
    conn.execute(f"DELETE FROM attempts WHERE recipient_id IN (SELECT id FROM recipients WHERE message_id = ?{claim})", (msg_id,))
    n = conn.execute(f"DELETE FROM recipients WHERE message_id = ?{claim}", (msg_id,)).rowcount
    if conn.execute("SELECT 1 FROM recipients WHERE message_id = ? LIMIT 1", (msg_id,)).fetchone() is None:
        conn.execute("DELETE FROM messages WHERE id = ?", (msg_id,))
    return n


def _flush(conn: sqlite3.Connection, tenant_id: int | None, now: float) -> int:
    sql = "UPDATE recipients SET next_attempt_at = ?, updated_at = ? WHERE state = 'deferred' AND claimed_by IS NULL AND next_attempt_at > ?"
    args: list[Any] = [now, now, now]
    if tenant_id is not None:
        sql += " AND tenant_id = ?"
        args.append(tenant_id)
    return conn.execute(sql, args).rowcount


class Queue:
    def __init__(self, db: Database):
        self.db = db

    async def lineage(self, tenant_id: int, parents: Sequence[str], limit: int = 100) -> list[str]:
        """``lineage``: the recorded conversation a new message answers, oldest first (submission
        rebuilds References from it and knows whether the message starts a thread)."""
        if not parents:
            return []
        return await self.db.read(lineage, tenant_id, list(parents), limit)

    async def put(self, message: NewMessage) -> dict[str, Any]:
        """Commit the message durably. Once it is on disk, returns {"id", "queue_id", "hold_reason",
        "thread_id"} (hold_reason 'paused' when a pause held it); {"replayed": the stored answer,
        "queue_id"} and nothing written when its Idempotency-Key was used already. Raises ``StorageFull`` below the
        free-space reserve or when the disk is full: the caller answers "try later"."""
        self.db.check_room()
        return await self.db.write(_put, message)

    async def list(self, *, tenant_id: int | None = None, state: str | None = None, limit: int = 1000,
                   finished: bool = False) -> list[dict[str, Any]]:
        """Messages oldest first: those with a pending, deferred or held recipient, or with ``finished``
        also those every recipient of which is delivered or bounced; ``state`` narrows to one state."""
        return await self.db.read(_list, tenant_id, state, limit, finished)

    async def show(self, queue_id: str) -> dict[str, Any] | None:
        """The message's envelope, its recipients and every attempt; None when unknown."""
        return await self.db.read(_show, queue_id)

    async def counts(self, tenant_id: int | None = None) -> dict[str, int]:
        """Recipients by state, plus the number of messages."""
        return await self.db.read(_counts, tenant_id)

    async def act(self, action: str, queue_ids: Sequence[str] | None, *, tenant_id: int | None = None) -> dict[str, Any]:
        """hold | release | retry | delete the named messages (None: every message, of the tenant if given)."""
        return await self.db.write(_act, action, list(queue_ids) if queue_ids is not None else None, tenant_id, time.time())

    async def flush(self, *, tenant_id: int | None = None) -> int:
        """Make every deferred recipient due now; returns how many."""
        return await self.db.write(_flush, tenant_id, time.time())

    async def monthly_count(self, tenant_id: int, now: float | None = None) -> int:
        """Messages the tenant had accepted this calendar month (UTC)."""
        month = month_of(time.time() if now is None else now)

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT messages FROM usage_monthly WHERE tenant_id = ? AND month = ?", (tenant_id, month)).fetchone()
            return row[0] if row else 0

        return await self.db.read(run)

    async def thread_of(self, tenant_id: int, message_id: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT thread_id FROM message_ids WHERE tenant_id = ? AND message_id = ?", (tenant_id, message_id)).fetchone()
            return row[0] if row else None

        return await self.db.read(run)
