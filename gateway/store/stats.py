"""Daily statistics per tenant, use case and UTC day (migration 0025's ``daily_stats``).

    in:   every event, inside its own write (``count`` is called by events.append_event)
    out:  ``Stats.read``: the rows of a day range, keyset-paged by (day, use case)

One event adds at most one to one column, by its kind and data (``column``): the numbers a
dashboard shows can never disagree with the event log they come from, and reading them is a range
of the primary key, whatever the traffic. Mail the gateway writes itself (DSNs: no envelope
sender) is not the tenant's traffic and is not counted.
"""

from __future__ import annotations

import datetime
import functools
import sqlite3
import time
from typing import Any

from .db import Database

# Every counted column, in the order reads return them.
COLUMNS = ("sent", "delivered", "deferred", "bounced_hard", "bounced_soft", "bounced_block", "bounced_other",
           "suppressed", "complained", "unsubscribed")
_BOUNCED = {"hard": "bounced_hard", "soft": "bounced_soft", "block": "bounced_block"}
_PLAIN = {"delivered", "deferred", "suppressed", "complained", "unsubscribed"}
# One statement per column (the column is a name from COLUMNS, never data).
_UPSERT = {c: (f"INSERT INTO daily_stats (tenant_id, day, usecase_id, {c}) VALUES (?, ?, ?, ?)"
               f" ON CONFLICT (tenant_id, day, usecase_id) DO UPDATE SET {c} = {c} + excluded.{c}") for c in COLUMNS}


def column(kind: str, data: dict[str, Any]) -> tuple[str, int] | None:
    """(column, amount) an event adds to, or None when it counts nowhere."""
    if kind == "queued":
        return ("sent", int(data.get("recipients") or 0)) if data.get("from") else None
    if kind == "bounced":
        return _BOUNCED.get(data.get("class") or "", "bounced_other"), 1
    if kind == "suppressed" and data.get("checked") == "rcpt":
        return None   # refused at RCPT: never accepted, so never sent either
    if kind in _PLAIN:
        return kind, 1
    return None


def day_of(ts: float) -> str:
    return _day(int(ts // 86400))


@functools.lru_cache(maxsize=4)
def _day(n: int) -> str:
    """YYYY-MM-DD of the n-th UTC day since the epoch (remembered: every counted event asks for today)."""
    return time.strftime("%Y-%m-%d", time.gmtime(n * 86400))


def count(conn: sqlite3.Connection, tenant_id: int, usecase_id: int, kind: str, data: dict[str, Any], now: float) -> None:
    """Add the event to its day's row (called inside the event's write)."""
    counted = column(kind, data)
    if counted is not None and counted[1]:
        conn.execute(_UPSERT[counted[0]], (tenant_id, day_of(now), usecase_id, counted[1]))


def read_sql(tenant_id: int, first: str, last: str, usecase_id: int | None, after: tuple[str, int] | None,
             limit: int) -> tuple[str, list[Any]]:
    """The statement a read runs. One use case's rows are a point read of the key per day: a range of
    days walks every use case's rows of those days (366 x the tenant's use cases for a sender key)."""
    where, args = ["s.tenant_id = ?"], [tenant_id]
    if usecase_id is not None:
        start, end = datetime.date.fromisoformat(first), datetime.date.fromisoformat(last)
        done = None if after is None else datetime.date.fromisoformat(after[0])
        if done is not None and done < end:
            start = max(start, done + datetime.timedelta(days=1))
        days = [] if done is not None and done >= end else \
            [(start + datetime.timedelta(days=n)).isoformat() for n in range(max(0, (end - start).days + 1))]
        where.append(f"s.day IN ({', '.join('?' * len(days))})" if days else "0")
        where.append("s.usecase_id = ?")
        args += [*days, usecase_id]
    else:
        where += ["s.day >= ?", "s.day <= ?"]
        args += [first, last]
        if after is not None:
            where.append("(s.day, s.usecase_id) > (?, ?)")
            args += list(after)
    return (f"SELECT s.day, s.usecase_id, u.name AS usecase, {', '.join('s.' + c for c in COLUMNS)}"
            f" FROM daily_stats s LEFT JOIN usecases u ON u.id = s.usecase_id AND u.tenant_id = s.tenant_id"
            f" WHERE {' AND '.join(where)} ORDER BY s.day, s.usecase_id LIMIT ?", [*args, limit])


def _read(conn: sqlite3.Connection, tenant_id: int, first: str, last: str, usecase_id: int | None,
          after: tuple[str, int] | None, limit: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(*read_sql(tenant_id, first, last, usecase_id, after, limit))]


class Stats:
    def __init__(self, db: Database):
        self.db = db

    async def read(self, tenant_id: int, first: str, last: str, *, usecase_id: int | None = None,
                   after: tuple[str, int] | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rows of days ``first``..``last`` (YYYY-MM-DD, both included) in (day, use case) order, after
        the key ``after``; a day and use case without any counted event has no row."""
        return await self.db.read(_read, tenant_id, first, last, usecase_id, after, limit)
