"""Keyset reads of append-mostly tables by id: where a time falls, and how far one page may look.

Both ``events`` and ``messages`` get ids in arrival order, so a time range is an id range (found by
``first_id_since``, a binary search of point reads, instead of a created_at index every insert would
pay for), and a page is ``WHERE id > ? ORDER BY id LIMIT ?`` (or the other way round): never OFFSET
over rows a client already saw. A page whose filter the index cannot answer looks at most ``SCAN``
rows (``edge``) and may come back short, with a cursor to go on from.
"""

from __future__ import annotations

import sqlite3
from typing import Any

SCAN = 10000
# Tables these reads may name (never data).
TABLES = frozenset({"events", "messages"})
# Two subqueries, not ``SELECT MIN(id), MAX(id)``: SQLite answers a lone min() or max() from the end
# of the primary key, but both in one SELECT scan a whole index (53 ms at 100,000 messages, measured).
BOUNDS_SQL = "SELECT (SELECT MIN(id) FROM {table}), (SELECT MAX(id) FROM {table})"


def first_id_since(conn: sqlite3.Connection, since: float, table: str = "events") -> int:
    """The id of the first row of ``table`` created at or after ``since`` (rows are added in time
    order): a few point reads instead of an index on created_at."""
    assert table in TABLES
    lo_hi = conn.execute(BOUNDS_SQL.format(table=table)).fetchone()
    if lo_hi[0] is None:
        return 1
    lo, hi = lo_hi[0], lo_hi[1] + 1
    while lo < hi:
        mid = (lo + hi) // 2
        # ids may have gaps (swept, rolled back): the next row at or after mid stands for it.
        row = conn.execute(f"SELECT id, created_at FROM {table} WHERE id >= ? ORDER BY id LIMIT 1", (mid,)).fetchone()
        if row is None or row[1] >= since:
            hi = mid
        else:
            lo = row[0] + 1
    return lo


def id_range(conn: sqlite3.Connection, table: str, since: float | None, until: float | None, cursor: int | None,
             newest: bool) -> tuple[int, int | None]:
    """(lo, hi): the ids strictly between them are the rows created in [since, until) that come after
    ``cursor`` in the page order (hi None: no upper end)."""
    lo, hi = 0, None
    if since is not None:
        lo = first_id_since(conn, since, table) - 1
    if until is not None:
        hi = first_id_since(conn, until, table)
    if cursor is not None:
        if newest:
            hi = cursor if hi is None else min(hi, cursor)
        else:
            lo = max(lo, cursor)
    return lo, hi


def edge(conn: sqlite3.Connection, from_where: str, args: list[Any], column: str, newest: bool) -> int | None:
    """The id of the SCAN-th row of ``FROM ... WHERE ...`` in page order, None when there are fewer:
    a page with a filter its index cannot answer looks no further."""
    order = "DESC" if newest else "ASC"
    row = conn.execute(f"SELECT {column} {from_where} ORDER BY {column} {order} LIMIT 1 OFFSET ?", (*args, SCAN - 1)).fetchone()
    return None if row is None else row[0]
