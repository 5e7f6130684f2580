"""What the delivery scheduler reads and writes: claims, bodies, attempts, outcomes, DSNs.

A worker *claims* due recipients (``claimed_by`` = its token) through the partial index
``recipients_due``, so picking work costs the same with a thousand or a million rows queued. A
claim carries each message's envelope and size, not its body: the scheduler loads bodies with
``bodies`` in small batches, after taking their size from the memory budget. After an attempt,
``record`` writes in one transaction: the attempt rows, each recipient's new state (claim dropped),
the events, and, when recipients failed for good, the DSN message and their ``dsn_sent`` flag. It
may be called several times for one claim (each transaction's accepted recipients at once, the
rest after), each call covering its own recipients. A claim is a lease (``claim_until``, epoch seconds):
its holder renews all of its claims in one write (``renew``) while they are in flight; past the
lease, the next ``claim`` by anyone takes the row over (the dead holder's claim is dropped in the
same transaction, and the row is claimed again by the due order). ``record`` and ``release`` touch
only rows still claimed by the caller's token, so a late record of a claim taken over changes
nothing (its ids come back in ``ignored``). A token is ``<node>:<pid>:<random>`` (gateway/node.py):
at start a node releases its own node's claims (``release_node``: one daemon per state dir, so they
are all stale then), a parent whose worker died those of that process (``release_process``); other
nodes' claims go only by expiry.

Facts, not decisions: whether a deferred recipient is now held comes from ``gateway.holds``; a
message deleted by an operator while in flight (``deleting``) loses its recipients as their
outcomes are recorded or their claims released.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import holds
from ..holds import covering
from ..suppression import Feedback
from ..node import node_prefix, process_prefix
from .db import Database
from .events import append_event
from .queue import NewMessage, _put, drop_deleted, pauses
from .suppressions import apply_feedback

# Same terms as the partial index's WHERE, so SQLite can use it; INDEXED BY pins it, because the planner
# otherwise prefers recipients_by_state (0006) and sorts every deferred row (checked with EXPLAIN).
_DUE = "state IN ('pending', 'deferred') AND claimed_by IS NULL"
# Seconds a claim lasts unless renewed (delivery.claim_lease is the daemon's; this, callers that give none).
CLAIM_LEASE = 120.0
# Claims whose lease ran out, through recipients_claimed (0031: claim_until first): one seek that finds
# nothing while every holder renews, so the claim costs what it did without leases.
_EXPIRED = "claimed_by IS NOT NULL AND claim_until < ?"
# Most expired claims one claim takes over (bounds the write; the rest go at the next claim).
TAKEOVER_BATCH = 1000


class Claimed(list):
    """The claimed rows, and ``taken_over``: {dead token: claims of it this claim dropped}."""

    taken_over: dict[str, int]


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One recipient's result of one attempt, as the scheduler decided it."""

    recipient_id: int
    state: str                   # delivered | deferred | bounced | held | suppressed (found on the list just before sending)
    code: int | None = None
    enhanced: str = ""
    reply: str = ""
    remote: str = ""
    duration: float = 0.0
    next_attempt_at: float = 0.0  # deferred: when to try again
    hold_reason: str = ""
    attempted: bool = True        # False: no remote was asked (held before sending): no attempts row
    event: dict[str, Any] = field(default_factory=dict)  # extra event fields (rcpt, delay...)
    bounce_class: str = ""        # gateway/feedback/classify.py class of a failed attempt ('' when delivered)
    class_reason: str = ""        # the classifier rule that chose it
    feedback: Feedback | None = None  # what this outcome does to the suppression list, applied in the same write


@dataclass(frozen=True, kw_only=True)
class Dsn:
    """A DSN to queue in the same write, covering ``recipient_ids``."""

    message: NewMessage
    recipient_ids: Sequence[int]
    original_queue_id: str
    tenant_id: int


def _take_over(conn: sqlite3.Connection, now: float) -> dict[str, int]:
    """Drop the claims whose lease ran out (their holder stopped renewing: it died or hangs); the rows
    are due again. {dead token: count}."""
    expired = conn.execute(
        f"SELECT id, claimed_by FROM recipients INDEXED BY recipients_claimed WHERE {_EXPIRED} LIMIT ?",
        (now, TAKEOVER_BATCH),
    ).fetchall()
    if not expired:
        return {}
    by_token: dict[str, list[int]] = {}
    for rid, holder in expired:
        by_token.setdefault(holder, []).append(rid)
    for holder, ids in by_token.items():
        _release(conn, holder, ids)
    return {holder: len(ids) for holder, ids in by_token.items()}


def _claim(conn: sqlite3.Connection, token: str, now: float, limit: int, until: float | None = None) -> Claimed:
    until = now + CLAIM_LEASE if until is None else until
    out = Claimed()
    out.taken_over = _take_over(conn, now)
    # "claimed_by IS NULL" outside the subquery too: a database that lets two claims run at once
    # (PostgreSQL, READ COMMITTED) checks it again on the row it waited for, so the loser skips it.
    rows = conn.execute(
        f"UPDATE recipients SET claimed_by = ?, claim_until = ? WHERE claimed_by IS NULL AND id IN"
        f" (SELECT id FROM recipients INDEXED BY recipients_due WHERE {_DUE} AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
        f" RETURNING id, message_id, rcpt, domain, attempts",
        (token, until, now, limit),
    ).fetchall()
    if not rows:
        return out
    msg_ids = sorted({r["message_id"] for r in rows})
    messages: dict[int, dict[str, Any]] = {}
    index: dict[int, int] = {}
    for i in range(0, len(msg_ids), 500):
        chunk = msg_ids[i:i + 500]
        marks = ','.join('?' * len(chunk))
        for m in conn.execute(
            "SELECT id, queue_id, tenant_id, usecase_id, mail_from, message_id, size, created_at, expires_at, held, hold_reason"
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
    for r in rows:
        rec = dict(r)
        rec["index"] = index[r["id"]]
        rec["message"] = messages[r["message_id"]]
        out.append(rec)
    return out


def _bodies(conn: sqlite3.Connection, message_ids: Sequence[int]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for i in range(0, len(message_ids), 500):
        chunk = list(message_ids[i:i + 500])
        out.update(conn.execute(f"SELECT id, body FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk).fetchall())
    return out


def _drop_released_deleted(conn: sqlite3.Connection) -> None:
    for (msg_id,) in conn.execute("SELECT id FROM messages WHERE deleting = 1").fetchall():
        drop_deleted(conn, msg_id)


_UNCLAIM = "UPDATE recipients SET claimed_by = NULL, claim_until = NULL WHERE claimed_by IS NOT NULL"


def _release(conn: sqlite3.Connection, token: str | None, ids: Sequence[int] | None, prefix: str | None = None) -> int:
    if ids is not None:
        n = 0
        for i in range(0, len(ids), 500):
            chunk = list(ids[i:i + 500])
            n += conn.execute(f"{_UNCLAIM} AND claimed_by = ? AND id IN ({','.join('?' * len(chunk))})", (token, *chunk)).rowcount
    elif prefix is not None:
        # substr, not LIKE or a range: a node id may hold LIKE's wildcards, and PostgreSQL's collations
        # do not order ':' where a range would need it. The partial index bounds the scan to claimed rows.
        n = conn.execute(f"{_UNCLAIM} AND substr(claimed_by, 1, ?) = ?", (len(prefix), prefix)).rowcount
    elif token is None:
        n = conn.execute(_UNCLAIM).rowcount
    else:
        n = conn.execute(f"{_UNCLAIM} AND claimed_by = ?", (token,)).rowcount
    if n:
        _drop_released_deleted(conn)  # a released row of a deleted message must not become due
    return n


def _hold_now(conn: sqlite3.Connection, recipient_id: int, pause_list: list[holds.Pause]) -> str:
    """An operator hold or a pause that came while this recipient was in flight skipped it (claimed
    rows are not touched): the reason it takes effect now, or ''."""
    held, tenant_id, usecase_id = conn.execute(
        "SELECT m.held, r.tenant_id, r.usecase_id FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.id = ?",
        (recipient_id,),
    ).fetchone()
    return holds.hold_reason(operator_held=bool(held), pauses=covering(pause_list, tenant_id, usecase_id))


def _record(conn: sqlite3.Connection, token: str, tenant_id: int, queue_id: str, outcomes: Sequence[Outcome],
            dsn: Dsn | None, now: float) -> dict[str, Any]:
    recorded: list[int] = []
    ignored: list[int] = []
    pause_list: list[holds.Pause] | None = None
    msg_row = conn.execute("SELECT id, deleting, usecase_id, mail_from FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()
    deleting = msg_row is not None and msg_row["deleting"] == 1
    message = None if msg_row is None else (msg_row["usecase_id"], msg_row["mail_from"] != "")   # the events' use case
    for o in outcomes:
        updated = conn.execute(
            "UPDATE recipients SET state = ?, hold_reason = ?, attempts = attempts + ?, next_attempt_at = ?,"
            " claimed_by = NULL, claim_until = NULL, last_code = ?, last_enhanced = ?, last_reply = ?, updated_at = ?"
            " WHERE id = ? AND claimed_by = ?",
            (o.state, o.hold_reason, 1 if o.attempted else 0, o.next_attempt_at if o.state == "deferred" else now,
             o.code, o.enhanced, o.reply, now, o.recipient_id, token),
        ).rowcount
        if not updated:
            ignored.append(o.recipient_id)  # released meanwhile, or taken over after its lease: not ours to record
            continue
        recorded.append(o.recipient_id)
        if o.attempted:
            conn.execute(
                "INSERT INTO attempts (recipient_id, at, duration, outcome, code, enhanced, reply, remote, class, class_reason)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (o.recipient_id, now, o.duration, o.state, o.code, o.enhanced, o.reply, o.remote, o.bounce_class, o.class_reason),
            )
        data = {"code": o.code, "enhanced": o.enhanced, "reply": o.reply, "remote": o.remote, **o.event}
        if o.bounce_class:
            data["class"], data["class_reason"] = o.bounce_class, o.class_reason
        if o.feedback is not None and not deleting:
            apply_feedback(conn, tenant_id, o.feedback, now)
        if o.state == "deferred":
            data["next_attempt_at"] = o.next_attempt_at
        if o.state == "held":
            data["reason"] = o.hold_reason
        append_event(conn, tenant_id, o.state, queue_id, data, message=message)
        if o.state == "deferred" and not deleting:
            if pause_list is None:
                pause_list = pauses(conn)
            hold = _hold_now(conn, o.recipient_id, pause_list)
            if hold:
                conn.execute("UPDATE recipients SET state = 'held', hold_reason = ? WHERE id = ?", (hold, o.recipient_id))
                append_event(conn, tenant_id, "held", queue_id, {"rcpt": o.event.get("rcpt"), "reason": hold, "recipients": 1},
                             message=message)
    result: dict[str, Any] = {"dsn": None, "recorded": recorded, "ignored": ignored}
    if deleting:
        # The operator deleted it while these were in flight: their outcome is on record (events),
        # now they go, and no DSN is sent for a message the operator removed.
        drop_deleted(conn, msg_row["id"])
        return result
    if dsn is not None:
        ids = [i for i in dsn.recipient_ids if i in recorded]
        # Exactly one DSN per failed recipient: rows already covered are skipped, and if none is left
        # no DSN is queued at all.
        fresh = [i for i in ids if conn.execute("SELECT dsn_sent FROM recipients WHERE id = ?", (i,)).fetchone()[0] == 0]
        if fresh:
            put = _put(conn, dsn.message)
            conn.executemany("UPDATE recipients SET dsn_sent = 1 WHERE id = ?", [(i,) for i in fresh])
            append_event(conn, dsn.tenant_id, "dsn_sent", dsn.original_queue_id,
                         {"dsn_queue_id": dsn.message.queue_id, "to": dsn.message.recipients[0], "recipients": len(fresh)},
                         message=message)
            result["dsn"] = put["queue_id"] if isinstance(put, dict) else dsn.message.queue_id
    return result


def _renew(conn: sqlite3.Connection, token: str, until: float) -> int:
    return conn.execute("UPDATE recipients SET claim_until = ? WHERE claimed_by = ?", (until, token)).rowcount


def _routing(conn: sqlite3.Connection, usecase_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT u.id, u.tenant_id, u.name, u.route, u.kind, u.unsubscribe_scope, u.list_unsubscribe, d.name AS domain,"
        " d.id AS domain_id FROM usecases u"
        " JOIN domains d ON d.id = u.domain_id WHERE u.id = ?",
        (usecase_id,),
    ).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["keys"] = [dict(k) for k in conn.execute(
        "SELECT selector, algorithm, key_path, private_pem FROM dkim_keys WHERE domain_id = ? AND state = 'active' "
        "ORDER BY algorithm DESC, id",
        (row["domain_id"],),
    )]
    return out


def _due_plan(conn: sqlite3.Connection) -> list[str]:
    now = time.time()
    due = conn.execute(f"EXPLAIN QUERY PLAN SELECT id FROM recipients INDEXED BY recipients_due WHERE {_DUE} AND next_attempt_at <= ?"
                       " ORDER BY next_attempt_at LIMIT 100", (now,))
    expired = conn.execute(f"EXPLAIN QUERY PLAN SELECT id, claimed_by FROM recipients INDEXED BY recipients_claimed WHERE {_EXPIRED}"
                           " LIMIT 100", (now,))
    return [r[-1] for r in due] + [r[-1] for r in expired]


class Delivery:
    def __init__(self, db: Database):
        self.db = db

    async def claim(self, token: str, limit: int, now: float | None = None, *, lease: float = CLAIM_LEASE) -> Claimed:
        """Claim up to ``limit`` due recipients for ``lease`` seconds (``renew`` extends it); each comes
        with its message's envelope and size (no body). Claims of others whose lease ran out are taken
        over first (``Claimed.taken_over``)."""
        now = time.time() if now is None else now
        return await self.db.write(_claim, token, now, limit, now + lease)

    async def renew(self, token: str, until: float) -> int:
        """Extend every claim of this token to ``until``, in one write; the number of claims it holds."""
        return await self.db.write(_renew, token, until)

    async def bodies(self, message_ids: Sequence[int]) -> dict[int, bytes]:
        """{message row id: body} of these messages (a message deleted meanwhile is absent)."""
        return await self.db.read(_bodies, list(message_ids))

    async def release_all(self) -> int:
        """Drop every claim, of every node (tools only: a live node's claims go by their lease)."""
        return await self.db.write(_release, None, None)

    async def release_node(self, node: str) -> int:
        """Drop every claim of this node's processes (at its start: they are all gone)."""
        return await self.db.write(_release, None, None, node_prefix(node))

    async def release_process(self, node: str, pid: int) -> int:
        """Drop every claim of one process of this node (its parent saw it die), whatever its token."""
        return await self.db.write(_release, None, None, process_prefix(node, pid))

    async def release(self, token: str, ids: Sequence[int] | None = None) -> int:
        """Drop this worker token's claims (all, or the given recipient ids)."""
        return await self.db.write(_release, token, list(ids) if ids is not None else None)

    async def record(self, token: str, tenant_id: int, queue_id: str, outcomes: Sequence[Outcome],
                     dsn: Dsn | None = None, now: float | None = None) -> dict[str, Any]:
        """Attempts, states, events and the DSN, in one commit; returns {"dsn": queue id or None}."""
        return await self.db.write(_record, token, tenant_id, queue_id, list(outcomes), dsn, time.time() if now is None else now)

    async def routing(self, usecase_id: int) -> dict[str, Any] | None:
        """{route, domain, tenant_id, keys: [{selector, algorithm, key_path, private_pem}]} for a use case."""
        return await self.db.read(_routing, usecase_id)

    async def due_plan(self) -> list[str]:
        """EXPLAIN QUERY PLAN of the due-work query, then of the expired-claims probe (benchmarks and
        tests check they use their indexes)."""
        return await self.db.read(_due_plan)
