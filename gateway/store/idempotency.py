"""Idempotency keys of the send API: the answer a key got, written with the message it queued.

    earlier(conn, record)        inside queue.put's transaction, first: the stored answer when the
                                 key was used already (the put then writes nothing)
    remember(conn, record, put)  inside the same transaction, last: the answer stored
    Idempotency.find      the stored answer of (api key, idempotency key), or None
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .db import Database


@dataclass(frozen=True)
class Record:
    """What a send with an Idempotency-Key stores beside its message."""

    key_id: int             # api_keys.id
    key: str                # the client's Idempotency-Key
    fingerprint: str        # a hash of the request (media type, query, body)
    status: int
    render: Callable[[dict[str, Any]], bytes]   # put's result -> the answer's body (pure, quick: run by the writer)


def _row(conn: sqlite3.Connection, key_id: int, key: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT fingerprint, status, response, queue_id, created_at FROM api_idempotency"
                       " WHERE key_id = ? AND idem_key = ?", (key_id, key)).fetchone()
    return dict(row) if row is not None else None


def earlier(conn: sqlite3.Connection, record: Record) -> dict[str, Any] | None:
    """The stored answer when ``record``'s key was used already, else None."""
    return _row(conn, record.key_id, record.key)


def remember(conn: sqlite3.Connection, record: Record, put: dict[str, Any], now: float) -> None:
    """Store the answer. Where several nodes share the store the UNIQUE constraint is the last word
    (a second insert fails its whole put); one SQLite writer has decided in ``earlier`` already."""
    conn.execute("INSERT INTO api_idempotency (key_id, idem_key, fingerprint, status, response, queue_id, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (record.key_id, record.key, record.fingerprint, record.status, record.render(put), put["queue_id"], now))


class Idempotency:
    def __init__(self, db: Database):
        self.db = db

    async def find(self, key_id: int, key: str) -> dict[str, Any] | None:
        """{fingerprint, status, response, queue_id, created_at} of the key's answer, or None."""
        return await self.db.read(_row, key_id, key)
