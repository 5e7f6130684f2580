"""The inbound spool: every received message, written before the MX answers 250 or the poller
changes the mailbox (migration 0015).

``spool`` takes one received message as one or more ``Spooled`` rows (one per tenant the envelope
reaches, each with only that tenant's recipients) and commits them together in the writer's group
commit: when it returns the message is on disk. A spooled row appends no event: every row ends in
a ``received`` or an ``inbound_held`` event, and the MX logs each accepted message
(``inbound_spooled``); an event here was one more insert per message (and, for a tenant with a
catch-all webhook, one more POST) on the MX's hot path for nothing those do not say. The raw
bytes of a message over ``BOUND_RAW`` go through a blob handle into a zeroblob (as the outbound
queue does), so a large message is not kept alive by a cached statement's bindings; a smaller one
is bound in the INSERT.

The processor reads rows in state 'spooled' (``spooled``) and ends each one with ``finish``
(state 'processed', what it found, its attachments and the ``received`` event, in one write) or
``hold`` (state 'held' with the reason: nothing is dropped). The ``received`` event (subject: the
inbound id; data: kind, thread, parent, use case and address ids) is what downstream delivery to
the tenant's application (webhook, forward) starts from.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotFound
from .db import Database
from .events import append_event
from .threads import record_in

SOURCES = ("mx", "imap", "pop3")


@dataclass(frozen=True, kw_only=True)
class Spooled:
    inbound_id: str                     # queue.QueueIds().new(): sorts by arrival
    source: str                         # one of SOURCES
    raw: bytes                          # the message as received (CRLF line ends)
    tenant_id: int | None = None        # None: the gateway's own addresses, resolved by the processor
    recipients: Sequence[str] = ()      # this tenant's envelope recipients
    mail_from: str = ""
    client: str = ""
    helo: str = ""
    connector_id: int | None = None
    header_message_id: str = ""
    auth_results: str = ""
    now: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")


BOUND_RAW = 65536   # a message up to this size is bound in the INSERT; a larger one goes through a blob handle

_INSERT = ("INSERT INTO inbound_messages (inbound_id, source, connector_id, tenant_id, client, helo, mail_from, recipients,"
           " size, sha256, header_message_id, auth_results, received_at, raw)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {raw})")


def _spool_one(conn: sqlite3.Connection, s: Spooled) -> int:
    # A small message is bound: one statement instead of three (a sixth of the writer's time per
    # message on the MX); the cached statement keeps at most BOUND_RAW bytes alive until its next use.
    small = len(s.raw) <= BOUND_RAW
    cur = conn.execute(
        _INSERT.format(raw="?" if small else "zeroblob(?)"),
        (s.inbound_id, s.source, s.connector_id, s.tenant_id, s.client, s.helo, s.mail_from, json.dumps(list(s.recipients)),
         len(s.raw), hashlib.sha256(s.raw).hexdigest(), s.header_message_id, s.auth_results, s.now,
         s.raw if small else len(s.raw)),
    )
    row_id = cur.lastrowid
    if not small:
        with conn.blobopen("inbound_messages", "raw", row_id) as blob:
            blob.write(s.raw)
    return row_id


def _spool(conn: sqlite3.Connection, items: Sequence[Spooled]) -> list[int]:
    return [_spool_one(conn, s) for s in items]


def _get(conn: sqlite3.Connection, inbound_id: str, tenant_id: int | None) -> dict[str, Any]:
    sql = "SELECT * FROM inbound_messages WHERE inbound_id = ?"
    args: tuple[Any, ...] = (inbound_id,)
    if tenant_id is not None:
        sql += " AND tenant_id = ?"
        args += (tenant_id,)
    row = conn.execute(sql, args).fetchone()
    if row is None:
        raise NotFound(f"no inbound message {inbound_id}")
    d = dict(row)
    d["recipients"] = json.loads(d["recipients"])
    d["flags"] = json.loads(d["flags"])
    d["summary"] = json.loads(d["summary"])
    return d


@dataclass(frozen=True, kw_only=True)
class Attachment:
    position: int            # order of the depth-first walk
    filename: str            # sanitised; the Content-ID for an inline cid: image
    content_type: str
    size: int
    sha256: str              # names the content-addressed file under <state>/attachments
    content_id: str = ""
    inline: bool = False


@dataclass(frozen=True, kw_only=True)
class Processed:
    """What the processor found in one spooled message."""
    kind: str                            # message, reply, dsn, arf, auto_reply, unsubscribe
    tenant_id: int | None = None         # set when the processor resolved a row spooled without one
    usecase_id: int | None = None
    address_id: int | None = None
    thread_id: str = ""
    parent_message_id: str = ""
    flags: Sequence[str] = ()
    from_address: str = ""
    subject: str = ""
    summary: dict[str, Any] = field(default_factory=dict)   # bodies, stripped reply, report, auth, defects
    attachments: Sequence[Attachment] = ()
    raw: bytes | Sequence[bytes | memoryview] | None = None   # the stored copy when it changed (Authentication-
                                         # Results added), whole or in pieces written one after another
    message_id: str = ""                 # its own Message-ID, recorded in message_ids (direction 'in') when
                                         # set with a tenant and a thread, so outbound replies thread
    events: Sequence[tuple[str, dict[str, Any]]] = ()   # more events of the row's tenant (thread_refused...)
    now: float = field(default_factory=time.time)


def _spooled(conn: sqlite3.Connection, after_id: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, inbound_id, source, connector_id, tenant_id, client, helo, mail_from, recipients, size,"
        " header_message_id, auth_results, received_at FROM inbound_messages"
        " WHERE state = 'spooled' AND id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["recipients"] = json.loads(d["recipients"])
        out.append(d)
    return out


RAW_CHUNK = 1 << 20


def _raw(conn: sqlite3.Connection, row_id: int) -> bytearray:
    # Read through a blob handle into one buffer: a SELECT of the column would hold SQLite's copy
    # and Python's at once (two times a 25 MB message, measured).
    row = conn.execute("SELECT size FROM inbound_messages WHERE id = ?", (row_id,)).fetchone()
    if row is None:
        raise NotFound(f"no inbound row {row_id}")
    with conn.blobopen("inbound_messages", "raw", row_id, readonly=True) as blob:
        buf = bytearray(len(blob))
        for offset in range(0, len(buf), RAW_CHUNK):
            buf[offset:offset + RAW_CHUNK] = blob.read(RAW_CHUNK)
    return buf


def _finish(conn: sqlite3.Connection, row_id: int, p: Processed) -> bool:
    row = conn.execute("SELECT inbound_id, tenant_id FROM inbound_messages WHERE id = ? AND state = 'spooled'", (row_id,)).fetchone()
    if row is None:
        return False   # already finished or held (a second processor, a retry): nothing written twice
    tenant_id = p.tenant_id if p.tenant_id is not None else row["tenant_id"]
    fields = ("state = 'processed', processed_at = ?, tenant_id = ?, kind = ?, usecase_id = ?, address_id = ?, thread_id = ?,"
              " parent_message_id = ?, flags = ?, from_address = ?, subject = ?, summary = ?")
    values = (p.now, tenant_id, p.kind, p.usecase_id, p.address_id, p.thread_id, p.parent_message_id, json.dumps(list(p.flags)),
              p.from_address, p.subject, json.dumps(p.summary))
    if p.raw is None:
        # SQLite rewrites the whole record, raw included: two passing copies of a large message in memory.
        conn.execute(f"UPDATE inbound_messages SET {fields} WHERE id = ?", (*values, row_id))
    else:
        # With raw replaced in the same statement the old one is never read, and the new one goes in
        # through a blob handle, piece by piece (measured: +0 MB for 34 MB, against +67 MB otherwise).
        pieces = [p.raw] if isinstance(p.raw, (bytes, bytearray, memoryview)) else list(p.raw)
        size = sum(len(piece) for piece in pieces)
        conn.execute(f"UPDATE inbound_messages SET {fields}, size = ?, raw = zeroblob(?) WHERE id = ?", (*values, size, size, row_id))
        if size:
            with conn.blobopen("inbound_messages", "raw", row_id) as blob:
                for piece in pieces:
                    blob.write(piece)
    conn.executemany(
        "INSERT INTO inbound_attachments (message_id, position, filename, content_type, size, sha256, content_id, inline)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(row_id, a.position, a.filename, a.content_type, a.size, a.sha256, a.content_id, int(a.inline)) for a in p.attachments])
    if p.message_id and p.thread_id and tenant_id is not None:
        record_in(conn, message_id=p.message_id, tenant_id=tenant_id, usecase_id=p.usecase_id, thread_id=p.thread_id,
                  parent=p.parent_message_id, now=p.now)
    for kind, data in p.events:
        append_event(conn, tenant_id, kind, row["inbound_id"], data)
    append_event(conn, tenant_id, "received", row["inbound_id"],
                 {"kind": p.kind, "thread_id": p.thread_id, "parent": p.parent_message_id, "usecase_id": p.usecase_id,
                  "address_id": p.address_id, "from": p.from_address, "flags": list(p.flags)})
    return True


def _hold(conn: sqlite3.Connection, row_id: int, reason: str, now: float) -> bool:
    row = conn.execute("SELECT inbound_id, tenant_id FROM inbound_messages WHERE id = ? AND state = 'spooled'", (row_id,)).fetchone()
    if row is None:
        return False
    conn.execute("UPDATE inbound_messages SET state = 'held', hold_reason = ?, processed_at = ? WHERE id = ?", (reason, now, row_id))
    append_event(conn, row["tenant_id"], "inbound_held", row["inbound_id"], {"reason": reason})
    return True


def _release(conn: sqlite3.Connection, inbound_id: str, tenant_id: int | None) -> dict[str, Any]:
    sql, args = "SELECT id, tenant_id, state, hold_reason FROM inbound_messages WHERE inbound_id = ?", (inbound_id,)
    if tenant_id is not None:
        sql, args = sql + " AND tenant_id = ?", (inbound_id, tenant_id)
    row = conn.execute(sql, args).fetchone()
    if row is None:
        raise NotFound(f"no inbound message {inbound_id}")
    if row["state"] != "held":
        return {"inbound_id": inbound_id, "released": False, "state": row["state"], "was": ""}
    conn.execute("UPDATE inbound_messages SET state = 'spooled', hold_reason = '', processed_at = NULL WHERE id = ?", (row["id"],))
    append_event(conn, row["tenant_id"], "inbound_released", inbound_id, {"reason": row["hold_reason"]})
    return {"inbound_id": inbound_id, "released": True, "state": "spooled", "was": row["hold_reason"]}


def _held(conn: sqlite3.Connection, tenant_id: int | None, limit: int) -> list[dict[str, Any]]:
    sql = "SELECT id, inbound_id, tenant_id, source, hold_reason, received_at, processed_at FROM inbound_messages WHERE state = 'held'"
    args: tuple[Any, ...] = ()
    if tenant_id is not None:
        sql += " AND tenant_id = ?"
        args = (tenant_id,)
    return [dict(r) for r in conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit))]


def _incoming(conn: sqlite3.Connection, connector_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT tenant_id, settings FROM connectors WHERE id = ?", (connector_id,)).fetchone()
    if row is None:
        return None
    incoming = json.loads(row["settings"]).get("incoming") or {}
    return {"tenant_id": row["tenant_id"], "usecase": str(incoming.get("usecase") or ""), "address": str(incoming.get("address") or "")}


def _usecase_named(conn: sqlite3.Connection, tenant_id: int, name: str) -> int | None:
    row = conn.execute("SELECT id FROM usecases WHERE tenant_id = ? AND name = ?", (tenant_id, name)).fetchone()
    return row[0] if row else None


class Inbound:
    def __init__(self, db: Database):
        self.db = db
        self._on_spooled: list[Callable[[], Any]] = []
        self._on_finished: list[Callable[[], Any]] = []

    def on_spooled(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (on the caller's loop) after every committed spool: the daemon wakes the
        processor with it, whichever door (MX, poller) spooled."""
        self._on_spooled.append(callback)

    def on_finished(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` after every committed finish: what starts from the ``received`` event
        (the forwarder) looks at once instead of at its next poll."""
        self._on_finished.append(callback)

    async def spool(self, items: Sequence[Spooled]) -> list[int]:
        """Commit the rows of one received message together; returns their row ids. Raises
        ``StorageFull`` (nothing written) when the disk is below the reserve for new mail."""
        self.db.check_room()
        ids = await self.db.write(_spool, list(items))
        self.notify_spooled()
        return ids

    def notify_spooled(self) -> None:
        """Tell the ``on_spooled`` callbacks that rows were committed (also by the poller's batch spool)."""
        for callback in self._on_spooled:
            callback()

    async def release(self, inbound_id: str, *, tenant_id: int | None = None) -> dict[str, Any]:
        """A held row back to 'spooled' (event inbound_released): the processor takes it again.
        {inbound_id, released, state, was (the hold reason)}; a row that is not held is left as it is (released False)."""
        done = await self.db.write(_release, inbound_id, tenant_id)
        self.notify_spooled()
        return done

    async def held(self, *, tenant_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Held rows with their reasons, oldest first."""
        return await self.db.read(_held, tenant_id, limit)

    async def incoming(self, connector_id: int) -> dict[str, Any] | None:
        """{tenant_id, usecase, address} of a polling connector's ``incoming`` settings (None: deleted)."""
        return await self.db.read(_incoming, connector_id)

    async def usecase_named(self, tenant_id: int, name: str) -> int | None:
        return await self.db.read(_usecase_named, tenant_id, name)

    async def spooled(self, *, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Rows waiting for the processor, oldest first (without their raw bytes: ``raw`` reads one)."""
        return await self.db.read(_spooled, after_id, limit)

    async def raw(self, row_id: int) -> bytearray:
        """The message as stored, in one buffer (bytes-like: a bytearray, so a large one is read once)."""
        return await self.db.read(_raw, row_id)

    def raw_here(self, row_id: int) -> bytearray:
        """``raw`` on the calling thread's own read connection: never on the event loop (a message
        may be 25 MB); the processor's worker thread reads the message it then parses."""
        return self.db.read_now_snapshot(_raw, row_id)

    async def finish(self, row_id: int, processed: Processed) -> bool:
        """Record what the processor found; False when the row was no longer spooled (nothing written)."""
        done = await self.db.write(_finish, row_id, processed)
        if done:
            self.notify_finished()
        return done

    def notify_finished(self) -> None:
        """Tell the ``on_finished`` callbacks that a processed row was committed."""
        for callback in self._on_finished:
            callback()

    async def hold(self, row_id: int, reason: str, *, now: float | None = None) -> bool:
        """Set a row the processor could not handle aside, with the reason (an operator can release it)."""
        return await self.db.write(_hold, row_id, reason, time.time() if now is None else now)

    async def get(self, inbound_id: str, *, tenant_id: int | None = None) -> dict[str, Any]:
        """One spooled or processed message with its raw bytes; ``tenant_id`` scopes the lookup."""
        return await self.db.read(_get, inbound_id, tenant_id)
