"""Retention: the batches the sweeper (gateway/sweeper.py) runs to age rows out.

Which rows are old enough is the sweeper's decision: each function takes a ``cutoff`` time and
touches only rows older than it. What a batch may cost is bounded here: at most ``max_rows`` rows
(and, where bodies are freed, about ``max_bytes`` of them) per write, found through an index, so a
batch costs the same on a store of a thousand messages or ten million and never holds the writer
for long. Each returns {"rows": n, "bytes": b, "more": bool, "seconds": time spent in the writer}.

    bodies    finished messages (finished_messages, migration 0008): the body becomes empty
    messages  finished messages: the row, its recipients and their attempts (its Message-ID record
              in message_ids stays longer: replies months later still find their thread)
    attempts  attempt rows, finished or not (the recipient keeps its last reply and attempt count)
    events    event rows
    threads   Message-ID records (message_ids), the last trace of a message
    inbound   processed inbound rows (received mail) with their attachment rows; held and spooled
              rows are never swept. The batch returns the sha256 of each attachment it dropped that
              no row references any more (``files``): the sweeper removes those files
    suppressions  suppression entries that expired before the cutoff (soft-bounce ones), and
              soft-failure counts (soft_bounces) not touched since it; both through an index on the time

Attempts, events and Message-ID records are appended in time order, so the rows past a cutoff are a prefix of their
rowid order: a batch reads the first ``max_rows`` rows by id and deletes those older than the
cutoff. When one of them is newer, the prefix is done (no index on their times to maintain on every
insert, and no scan of the rest of the table when nothing is due).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from .db import Database


def _done(started: float, rows: int, more: bool, nbytes: int = 0) -> dict[str, Any]:
    return {"rows": rows, "bytes": nbytes, "more": more, "seconds": time.perf_counter() - started}


def _marks(ids: list[int]) -> str:
    return ",".join("?" * len(ids))


def _within(candidates: list[Any], max_bytes: int) -> tuple[list[int], int]:
    """The leading (id, size) candidates whose sizes fit in ``max_bytes`` (at least one)."""
    ids, nbytes = [], 0
    for row_id, size in candidates:
        if ids and nbytes + size > max_bytes:
            break
        ids.append(row_id)
        nbytes += size
    return ids, nbytes


def _drop_bodies(conn: sqlite3.Connection, cutoff: float, max_rows: int, max_bytes: int, now: float) -> dict[str, Any]:
    started = time.perf_counter()
    # size sits before body in the row: reading it does not walk the body's overflow pages.
    candidates = conn.execute(
        "SELECT f.message_id, m.size FROM finished_messages f INDEXED BY finished_bodies JOIN messages m ON m.id = f.message_id"
        " WHERE f.body_dropped_at IS NULL AND f.finished_at < ? ORDER BY f.finished_at LIMIT ?",
        (cutoff, max_rows),
    ).fetchall()
    ids, nbytes = _within(candidates, max_bytes)
    if ids:
        conn.execute(f"UPDATE messages SET body = X'' WHERE id IN ({_marks(ids)})", ids)
        conn.execute(f"UPDATE finished_messages SET body_dropped_at = ? WHERE message_id IN ({_marks(ids)})", (now, *ids))
    return _done(started, len(ids), len(ids) < len(candidates) or len(candidates) == max_rows, nbytes)


def _delete_messages(conn: sqlite3.Connection, cutoff: float, max_rows: int, max_bytes: int) -> dict[str, Any]:
    started = time.perf_counter()
    candidates = conn.execute(
        "SELECT f.message_id, f.body_dropped_at IS NULL AS has_body, m.size,"
        " (SELECT COUNT(*) FROM recipients r WHERE r.message_id = f.message_id) AS recipients"
        " FROM finished_messages f INDEXED BY finished_by_age JOIN messages m ON m.id = f.message_id"
        " WHERE f.finished_at < ? ORDER BY f.finished_at LIMIT ?",
        (cutoff, max_rows),
    ).fetchall()
    # A message weighs one row per recipient (their attempts go with them) and its body, if still there.
    ids, rows, nbytes = [], 0, 0
    for message_id, has_body, size, recipients in candidates:
        if ids and (rows + 1 + recipients > max_rows or nbytes + (size if has_body else 0) > max_bytes):
            break
        ids.append(message_id)
        rows += 1 + recipients
        nbytes += size if has_body else 0
    if ids:
        marks = _marks(ids)
        conn.execute(f"DELETE FROM attempts WHERE recipient_id IN (SELECT id FROM recipients WHERE message_id IN ({marks}))", ids)
        conn.execute(f"DELETE FROM recipients WHERE message_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM finished_messages WHERE message_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
    return _done(started, len(ids), len(ids) < len(candidates) or len(candidates) == max_rows, nbytes)


def _delete_prefix(conn: sqlite3.Connection, table: str, time_column: str, cutoff: float, max_rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    head = conn.execute(f"SELECT rowid, {time_column} FROM {table} ORDER BY rowid LIMIT ?", (max_rows,)).fetchall()
    ids = []
    for row_id, at in head:
        if at >= cutoff:
            break
        ids.append(row_id)
    if ids:
        # The ids are the first rows by rowid: one range delete, not a list.
        conn.execute(f"DELETE FROM {table} WHERE rowid <= ?", (ids[-1],))
    return _done(started, len(ids), len(ids) == max_rows)


def _delete_expired(conn: sqlite3.Connection, cutoff: float, max_rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    n = conn.execute("DELETE FROM suppressions WHERE id IN (SELECT id FROM suppressions WHERE expires_at IS NOT NULL"
                     " AND expires_at < ? ORDER BY expires_at LIMIT ?)", (cutoff, max_rows)).rowcount
    m = conn.execute("DELETE FROM soft_bounces WHERE (tenant_id, address) IN (SELECT tenant_id, address FROM soft_bounces"
                     " WHERE last_at < ? ORDER BY last_at LIMIT ?)", (cutoff, max_rows)).rowcount
    return _done(started, n + m, n == max_rows or m == max_rows)


def _delete_inbound(conn: sqlite3.Connection, cutoff: float, max_rows: int, max_bytes: int) -> dict[str, Any]:
    started = time.perf_counter()
    # size sits before raw in the row: reading it does not walk the message's overflow pages.
    candidates = conn.execute(
        "SELECT id, size FROM inbound_messages INDEXED BY inbound_processed_age"
        " WHERE state = 'processed' AND processed_at < ? ORDER BY processed_at LIMIT ?", (cutoff, max_rows)).fetchall()
    ids, nbytes = _within(candidates, max_bytes)
    files: list[str] = []
    if ids:
        marks = _marks(ids)
        shas = {r[0] for r in conn.execute(f"SELECT DISTINCT sha256 FROM inbound_attachments WHERE message_id IN ({marks})", ids)}
        conn.execute(f"DELETE FROM inbound_attachments WHERE message_id IN ({marks})", ids)
        conn.execute(f"DELETE FROM inbound_messages WHERE id IN ({marks})", ids)
        files = sorted(s for s in shas if conn.execute(
            "SELECT 1 FROM inbound_attachments INDEXED BY inbound_attachments_sha WHERE sha256 = ? LIMIT 1", (s,)).fetchone() is None)
    done = _done(started, len(ids), len(ids) < len(candidates) or len(candidates) == max_rows, nbytes)
    done["files"] = files
    return done


class Retention:
    def __init__(self, db: Database):
        self.db = db

    async def drop_bodies(self, cutoff: float, *, max_rows: int, max_bytes: int) -> dict[str, Any]:
        """Empty the bodies of messages finished before ``cutoff`` (oldest first), one batch."""
        return await self.db.write(_drop_bodies, cutoff, max_rows, max_bytes, time.time())

    async def delete_messages(self, cutoff: float, *, max_rows: int, max_bytes: int) -> dict[str, Any]:
        """Delete messages finished before ``cutoff`` with their recipients and attempts, one batch."""
        return await self.db.write(_delete_messages, cutoff, max_rows, max_bytes)

    async def delete_attempts(self, cutoff: float, *, max_rows: int) -> dict[str, Any]:
        """Delete attempt rows made before ``cutoff``, one batch."""
        return await self.db.write(_delete_prefix, "attempts", "at", cutoff, max_rows)

    async def delete_events(self, cutoff: float, *, max_rows: int) -> dict[str, Any]:
        """Delete event rows appended before ``cutoff``, one batch."""
        return await self.db.write(_delete_prefix, "events", "created_at", cutoff, max_rows)

    async def delete_threads(self, cutoff: float, *, max_rows: int) -> dict[str, Any]:
        """Delete Message-ID records (message_ids: what threads replies) made before ``cutoff``, one batch."""
        return await self.db.write(_delete_prefix, "message_ids", "created_at", cutoff, max_rows)

    async def delete_webhook_log(self, cutoff: float, *, max_rows: int) -> dict[str, Any]:
        """Delete webhook delivery-log rows (webhook_deliveries) written before ``cutoff``, one batch."""
        return await self.db.write(_delete_prefix, "webhook_deliveries", "at", cutoff, max_rows)

    async def delete_idempotency(self, cutoff: float, *, max_rows: int) -> dict[str, Any]:
        """Delete the send API's Idempotency-Key answers stored before ``cutoff``, one batch."""
        return await self.db.write(_delete_prefix, "api_idempotency", "created_at", cutoff, max_rows)

    async def delete_expired_suppressions(self, cutoff: float, *, max_rows: int) -> dict[str, Any]:
        """Delete suppression entries that expired before ``cutoff`` and soft-failure counts untouched since, one batch."""
        return await self.db.write(_delete_expired, cutoff, max_rows)

    async def delete_inbound(self, cutoff: float, *, max_rows: int, max_bytes: int) -> dict[str, Any]:
        """Delete inbound rows processed before ``cutoff`` with their attachment rows, one batch; ``files``
        lists the attachment files no row references any more."""
        return await self.db.write(_delete_inbound, cutoff, max_rows, max_bytes)
