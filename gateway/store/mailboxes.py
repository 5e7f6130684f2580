"""Polled mailboxes: the connectors the poller runs, where each mailbox stands, what is known already
(migration 0019).

``spool`` is the poller's commit: the spooled rows of a batch (``inbound._spool``, the same rows the
MX writes) and the mailbox's new checkpoint (IMAP: UIDVALIDITY and last UID; POP3: the UIDLs) in
one write. When it returns the messages are on disk and the poller may change the mailbox
(``\\Seen``, move, delete); a crash before that only means the same messages are seen again, and
``known`` (by content hash and by Message-ID, per connector) recognises them.

``record`` keeps the outcome of each poll (last error, consecutive failures, backoff) for
`connector show` and `gateway status`. None of it returns a secret except ``incoming``, which the
poller inside the daemon needs to log in.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .db import Database
from .events import append_event
from .inbound import Spooled, _spool


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Where a mailbox stands after a batch. ``uidls``: POP3 UIDLs now handled (spooled or skipped)."""
    mailbox: str
    uidvalidity: int = 0
    last_uid: int = 0
    uidls: Sequence[str] = ()
    duplicates: int = 0
    skipped: Sequence[str] = ()     # what was left on the server, one line each (e.g. "uid 7: 31457280 bytes")


def _incoming(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT c.id, c.tenant_id, t.name AS tenant, c.name, c.kind, c.enabled, c.settings, c.incoming_secret"
        " FROM connectors c JOIN tenants t ON t.id = c.tenant_id"
        " WHERE c.enabled = 1 AND t.enabled = 1 AND json_extract(c.settings, '$.incoming.enabled') = 1"
        " ORDER BY c.id").fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["settings"] = json.loads(d["settings"])
        out.append(d)
    return out


def _checkpoint(conn: sqlite3.Connection, connector_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM mailbox_checkpoints WHERE connector_id = ?", (connector_id,)).fetchone()
    return None if row is None else dict(row)


def _ensure(conn: sqlite3.Connection, connector_id: int) -> None:
    conn.execute("INSERT INTO mailbox_checkpoints (connector_id) VALUES (?) ON CONFLICT (connector_id) DO NOTHING", (connector_id,))


def _spool_batch(conn: sqlite3.Connection, connector_id: int, items: Sequence[Spooled], cp: Checkpoint,
                 tenant_id: int) -> list[int]:
    ids = _spool(conn, items)
    _ensure(conn, connector_id)
    conn.execute(
        "UPDATE mailbox_checkpoints SET mailbox = ?, uidvalidity = ?, last_uid = MAX(CASE WHEN mailbox = ? AND uidvalidity = ?"
        " THEN last_uid ELSE 0 END, ?), fetched = fetched + ?, duplicates = duplicates + ?, skipped = skipped + ?,"
        " last_skipped = CASE WHEN ? != '' THEN ? ELSE last_skipped END WHERE connector_id = ?",
        (cp.mailbox, cp.uidvalidity, cp.mailbox, cp.uidvalidity, cp.last_uid, len(items), cp.duplicates, len(cp.skipped),
         cp.skipped[-1] if cp.skipped else "", cp.skipped[-1] if cp.skipped else "", connector_id))
    conn.executemany("INSERT INTO mailbox_uidls (connector_id, uidl) VALUES (?, ?) ON CONFLICT DO NOTHING",
                     [(connector_id, u) for u in cp.uidls])
    for line in cp.skipped:
        # Left on the server, never silently: the tenant's event stream says so.
        append_event(conn, tenant_id, "inbound_skipped", str(connector_id), {"connector_id": connector_id, "reason": line})
    return ids


def _reset(conn: sqlite3.Connection, connector_id: int, mailbox: str, uidvalidity: int) -> None:
    _ensure(conn, connector_id)
    conn.execute("UPDATE mailbox_checkpoints SET mailbox = ?, uidvalidity = ?, last_uid = 0 WHERE connector_id = ?",
                 (mailbox, uidvalidity, connector_id))
    conn.execute("DELETE FROM mailbox_uidls WHERE connector_id = ?", (connector_id,))


def _record(conn: sqlite3.Connection, connector_id: int, error: str, failures: int, backoff_until: float | None,
            now: float) -> None:
    _ensure(conn, connector_id)
    if error:
        conn.execute("UPDATE mailbox_checkpoints SET last_poll_at = ?, last_error = ?, failures = ?, backoff_until = ?"
                     " WHERE connector_id = ?", (now, error, failures, backoff_until, connector_id))
    else:
        conn.execute("UPDATE mailbox_checkpoints SET last_poll_at = ?, last_ok_at = ?, last_error = '', failures = 0,"
                     " backoff_until = NULL WHERE connector_id = ?", (now, now, connector_id))


def _known(conn: sqlite3.Connection, connector_id: int, tenant_id: int, hashes: Sequence[str],
           message_ids: Sequence[str]) -> tuple[set[str], set[str]]:
    seen_hashes = {r[0] for h in hashes for r in conn.execute(
        "SELECT sha256 FROM inbound_messages WHERE tenant_id = ? AND sha256 = ? AND connector_id = ? LIMIT 1",
        (tenant_id, h, connector_id))}
    seen_ids = {r[0] for m in message_ids if m for r in conn.execute(
        "SELECT header_message_id FROM inbound_messages WHERE connector_id = ? AND header_message_id = ? LIMIT 1",
        (connector_id, m))}
    return seen_hashes, seen_ids


def _uidls(conn: sqlite3.Connection, connector_id: int) -> set[str]:
    return {r[0] for r in conn.execute("SELECT uidl FROM mailbox_uidls WHERE connector_id = ?", (connector_id,))}


def _prune_uidls(conn: sqlite3.Connection, connector_id: int, listed: Sequence[str]) -> int:
    keep = set(listed)
    gone = [(connector_id, u) for u in _uidls(conn, connector_id) if u not in keep]
    conn.executemany("DELETE FROM mailbox_uidls WHERE connector_id = ? AND uidl = ?", gone)
    return len(gone)


class Mailboxes:
    def __init__(self, db: Database):
        self.db = db
        self.on_spooled: Callable[[], Any] = lambda: None

    async def incoming(self) -> list[dict[str, Any]]:
        """Enabled connectors (of enabled tenants) whose incoming settings are enabled, with the
        incoming secret: for the poller inside the daemon only."""
        return await self.db.read(_incoming)

    async def checkpoint(self, connector_id: int) -> dict[str, Any] | None:
        return await self.db.read(_checkpoint, connector_id)

    async def status(self, connector_id: int) -> dict[str, Any] | None:
        """What `connector show` reports (no secrets live in this table)."""
        row = await self.db.read(_checkpoint, connector_id)
        if row is not None:
            row.pop("connector_id")
        return row

    async def known(self, connector_id: int, tenant_id: int, *, hashes: Sequence[str] = (),
                    message_ids: Sequence[str] = ()) -> tuple[set[str], set[str]]:
        """Which of these content hashes and Message-IDs this connector already spooled."""
        return await self.db.read(_known, connector_id, tenant_id, list(hashes), list(message_ids))

    async def spool(self, connector_id: int, tenant_id: int, items: Sequence[Spooled], checkpoint: Checkpoint) -> list[int]:
        """Commit a batch's rows and the mailbox's checkpoint together. Raises ``StorageFull`` (nothing
        written) below the disk reserve, as the MX's spool does."""
        if items:
            self.db.check_room()
        ids = await self.db.write(_spool_batch, connector_id, list(items), checkpoint, tenant_id)
        if items:
            self.on_spooled()   # the processor takes them at once (Store wires it to store.inbound's callbacks)
        return ids

    async def reset(self, connector_id: int, mailbox: str, uidvalidity: int = 0) -> None:
        """Start the checkpoint over (another mailbox, or a changed UIDVALIDITY)."""
        await self.db.write(_reset, connector_id, mailbox, uidvalidity)

    async def record(self, connector_id: int, *, error: str = "", failures: int = 0, backoff_until: float | None = None,
                     now: float | None = None) -> None:
        await self.db.write(_record, connector_id, error, failures, backoff_until, time.time() if now is None else now)

    async def uidls(self, connector_id: int) -> set[str]:
        return await self.db.read(_uidls, connector_id)

    async def prune_uidls(self, connector_id: int, listed: Sequence[str]) -> int:
        """Forget UIDLs the server no longer lists (deleted there): the table stays the mailbox's size."""
        return await self.db.write(_prune_uidls, connector_id, list(listed))
