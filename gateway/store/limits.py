"""Counters shared by every process and node on one store: token buckets, failed AUTH attempts, AUTH blocks.

The limiters (``gateway/submission/ratelimit.py``) keep what they can in memory and come here for
what several processes must agree on:

    take(key, want, per_second, depth, least)  up to ``want`` whole tokens from the key's bucket in
                                            one write, none unless ``least`` are there: (taken,
                                            seconds until ``least`` will be there when none)
    give_back([(key, tokens, rate, depth)]) tokens taken and not spent, when a process stops
    auth_state(keys)                        {key: (failures the *other* processes counted, blocked
                                            until)}: a point read
    failed_soon(keys, cooldown)             one failed AUTH attempt against each (key, limit), queued
                                            for the next group commit; resolves to the keys it blocked

A bucket row is (tokens, updated_at, version): the level is refilled from ``updated_at`` at the
rate the caller gives, capped at ``depth``; no row is a full bucket. Writes read the row and write it back only if
it did not change meanwhile (compare and set on its ``version``), trying again if it did: one SQLite
writer never sees it change, concurrent PostgreSQL transactions are serialised by the check.
Times are wall-clock seconds (``time.time()``) so every process and node reads them alike; a clock
behind another's refills nothing rather than a negative amount.

Bounds: a row is swept once it says nothing a missing row would not (a bucket once full again, a
failure or a block once its cool-down is over), by the writes themselves, at most every
``SWEEP_EVERY`` seconds per process, in the transaction of a write that is happening anyway; and a
table past ``MAX_ROWS`` loses its rows nearest to expiring first (a bucket forgotten is a full one,
as the in-memory limiters forget their oldest keys). So a table holds at most the keys written in
the last (lifetime + ``SWEEP_EVERY``) seconds, and never more than about ``MAX_ROWS``.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import Iterable, Sequence

from .db import Database

MAX_ROWS = 100_000
SWEEP_EVERY = 60.0
CAS_TRIES = 20   # a bucket taken by another transaction between our read and write: read it again


Row = tuple[float, float, int]   # tokens, updated_at, version


def _bucket(conn: sqlite3.Connection, key: str) -> Row | None:
    row = conn.execute("SELECT tokens, updated_at, version FROM rate_buckets WHERE key = ?", (key,)).fetchone()
    return (row[0], row[1], row[2]) if row is not None else None


def _level(row: Row | None, per_second: float, depth: float, now: float) -> float:
    if row is None:
        return depth
    tokens, updated_at, _ = row
    return min(depth, tokens + max(0.0, now - updated_at) * per_second)


def _store(conn: sqlite3.Connection, key: str, row: Row | None, tokens: float, per_second: float, depth: float, now: float) -> bool:
    """Write the bucket's new level if ``row`` is still what the table holds; False if it changed."""
    full_at = now + max(0.0, depth - tokens) / per_second
    if row is None:
        return conn.execute("INSERT INTO rate_buckets (key, tokens, updated_at, full_at, version) VALUES (?, ?, ?, ?, 0)"
                            " ON CONFLICT (key) DO NOTHING", (key, tokens, now, full_at)).rowcount == 1
    return conn.execute("UPDATE rate_buckets SET tokens = ?, updated_at = ?, full_at = ?, version = version + 1"
                        " WHERE key = ? AND version = ?", (tokens, now, full_at, key, row[2])).rowcount == 1


def _take(conn: sqlite3.Connection, key: str, want: int, least: int, per_second: float, depth: float, now: float) -> tuple[int, float]:
    for _ in range(CAS_TRIES):
        row = _bucket(conn, key)
        level = _level(row, per_second, depth, now)
        if level < least:
            return 0, (least - level) / per_second   # nothing changes: the refill is implied by the time
        taken = min(want, int(level))
        if _store(conn, key, row, level - taken, per_second, depth, now):
            return taken, 0.0
    return 0, 1.0 / per_second   # taken away from us every time: nothing for now


def _give_back(conn: sqlite3.Connection, returns: Sequence[tuple[str, int, float, float]], now: float) -> None:
    for key, tokens, per_second, depth in returns:
        for _ in range(CAS_TRIES):
            row = _bucket(conn, key)
            if row is None:
                break   # full already (or swept): nothing to give back to
            if _store(conn, key, row, min(depth, _level(row, per_second, depth, now) + tokens), per_second, depth, now):
                break


def _auth_state(conn: sqlite3.Connection, keys: Sequence[str], owner: str, now: float) -> dict[str, tuple[int, float]]:
    marks = ", ".join("?" * len(keys))
    state = {key: (0, 0.0) for key in keys}
    # One statement for every key: a login's check is a few index probes, not a round trip each.
    for key, failures, until in conn.execute(
            f"SELECT key, COUNT(*), 0.0 FROM auth_failures WHERE key IN ({marks}) AND expires_at > ? AND owner <> ? GROUP BY key"
            f" UNION ALL SELECT key, 0, blocked_until FROM auth_blocks WHERE key IN ({marks}) AND blocked_until > ?",
            (*keys, now, owner, *keys, now)):
        had = state[key]
        state[key] = (had[0] + failures, max(had[1], until))
    return state


def _failed(conn: sqlite3.Connection, keys: Sequence[tuple[str, int]], owner: str, cooldown: float, now: float) -> list[str]:
    blocked = []
    for key, limit in keys:
        conn.execute("INSERT INTO auth_failures (key, owner, failed_at, expires_at) VALUES (?, ?, ?, ?)",
                     (key, owner, now, now + cooldown))
        counted = conn.execute("SELECT COUNT(*) FROM auth_failures WHERE key = ? AND expires_at > ?", (key, now)).fetchone()[0]
        if counted >= limit:
            conn.execute("INSERT INTO auth_blocks (key, blocked_until) VALUES (?, ?)"
                         " ON CONFLICT (key) DO UPDATE SET blocked_until = excluded.blocked_until", (key, now + cooldown))
            blocked.append(key)
    return blocked


# (table, its expiry column): a row past it says nothing.
_EXPIRING = (("rate_buckets", "full_at"), ("auth_failures", "expires_at"), ("auth_blocks", "blocked_until"))


def _sweep(conn: sqlite3.Connection, now: float, max_rows: int) -> int:
    removed = 0
    for table, column in _EXPIRING:
        removed += conn.execute(f"DELETE FROM {table} WHERE {column} <= ?", (now,)).rowcount
        excess = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] - max_rows
        if excess > 0:
            # The rows nearest to expiring go first (ties with the last one go too).
            cut = conn.execute(f"SELECT {column} FROM {table} ORDER BY {column} LIMIT 1 OFFSET ?", (excess - 1,)).fetchone()[0]
            removed += conn.execute(f"DELETE FROM {table} WHERE {column} <= ?", (cut,)).rowcount
    return removed


class Limits:
    def __init__(self, db: Database, *, max_rows: int = MAX_ROWS, sweep_every: float = SWEEP_EVERY):
        self.db = db
        self.max_rows = max_rows
        self.sweep_every = sweep_every
        self._swept = 0.0
        # This handle's name on the failures it writes: its process counts its own in memory (at
        # once, before the write commits), so it reads only the others' from the store.
        self.owner = secrets.token_hex(8)

    def _sweeping(self, now: float) -> bool:
        """Whether this write also sweeps (at most every ``sweep_every`` seconds in this process)."""
        if now - self._swept < self.sweep_every:
            return False
        self._swept = now
        return True

    async def take(self, key: str, want: int, per_second: float, depth: float, least: int = 1,
                   now: float | None = None) -> tuple[int, float]:
        """Up to ``want`` whole tokens of ``key``'s bucket (``per_second``, at most ``depth``), committed:
        (taken, 0.0); or, with fewer than ``least`` there, (0, seconds until there will be) with
        nothing changed. ``least`` keeps a bucket that is spent as fast as it refills from costing
        a write per token."""
        now = time.time() if now is None else now
        sweep = self._sweeping(now)

        def run(conn: sqlite3.Connection) -> tuple[int, float]:
            if sweep:
                _sweep(conn, now, self.max_rows)
            return _take(conn, key, want, min(least, want), per_second, depth, now)

        return await self.db.write(run)

    async def give_back(self, returns: Iterable[tuple[str, int, float, float]], now: float | None = None) -> None:
        """Put tokens taken and not spent back: (key, tokens, per_second, depth) each, capped at depth."""
        returns = [r for r in returns if r[1] > 0]
        if returns:
            await self.db.write(_give_back, returns, time.time() if now is None else now)

    def auth_state(self, keys: Sequence[str], now: float | None = None) -> dict[str, tuple[int, float]]:
        """{key: (failures within their cool-down written by other handles, blocked until or 0.0)}:
        two index probes a key, on the caller's thread (``read_now``), as the suppression check at
        RCPT does."""
        return self.db.read_now(_auth_state, list(keys), self.owner, time.time() if now is None else now)

    def failed_soon(self, keys: Sequence[tuple[str, int]], cooldown: float, now: float | None = None) -> asyncio.Future:
        """Count one failed attempt against each (key, limit), for ``cooldown`` seconds; a key whose
        count reaches its limit is blocked for ``cooldown``. Queued for the next group commit, not
        waited for; the future resolves to the keys blocked."""
        now = time.time() if now is None else now
        sweep = self._sweeping(now)

        def run(conn: sqlite3.Connection) -> list[str]:
            if sweep:
                _sweep(conn, now, self.max_rows)
            return _failed(conn, list(keys), self.owner, cooldown, now)

        return self.db.write_soon(run)

    async def sweep(self, now: float | None = None) -> int:
        """Remove the rows that say nothing any more, and the excess over ``max_rows``; how many."""
        now = time.time() if now is None else now
        self._swept = now
        return await self.db.write(_sweep, now, self.max_rows)

    async def counts(self) -> dict[str, int]:
        """Rows in each table (for tests and status)."""
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table, _ in _EXPIRING}

        return await self.db.read(run)
