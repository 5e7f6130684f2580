"""The inbound spool: every received message, written before the MX answers 250 or the poller
changes the mailbox (migration 0015).

``spool`` takes one received message as one or more ``Spooled`` rows (one per tenant the envelope
reaches, each with only that tenant's recipients) and commits them together, with one
``inbound_spooled`` event per row, in the writer's group commit: when it returns the message is on
disk. The raw bytes go through a blob handle into a zeroblob (as the outbound queue does), so a large
message is not kept alive by a cached statement's bindings.

What happens next is the processor's (it reads rows in state 'spooled' and fills the processed
columns); this module only promises that a spooled row is never lost and never written twice by
one ``spool`` call.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import NotFound
from .db import Database
from .events import append_event

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


def _spool_one(conn: sqlite3.Connection, s: Spooled) -> int:
    cur = conn.execute(
        "INSERT INTO inbound_messages (inbound_id, source, connector_id, tenant_id, client, helo, mail_from, recipients,"
        " size, sha256, header_message_id, auth_results, received_at, raw)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, zeroblob(?))",
        (s.inbound_id, s.source, s.connector_id, s.tenant_id, s.client, s.helo, s.mail_from, json.dumps(list(s.recipients)),
         len(s.raw), hashlib.sha256(s.raw).hexdigest(), s.header_message_id, s.auth_results, s.now, len(s.raw)),
    )
    row_id = cur.lastrowid
    if s.raw:
        with conn.blobopen("inbound_messages", "raw", row_id) as blob:
            blob.write(s.raw)
    append_event(conn, s.tenant_id, "inbound_spooled", s.inbound_id,
                 {"source": s.source, "size": len(s.raw), "recipients": len(s.recipients)})
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


class Inbound:
    def __init__(self, db: Database):
        self.db = db

    async def spool(self, items: Sequence[Spooled]) -> list[int]:
        """Commit the rows of one received message together; returns their row ids. Raises
        ``StorageFull`` (nothing written) when the disk is below the reserve for new mail."""
        self.db.check_room()
        return await self.db.write(_spool, list(items))

    async def get(self, inbound_id: str, *, tenant_id: int | None = None) -> dict[str, Any]:
        """One spooled or processed message with its raw bytes; ``tenant_id`` scopes the lookup."""
        return await self.db.read(_get, inbound_id, tenant_id)
