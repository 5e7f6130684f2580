"""Events: the append-only record that logs, metrics and webhooks are fed from."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from .db import Database


def append_event(conn: sqlite3.Connection, tenant_id: int | None, kind: str, subject: str = "", data: dict | None = None) -> None:
    """Append one event row; called inside the write that caused it, so both commit together."""
    conn.execute(
        "INSERT INTO events (created_at, tenant_id, kind, subject, data) VALUES (?, ?, ?, ?, ?)",
        (time.time(), tenant_id, kind, subject, json.dumps(data or {}, separators=(",", ":"))),
    )


def _event_row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["data"] = json.loads(d["data"])
    return d


class Events:
    def __init__(self, db: Database):
        self.db = db

    async def append(self, tenant_id: int | None, kind: str, subject: str = "", data: dict | None = None) -> None:
        await self.db.write(append_event, tenant_id, kind, subject, data)

    async def list(self, *, tenant_id: int | None = None, subject: str | None = None, kind: str | None = None,
                   after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        where, args = ["id > ?"], [after_id]
        if tenant_id is not None:
            where.append("tenant_id = ?")
            args.append(tenant_id)
        if subject is not None:
            where.append("subject = ?")
            args.append(subject)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        return await self.db.read(lambda c: [_event_row(r) for r in c.execute(sql, (*args, limit))])
