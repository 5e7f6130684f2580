"""The SQLite database: one writer that group-commits, a pool of readers, migrations, integrity.

Writes: callers hand the writer a plain function ``fn(conn, *args)``; the writer thread runs every
function that is waiting in one transaction (each inside its own SAVEPOINT, so one failing write
rolls back alone), commits once with ``synchronous=FULL`` and only then resolves each caller's
future. A coroutine that awaits ``db.write(...)`` therefore resumes after the commit that holds its
write is on disk: "persist, then reply" at the cost of one fsync per batch, not per message.

Reads: ``db.read(fn, *args)`` runs ``fn(conn, *args)`` on a small thread pool, each thread with its
own connection (WAL lets readers run beside the writer).

Functions handed to the writer must be quick and pure SQL: no DNS, SMTP or HTTP inside a transaction.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from ..errors import StoreError

log = structlog.get_logger("store")

T = TypeVar("T")

_STOP = object()
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = FULL")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    return conn


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every file in migrations/, in order."""
    found = []
    for entry in importlib.resources.files("gateway.store").joinpath("migrations").iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise StoreError(f"two migrations share a version number: {versions}")
    return found


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply every migration newer than the database; return the versions applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    have = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    known = migrations()
    newest = max((v for v, _, _ in known), default=0)
    if have and max(have) > newest:
        raise StoreError(f"the database has schema version {max(have)}, newer than this gateway knows ({newest}); upgrade the gateway")
    applied = []
    for version, name, sql in known:
        if version in have:
            continue
        try:
            # executescript commits any open transaction first, so the migration carries its own.
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n;INSERT INTO schema_migrations VALUES ({version}, '{name}', {time.time()});\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"migration {version:04d}_{name} failed: {exc}") from exc
        applied.append(version)
    return applied


class Database:
    """The one database of a daemon. Open with ``await Database.open(path)``."""

    def __init__(self, path: Path, *, batch_max: int = 1000, read_connections: int = 4):
        self.path = path
        self.batch_max = batch_max
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._readers = ThreadPoolExecutor(max_workers=read_connections, thread_name_prefix="store-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.writes = 0
        self.last_commit_error: str | None = None

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    async def open(cls, path: Path, **kwargs: Any) -> "Database":
        db = cls(path, **kwargs)
        await asyncio.to_thread(db._prepare)
        db._loop = asyncio.get_running_loop()
        db._writer = threading.Thread(target=db._write_loop, name="store-writer", daemon=True)
        db._writer.start()
        return db

    def _prepare(self) -> None:
        """Create or check the file, set WAL, run the integrity check and the migrations."""
        fresh = not self.path.exists()
        conn: sqlite3.Connection | None = None
        try:
            if fresh:
                # The database holds secrets' hashes and mail: readable by the daemon's user only.
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
            conn = connect(self.path)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            if not fresh:
                rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
                if rows != ["ok"]:
                    raise StoreError(
                        f"{self.path} is corrupt ({rows[0]}); refusing to start. "
                        "Restore a backup or recover it with `sqlite3 gateway.db .recover`."
                    )
            applied = migrate(conn)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"{self.path}: {exc}; refusing to start") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"{self.path}: cannot open: {exc.strerror or exc}; refusing to start") from exc
            raise
        self._write_conn = conn
        if applied:
            log.info("store_migrated", path=str(self.path), versions=applied)

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if getattr(self, "_write_conn", None) is not None:
            try:
                self._write_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._write_conn.close()
            self._write_conn = None

    # ------------------------------------------------------------------ writing

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in the next group commit; return its result once committed."""
        if self._writer is None:
            raise StoreError("the store is closed")
        fut = self._loop.create_future()
        self._queue.put((fn, args, fut))
        return await fut

    def _write_loop(self) -> None:
        conn = self._write_conn
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < self.batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            outcomes = self._commit(conn, batch)
            self._loop.call_soon_threadsafe(_resolve, outcomes)
            # Not held while waiting for the next write: a batch may carry large message bodies.
            item = nxt = batch = outcomes = None

    def _commit(self, conn: sqlite3.Connection, batch: list) -> list:
        outcomes = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, fut in batch:
                conn.execute("SAVEPOINT w")
                try:
                    result = fn(conn, *args)
                except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    outcomes.append((fut, False, exc))
                else:
                    conn.execute("RELEASE w")
                    outcomes.append((fut, True, result))
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(batch)
            self.last_commit_error = None
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.last_commit_error = str(exc)
            log.error("store_commit_failed", error=str(exc), writes=len(batch))
            err = StoreError(f"commit failed: {exc}")
            outcomes = [(fut, False, err) for _, _, fut in batch]
        return outcomes

    # ------------------------------------------------------------------ reading

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on a read connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader(), *args))

    @property
    def writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()


def _resolve(outcomes: list) -> None:
    for fut, ok, value in outcomes:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
