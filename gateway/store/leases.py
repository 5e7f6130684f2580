"""Job leases: which process runs a job that must run on one node at a time (gateway/singleton.py).

One row per job (``leases``: name, holder, until; migration 0031). ``acquire`` takes the lease when it
is free, ran out, or is already the caller's; ``renew`` extends it only while the caller still holds
it; ``release`` gives it back. Each is one portable statement (an upsert with a condition, an UPDATE,
a DELETE), so on PostgreSQL two nodes racing for a lease serialise on its row and one wins. Times are
epoch seconds from the caller's clock: nodes' clocks must agree to well within a lease.

Holders are process tokens (``<node>:<pid>:<random>``, gateway/node.py): a node at its start drops
its own dead processes' leases (``release_prefix``), so a restarted single node runs its jobs at once
instead of waiting a lease out.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .db import Database


def _acquire(conn: sqlite3.Connection, name: str, holder: str, now: float, until: float) -> float | None:
    row = conn.execute(
        "INSERT INTO leases (name, holder, until) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until"
        " WHERE leases.holder = excluded.holder OR leases.until < ?"
        " RETURNING holder",
        (name, holder, until, now),
    ).fetchone()
    if row is not None:
        return None
    held = conn.execute("SELECT until FROM leases WHERE name = ?", (name,)).fetchone()
    return held[0] if held is not None else now


def _renew(conn: sqlite3.Connection, name: str, holder: str, until: float) -> bool:
    return conn.execute("UPDATE leases SET until = ? WHERE name = ? AND holder = ?", (until, name, holder)).rowcount == 1


def _release(conn: sqlite3.Connection, name: str, holder: str) -> bool:
    return conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)).rowcount == 1


def _release_prefix(conn: sqlite3.Connection, prefix: str) -> int:
    return conn.execute("DELETE FROM leases WHERE substr(holder, 1, ?) = ?", (len(prefix), prefix)).rowcount


def _all(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT name, holder, until FROM leases ORDER BY name")]


class Leases:
    def __init__(self, db: Database):
        self.db = db

    async def acquire(self, name: str, holder: str, *, now: float, until: float) -> float | None:
        """Take (or keep) the lease until ``until``: None when it is the holder's now, else the time
        the other holder's lease runs out (try again then)."""
        return await self.db.write(_acquire, name, holder, now, until)

    async def renew(self, name: str, holder: str, until: float) -> bool:
        """Extend the lease to ``until``; False when the holder lost it (it ran out and another took it)."""
        return await self.db.write(_renew, name, holder, until)

    async def release(self, name: str, holder: str) -> bool:
        """Give the lease back (at stop), so another node takes the job at once; False when not held."""
        return await self.db.write(_release, name, holder)

    async def release_prefix(self, prefix: str) -> int:
        """Drop every lease whose holder starts with ``prefix`` (gateway/node.py: a node's, a process's)."""
        return await self.db.write(_release_prefix, prefix)

    async def all(self) -> list[dict[str, Any]]:
        """Every lease: [{name, holder, until}] by name (status, tests)."""
        return await self.db.read(_all)
