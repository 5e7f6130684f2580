"""The suppression list's rows: add (insert or refresh), remove, look up, list.

The store keeps facts; which scopes apply to a send (the use case, its domain, its kind) is decided
by the caller, which passes the scopes to check. A lookup for one recipient is one indexed probe of
the unique index (tenant_id, address, scope, scope_id), whatever the size of the list.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

import structlog

from .. import suppression
from ..errors import InvalidArgument, NotFound
from .db import Database
from .events import append_event

Scope = tuple[str, int]   # ('tenant', 0) | ('domain', domain_id) | ('usecase', usecase_id) | ('marketing', 0)
log = structlog.get_logger()
MAX_EVENT_BATCH = 1000    # events one queued write takes at most


class _EventBatch:
    """Events that share one queued write. The event loop appends until the writer thread seals the
    batch (at the start of the write); after that a new batch is queued."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[int, str, str, dict]] = []
        self.sealed = False


def _append_batch(conn: sqlite3.Connection, batch: _EventBatch) -> int:
    with batch.lock:
        batch.sealed = True
        rows = list(batch.rows)
    for row in rows:
        append_event(conn, *row)
    return len(rows)


def _batch_done(batch: _EventBatch, fut) -> None:
    """A batch that could not be committed (a full disk) is logged, not raised: the refusals it
    recorded were already answered."""
    if not fut.cancelled() and fut.exception() is not None:
        exc = fut.exception()
        log.warning("suppressed_event_failed", events=len(batch.rows), rcpts=[r[2] for r in batch.rows[:20]],
                    error=f"{type(exc).__name__}: {exc}")


def _add(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int, address: str, reason: str, source: str,
         expires_at: float | None, now: float, event: bool) -> dict[str, Any]:
    row = conn.execute(
        "INSERT INTO suppressions (tenant_id, scope, scope_id, address, reason, source, created_at, updated_at, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (tenant_id, address, scope, scope_id) DO UPDATE SET reason = excluded.reason, source = excluded.source,"
        " updated_at = excluded.updated_at, expires_at = excluded.expires_at"
        " RETURNING id, created_at = updated_at AS added",
        (tenant_id, scope, scope_id, address, reason, source, now, now, expires_at),
    ).fetchone()
    if event:
        append_event(conn, tenant_id, "suppression_added", address,
                     {"scope": scope, "scope_id": scope_id, "reason": reason, "source": source, "expires_at": expires_at})
    return {"id": row[0], "added": bool(row[1])}


def _remove(conn: sqlite3.Connection, tenant_id: int, address: str, scopes: Sequence[Scope] | None, source: str) -> int:
    if scopes is None:
        n = conn.execute("DELETE FROM suppressions WHERE tenant_id = ? AND address = ?", (tenant_id, address)).rowcount
    else:
        n = sum(conn.execute("DELETE FROM suppressions WHERE tenant_id = ? AND address = ? AND scope = ? AND scope_id = ?",
                             (tenant_id, address, s, i)).rowcount for s, i in scopes)
    if n:
        append_event(conn, tenant_id, "suppression_removed", address, {"rows": n, "source": source})
    return n


def _find(conn: sqlite3.Connection, tenant_id: int, address: str, scopes: Sequence[Scope], now: float) -> dict[str, Any] | None:
    for scope, scope_id in scopes:
        row = conn.execute(
            "SELECT id, tenant_id, scope, scope_id, address, reason, source, created_at, updated_at, expires_at FROM suppressions"
            " WHERE tenant_id = ? AND address = ? AND scope = ? AND scope_id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (tenant_id, address, scope, scope_id, now),
        ).fetchone()
        if row is not None:
            return dict(row)
    return None


def _list(conn: sqlite3.Connection, tenant_id: int, address: str | None, after_id: int, limit: int,
          scope: Scope | None = None, reason: str | None = None) -> list[dict[str, Any]]:
    """A page in id order; each filter is a prefix of an index (migrations 0011, 0027): no scan."""
    where, args, order = ["tenant_id = ?", "id > ?"], [tenant_id, after_id], "id"
    if address is not None:
        # One address has an entry per scope at most: its rows come from the unique index and are
        # sorted, not found by walking the tenant's whole list in id order (what "+" prevents).
        where, order = ["tenant_id = ?", "+id > ?", "address = ?"], "+id"
        args.append(address)
    if scope is not None:
        where += ["scope = ?", "scope_id = ?"]
        args += list(scope)
    if reason is not None:
        where.append("reason = ?")
        args.append(reason)
    return [dict(r) for r in conn.execute(
        "SELECT id, tenant_id, scope, scope_id, address, reason, source, created_at, updated_at, expires_at FROM suppressions"
        f" WHERE {' AND '.join(where)} ORDER BY {order} LIMIT ?", (*args, limit))]


_COLUMNS = "id, tenant_id, scope, scope_id, address, reason, source, created_at, updated_at, expires_at"


def live(conn: sqlite3.Connection, tenant_id: int, address: str, scopes: Sequence[Scope], now: float) -> dict[str, Any] | None:
    """The first live entry in ``scopes`` (in their order), from one probe of the (tenant_id, address) prefix."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM suppressions WHERE tenant_id = ? AND address = ?", (tenant_id, address)).fetchall()
    if not rows:
        return None
    found = {(r["scope"], r["scope_id"]): r for r in rows if r["expires_at"] is None or r["expires_at"] > now}
    for scope in scopes:
        if scope in found:
            return dict(found[scope])
    return None


def apply_feedback(conn: sqlite3.Connection, tenant_id: int, fb: suppression.Feedback, now: float) -> None:
    """A delivery outcome's effect on the list, inside the write that records the outcome."""
    if fb.kind == "clear":
        conn.execute("DELETE FROM soft_bounces WHERE tenant_id = ? AND address = ?", (tenant_id, fb.address))
    elif fb.kind == "hard":
        _add(conn, tenant_id, "tenant", 0, fb.address, "hard_bounce", fb.source, None, now, True)
        conn.execute("DELETE FROM soft_bounces WHERE tenant_id = ? AND address = ?", (tenant_id, fb.address))
    elif fb.kind == "complaint":
        _add(conn, tenant_id, "marketing", 0, fb.address, "complaint", fb.source, None, now, True)
    elif fb.kind == "soft":
        row = conn.execute(
            "INSERT INTO soft_bounces (tenant_id, address, first_at, last_at, count) VALUES (?, ?, ?, ?, 1)"
            " ON CONFLICT (tenant_id, address) DO UPDATE SET"
            "  count = CASE WHEN first_at > ? THEN count + 1 ELSE 1 END,"
            "  first_at = CASE WHEN first_at > ? THEN first_at ELSE excluded.first_at END, last_at = excluded.last_at"
            " RETURNING count",
            (tenant_id, fb.address, now, now, now - fb.soft_window, now - fb.soft_window),
        ).fetchone()
        if row[0] >= fb.soft_limit:
            _add(conn, tenant_id, "tenant", 0, fb.address, "soft_bounce", fb.source, now + fb.soft_for, now, True)
            conn.execute("DELETE FROM soft_bounces WHERE tenant_id = ? AND address = ?", (tenant_id, fb.address))


def _scopes(conn: sqlite3.Connection, tenant_id: int, usecase_id: int) -> list[tuple[str, int]] | None:
    ctx = conn.execute("SELECT id, domain_id, kind FROM usecases WHERE id = ? AND tenant_id = ?", (usecase_id, tenant_id)).fetchone()
    return None if ctx is None else suppression.scopes_for(dict(ctx))


def _filter(conn: sqlite3.Connection, tenant_id: int, rcpts: Sequence[tuple[int, str]], scopes: list[tuple[str, int]] | None,
            now: float) -> dict[int, dict[str, Any]]:
    if scopes is None:
        return {}
    out = {}
    for rid, rcpt in rcpts:
        try:
            address = suppression.normalise_address(rcpt)
        except InvalidArgument:
            continue
        entry = live(conn, tenant_id, address, scopes, now)
        if entry is not None:
            out[rid] = entry
    return out


def _verp_recipient(conn: sqlite3.Connection, queue_id: str, index: int) -> dict[str, Any] | None:
    """The recipient a VERP tag names: the index-th row (by id) of the queued message."""
    row = conn.execute(
        "SELECT r.rcpt, r.tenant_id, m.usecase_id, m.queue_id FROM messages m JOIN recipients r ON r.message_id = m.id"
        " WHERE m.queue_id = ? ORDER BY r.id LIMIT 1 OFFSET ?", (queue_id, index)).fetchone()
    return dict(row) if row is not None else None


def scope_names(conn: sqlite3.Connection, tenant_id: int) -> dict[tuple[str, int], str]:
    """{('domain', 3): 'domain:example.com', ('usecase', 7): 'usecase:receipts', ...} for one tenant."""
    names: dict[tuple[str, int], str] = {("tenant", 0): "tenant", ("marketing", 0): "marketing"}
    for i, name in conn.execute("SELECT id, name FROM domains WHERE tenant_id = ?", (tenant_id,)):
        names[("domain", i)] = f"domain:{name}"
    for i, name in conn.execute("SELECT id, name FROM usecases WHERE tenant_id = ?", (tenant_id,)):
        names[("usecase", i)] = f"usecase:{name}"
    return names


def resolve_scope(conn: sqlite3.Connection, tenant_id: int, label: str) -> Scope:
    """'tenant' | 'marketing' | 'domain:NAME' | 'usecase:NAME' -> (scope, id), within the tenant."""
    kind, _, name = label.partition(":")
    if kind in ("tenant", "marketing") and not name:
        return (kind, 0)
    table = {"domain": "domains", "usecase": "usecases"}.get(kind)
    if table is None or not name:
        raise NotFound(f"unknown scope {label!r}: expected tenant, marketing, domain:NAME or usecase:NAME")
    row = conn.execute(f"SELECT id FROM {table} WHERE tenant_id = ? AND name = ?", (tenant_id, name.lower() if kind == "domain" else name)).fetchone()
    if row is None:
        raise NotFound(f"the tenant has no {kind} {name!r}")
    return (kind, row[0])


def _import(conn: sqlite3.Connection, tenant_id: int, rows: Sequence[tuple[str, Scope, str, str, float | None]], now: float) -> tuple[int, int]:
    added = updated = 0
    for address, (scope, scope_id), reason, source, expires_at in rows:
        if _add(conn, tenant_id, scope, scope_id, address, reason, source, expires_at, now, False)["added"]:
            added += 1
        else:
            updated += 1
    if rows:
        append_event(conn, tenant_id, "suppression_imported", "", {"added": added, "updated": updated})
    return added, updated


def delete_tenant(conn: sqlite3.Connection, tenant_id: int) -> None:
    """A tenant's list goes with it: entries about third parties have no meaning without the tenant."""
    conn.execute("DELETE FROM suppressions WHERE tenant_id = ?", (tenant_id,))
    conn.execute("DELETE FROM soft_bounces WHERE tenant_id = ?", (tenant_id,))


def delete_scope(conn: sqlite3.Connection, tenant_id: int, scope: str, scope_id: int) -> None:
    """Entries of a domain or use case being deleted (SQLite may give a later row the same id)."""
    conn.execute("DELETE FROM suppressions WHERE tenant_id = ? AND scope = ? AND scope_id = ?", (tenant_id, scope, scope_id))


class Suppressions:
    def __init__(self, db: Database):
        self.db = db
        self._batch: _EventBatch | None = None   # the queued batch events may still join (event loop only)

    def event_soon(self, tenant_id: int, kind: str, subject: str, data: dict) -> None:
        """Queue an event (the RCPT check's 'suppressed') for the writer without waiting for it. Events
        queued before the writer takes the previous ones join them: one queued write, one commit for
        all (each commit also costs the readers their page cache: scripts/bench_suppression.py). The
        batch sits in the write queue where its first event was queued, so an event commits no later
        than any write queued after it (an accept-drop's event before the message the session goes on
        to spool). A crash before the commit loses the queued events; StoreError when the store is closed."""
        batch = self._batch
        if batch is not None:
            with batch.lock:
                if not batch.sealed and len(batch.rows) < MAX_EVENT_BATCH:
                    batch.rows.append((tenant_id, kind, subject, data))
                    return
        batch = _EventBatch()
        batch.rows.append((tenant_id, kind, subject, data))
        fut = self.db.write_soon(_append_batch, batch)
        self._batch = batch
        fut.add_done_callback(lambda f: _batch_done(batch, f))

    async def add(self, tenant_id: int, scope: Scope, address: str, reason: str, *, source: str = "",
                  expires_at: float | None = None, now: float | None = None, event: bool = True) -> dict[str, Any]:
        """Insert or refresh one entry (``address`` already normalised); {"id", "added": False when it existed}."""
        return await self.db.write(_add, tenant_id, scope[0], scope[1], address, reason, source, expires_at,
                                   time.time() if now is None else now, event)

    async def remove(self, tenant_id: int, address: str, scopes: Sequence[Scope] | None = None, *, source: str = "") -> int:
        """Delete the address's entries in ``scopes`` (all of them when None); rows removed."""
        return await self.db.write(_remove, tenant_id, address, list(scopes) if scopes is not None else None, source)

    async def find(self, tenant_id: int, address: str, scopes: Sequence[Scope], now: float | None = None) -> dict[str, Any] | None:
        """The first live entry for ``address`` in any of ``scopes`` (checked in the order given), or None."""
        return await self.db.read(_find, tenant_id, address, list(scopes), time.time() if now is None else now)

    async def list(self, tenant_id: int, *, address: str | None = None, after_id: int = 0, limit: int = 1000,
                   scope: Scope | None = None, reason: str | None = None) -> list[dict[str, Any]]:
        return await self.db.read(_list, tenant_id, address, after_id, limit, scope, reason)

    async def live(self, tenant_id: int, address: str, scopes: Sequence[Scope], now: float | None = None) -> dict[str, Any] | None:
        """Like ``find``, in one index probe whatever the number of scopes (the RCPT check). Run on the
        caller's thread on SQLite (``read_point``): the probe takes ~20 µs with a million rows, the hop to
        the reader pool ~100 µs (scripts/bench_suppression.py)."""
        return await self.db.read_point(live, tenant_id, address, list(scopes), time.time() if now is None else now)

    async def filter_many(self, groups: Sequence[tuple[int, int, Sequence[tuple[int, str]]]],
                          now: float | None = None) -> dict[int, dict[str, Any]]:
        """{recipient id: entry} for several messages' recipients suppressed now, (tenant id, use case id, [(recipient id,
        address)]) each, in one read: what delivery checks for a whole claim before sending."""
        when = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> dict[int, dict[str, Any]]:
            out: dict[int, dict[str, Any]] = {}
            scopes: dict[tuple[int, int], list[tuple[str, int]] | None] = {}   # one use-case read per use case
            for tenant_id, usecase_id, rcpts in groups:
                if (tenant_id, usecase_id) not in scopes:
                    scopes[(tenant_id, usecase_id)] = _scopes(conn, tenant_id, usecase_id)
                out.update(_filter(conn, tenant_id, rcpts, scopes[(tenant_id, usecase_id)], when))
            return out
        return await self.db.read(run)

    async def verp_recipient(self, queue_id: str, index: int) -> dict[str, Any] | None:
        """{rcpt, tenant_id, usecase_id, queue_id} of the recipient a VERP tag names, or None (unknown, or swept)."""
        return await self.db.read(_verp_recipient, queue_id, index)

    async def scope_names(self, tenant_id: int) -> dict[tuple[str, int], str]:
        return await self.db.read(scope_names, tenant_id)

    async def resolve_scope(self, tenant_id: int, label: str) -> Scope:
        return await self.db.read(resolve_scope, tenant_id, label)

    async def import_rows(self, tenant_id: int, rows: Sequence[tuple[str, Scope, str, str, float | None]],
                          now: float | None = None) -> tuple[int, int]:
        """Insert or refresh already-checked rows in one write; (added, updated)."""
        return await self.db.write(_import, tenant_id, list(rows), time.time() if now is None else now)

    async def fill(self, tenant_id: int, count: int, *, prefix: str = "bench", now: float | None = None) -> int:
        """Benchmarks: ``count`` manual tenant-scope rows (prefix-N@fill.example), in batches of executemany."""
        now = time.time() if now is None else now

        def run(conn: sqlite3.Connection, start: int, n: int) -> int:
            conn.executemany(
                "INSERT OR IGNORE INTO suppressions (tenant_id, scope, scope_id, address, reason, source, created_at, updated_at)"
                " VALUES (?, 'tenant', 0, ?, 'manual', 'fill', ?, ?)",
                ((tenant_id, f"{prefix}-{i}@fill.example", now, now) for i in range(start, start + n)))
            return n

        done = 0
        while done < count:
            n = min(50000, count - done)
            await self.db.write(run, done, n)
            done += n
        return done

    async def apply(self, tenant_id: int, fb: suppression.Feedback, *, event: tuple[str, str, dict] | None = None,
                    now: float | None = None) -> None:
        """Apply a feedback outside delivery (an asynchronous DSN or a complaint), with its event, in one write."""
        def run(conn: sqlite3.Connection, at: float) -> None:
            if event is not None:
                append_event(conn, tenant_id, *event)
            apply_feedback(conn, tenant_id, fb, at)

        await self.db.write(run, time.time() if now is None else now)
