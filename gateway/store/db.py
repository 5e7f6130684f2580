"""The SQLite database: one writer that group-commits, a pool of readers, migrations, integrity.

Writes: callers hand the writer a plain function ``fn(conn, *args)``; the writer thread runs every
function that is waiting in one transaction (each inside its own SAVEPOINT, so one failing write
rolls back alone), commits once with ``synchronous=FULL`` and only then resolves each caller's
future. A coroutine that awaits ``db.write(...)`` therefore resumes after the commit that holds its
write is on disk: "persist, then reply" at the cost of one fsync per batch, not per message.

Reads: ``db.read(fn, *args)`` runs ``fn(conn, *args)`` on a small thread pool, each thread with its
own connection (WAL lets readers run beside the writer).

Functions handed to the writer must be quick and pure SQL: no DNS, SMTP or HTTP inside a transaction.

A full disk is a state, not a stream of errors. SQLITE_FULL and ENOSPC (and an I/O error while the
filesystem has no room left) are translated here, once, into ``StorageFull``, for every write of the
failed batch. The first one starts an *episode*: one ``store_full`` log line, ``problems()`` names it
(``/health`` answers 503). While it lasts the writer looks at the free space every ``FULL_RECHECK``
seconds, even with nothing to write; once there is room a small probe write commits and the episode
ends with one ``store_space_recovered`` line and the ``on_recovered`` callbacks (delivery wakes up).
``check_room`` is the reserve in front of new mail: below ``min_free_bytes`` new mail is refused
(``StorageFull``) while deliveries, their records and operator actions keep writing into the reserve.
Opening needs a few pages too (a clean stop removes the -shm file SQLite must create again): a MiB
kept aside in ``store-room`` is given back when the store must open on a full disk.

A *secondary* (``secondary=True``: the web worker, a second process on the daemon's store) opens
what the daemon opened and migrated: the file must exist at the schema version this code knows; no
integrity check, no migrations, no reserve file, no checkpoint at close. It has a writer of its own
(WAL lets two processes write, one transaction at a time): its writes are short and a write that
meets the daemon's transaction waits for it, the two taking turns (gateway/store/turns.py).
"""

from __future__ import annotations

import asyncio
import errno
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

from ..errors import StorageFull, StoreError
from .space import DiskSpace
from .turns import Turns

log = structlog.get_logger("store")

T = TypeVar("T")

_STOP = object()
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Seconds between looks at the free space while the disk is full (and nothing else writes).
FULL_RECHECK = 0.5
# An episode ends only with this much room (or the reserve, if larger): a disk that gained one page
# back would fail the next message again, and each flap would be a new episode in the log.
RECOVERY_FREE = 1 << 20
# With less free space than this, an I/O error from SQLite is taken for a full disk: SQLite reports
# some ENOSPC cases (growing the WAL index) as SQLITE_IOERR_*, not SQLITE_FULL.
NEARLY_FULL = 256 * 1024
# Kept aside next to the database while there is plenty of room, and given back when the store must
# open on a full disk: SQLite needs a few pages (the -shm WAL index, which a clean stop removes) to
# open at all, and a daemon that cannot open its store cannot serve `gateway status` either.
ROOM_FILE = "store-room"
ROOM_BYTES = 1 << 20


def is_full(exc: BaseException) -> bool:
    """SQLITE_FULL ("database or disk is full") or ENOSPC, however the library raised it."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _is_ioerr(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == sqlite3.SQLITE_IOERR


def _probe(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES ('space_probe', ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(time.time()),))


def connect(path: Path, *, readonly: bool = False, existing: bool = False) -> sqlite3.Connection:
    """A connection with the store's pragmas; ``existing``: never create the file (a secondary)."""
    target, uri = (path.absolute().as_uri() + "?mode=rw", True) if existing else (path, False)
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, timeout=30.0, uri=uri)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = FULL")
    # Freed pages are not zeroed (Debian builds SQLite with secure_delete on): deleting a 25 MiB body
    # would otherwise write 25 MiB of zeros to the WAL. As with Postfix's unlink, the pages are reused
    # by new mail; they are unreachable from the database meanwhile.
    conn.execute("PRAGMA secure_delete = FAST")
    # Each write runs in its own SAVEPOINT (group commit), whose sub-journal spills to a temporary
    # file past 64 KiB: a message's put with its index entries reached that, and the file went under
    # /tmp (SQLITE_IOERR_GETTEMPPATH where /tmp is read-only, as under ProtectSystem=strict without
    # PrivateTmp; an open, write and unlink per message where it is not). Sub-journals and temporary
    # b-trees stay in memory: both are bounded by what one write or one query touches.
    conn.execute("PRAGMA temp_store = MEMORY")
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
            if is_full(exc):
                raise StorageFull(f"migration {version:04d}_{name} needs free space and the disk is full; "
                                  "free some space under the state directory and start again") from exc
            raise StoreError(f"migration {version:04d}_{name} failed: {exc}") from exc
        applied.append(version)
    return applied


class Database:
    """The one database of a daemon. Open with ``await Database.open(path)``."""

    def __init__(self, path: Path, *, batch_max: int = 1000, read_connections: int = 4, min_free_bytes: int = 0,
                 secondary: bool = False):
        self.path = path
        self.secondary = secondary
        self.batch_max = batch_max
        self.space = DiskSpace(path.parent, min_free=min_free_bytes)
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
        # The current disk-full episode (None: none): when it began, why, how many writes it refused.
        self._full_lock = threading.Lock()
        self.full_since: float | None = None
        self.full_reason = ""
        self.full_refused = 0
        self.episodes = 0
        self._on_recovered: list[Callable[[], Any]] = []
        self._waiters: list[asyncio.Future] = []
        self._turns = Turns(None)  # the file once open() has opened the store

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    async def open(cls, path: Path, **kwargs: Any) -> "Database":
        db = cls(path, **kwargs)
        await asyncio.to_thread(db._prepare)
        db._turns = Turns(path)  # after _prepare: a fresh store's directory and file exist
        db._loop = asyncio.get_running_loop()
        db._writer = threading.Thread(target=db._write_loop, name="store-writer", daemon=True)
        db._writer.start()
        return db

    def _prepare(self) -> None:
        """Open the store; on a full disk, with the room kept aside for that (see ``_keep_room``)."""
        if self.secondary:
            self._open_secondary()
            return
        try:
            self._open()
        except StoreError:
            room = self._room_path()
            if not room.exists() or self.space.measure() >= NEARLY_FULL:
                raise
            # A full disk, and the WAL index (-shm) SQLite creates on open found no room: a clean
            # stop removes it. Give back what was kept for this moment and open again, full.
            room.unlink()
            self._open()
            log.warning("store_room_released", path=str(room), bytes=ROOM_BYTES, why="the disk is full: opened with the room kept aside")
            self._enter_full(f"the disk under {self.path.parent} is full (started with the room kept aside)", 0)
        else:
            self._keep_room()

    def _room_path(self) -> Path:
        return self.path.parent / ROOM_FILE

    def _keep_room(self) -> None:
        """Set ROOM_BYTES aside in a file of their own, when there is plenty of room (once)."""
        room = self._room_path()
        if room.exists() or self.space.measure() < 4 * ROOM_BYTES + self.space.min_free:
            return
        try:
            fd = os.open(room, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                os.posix_fallocate(fd, 0, ROOM_BYTES)  # really allocated, not a sparse promise
            finally:
                os.close(fd)
        except OSError as exc:
            room.unlink(missing_ok=True)
            log.warning("store_room_not_kept", path=str(room), error=exc.strerror)

    def _open(self) -> None:
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
            if isinstance(exc, StoreError):
                raise
            if is_full(exc):
                raise StorageFull(f"{self.path}: the disk is full ({exc}); free some space and start again") from exc
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"{self.path}: {exc}; refusing to start") from exc
            if isinstance(exc, OSError):
                raise StoreError(f"{self.path}: cannot open: {exc.strerror or exc}; refusing to start") from exc
            raise
        self._write_conn = conn
        if applied:
            log.info("store_migrated", path=str(self.path), versions=applied)

    def _open_secondary(self) -> None:
        """Open the daemon's store beside it: it exists, is in WAL mode, at the version we know."""
        try:
            conn = connect(self.path, existing=True)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the daemon's store: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            have = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot read the daemon's store: {exc}") from exc
        newest = max((v for v, _, _ in migrations()), default=0)
        if mode.lower() != "wal" or have != newest:
            conn.close()
            raise StoreError(f"{self.path}: journal mode {mode}, schema version {have}; a secondary needs WAL "
                             f"and version {newest} (the daemon migrates, then starts its workers)")
        # Its BEGIN polls finely itself (turns.py), rather than in SQLite's coarse busy handler.
        conn.execute("PRAGMA busy_timeout = 0")
        self._write_conn = conn

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        await self._stop_threads()
        if getattr(self, "_write_conn", None) is not None:
            try:
                if not self.secondary:  # the daemon checkpoints; a secondary would only wait for it
                    self._write_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._write_conn.close()
            self._write_conn = None
        self._turns.close()

    async def _stop_threads(self) -> None:
        """Commit what is queued, stop the writer, stop the readers and close their connections
        (the writer's connection is the backend's to close: close())."""
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # ------------------------------------------------------------------ writing

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in the next group commit; return its result once committed."""
        if self._writer is None:
            raise StoreError("the store is closed")
        fut = self._loop.create_future()
        self._queue.put((fn, args, fut))
        return await fut

    def write_soon(self, fn: Callable[..., T], *args: Any) -> asyncio.Future:
        """Queue ``fn(conn, *args)`` for the next group commit without waiting for it: the future
        resolves once committed. For records whose caller must not wait on an fsync (the
        'suppressed' event of an RCPT refusal). The queue is FIFO, so any write queued after this one
        commits after it (or in the same batch); ``close`` commits what is queued."""
        if self._writer is None:
            raise StoreError("the store is closed")
        fut = self._loop.create_future()
        self._queue.put((fn, args, fut))
        return fut

    def _write_loop(self) -> None:
        conn = self._write_conn
        stopping = False
        while not stopping:
            try:
                item = self._queue.get(timeout=FULL_RECHECK if self.full_since is not None else None)
            except queue.Empty:
                # A full disk and nothing to write: see whether room came back, so the episode ends
                # (and delivery wakes) without waiting for a client to try again.
                if self.space.measure() >= self._recovery_free():
                    self._loop.call_soon_threadsafe(_resolve, self._commit(conn, [(_probe, (), None)]))
                continue
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
            if self.secondary:
                self._turns.begin(conn)
            else:
                self._turns.give_way()
                conn.execute("BEGIN IMMEDIATE")
            for fn, args, fut in batch:
                conn.execute("SAVEPOINT w")
                try:
                    result = fn(conn, *args)
                except BaseException as exc:  # noqa: BLE001 - handed back to the caller
                    if is_full(exc) or _is_ioerr(exc):
                        raise  # SQLite may have rolled the whole transaction back: the batch fails
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    outcomes.append((fut, False, exc))
                else:
                    conn.execute("RELEASE w")
                    outcomes.append((fut, True, result))
            conn.execute("COMMIT")
            if self.secondary:
                self._turns.end()
            self.commits += 1
            self.writes += len(batch)
            self.last_commit_error = None
        except (sqlite3.Error, OSError) as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if self.secondary:
                self._turns.end()
            self.last_commit_error = str(exc)
            if is_full(exc) or (_is_ioerr(exc) and 0 <= self.space.measure() < NEARLY_FULL):
                reason = f"the disk under {self.path.parent} is full ({exc})"
                self._enter_full(reason, len(batch))
                err: StoreError = StorageFull(reason)
            else:
                log.error("store_commit_failed", error=str(exc), writes=len(batch))
                err = StoreError(f"commit failed: {exc}")
            outcomes = [(fut, False, err) for _, _, fut in batch]
            return outcomes
        # The free space changes with each commit: measure it here, where it costs one syscall per
        # batch rather than per message, and end a full episode once there is room again.
        free = self.space.measure()
        if self.full_since is not None and free >= self._recovery_free():
            self._leave_full(free)
        return outcomes

    # ------------------------------------------------------------------ room on the disk

    def check_room(self) -> None:
        """Raise ``StorageFull`` when the free space is below the reserve (``min_free_bytes``).

        Only new mail asks: refusing it before SQLite fails keeps room for what is already queued
        to be delivered and recorded, and for operators to act."""
        if self.space.below_reserve():
            reason = (f"free space under {self.path.parent} is {self.space.free()} bytes, below "
                      f"store.min_free_bytes ({self.space.min_free})")
            self._enter_full(reason, 1)
            raise StorageFull(reason)

    async def wait_writable(self) -> None:
        """Return once no disk-full episode is on (at once when none is): a write that failed with
        ``StorageFull`` and must not be lost (a delivery outcome) waits here, then tries again."""
        while self.full_since is not None:
            fut = self._loop.create_future()
            self._waiters.append(fut)
            await fut

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def on_recovered(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` on the event loop each time a full episode ends."""
        self._on_recovered.append(callback)

    @property
    def full(self) -> bool:
        return self.full_since is not None

    def problems(self) -> list[str]:
        """What keeps the store from working normally, one line each (for /health)."""
        out = []
        if self._writer is None or not self._writer.is_alive():
            out.append("store: the writer is not running")
        if self.full_since is not None:
            out.append(f"store: {self.full_reason}; new mail is refused (452 4.3.1) until there is room")
        return out

    def _recovery_free(self) -> int:
        return max(self.space.min_free, RECOVERY_FREE)

    def _enter_full(self, reason: str, writes: int) -> None:
        """Count refused writes; the first of an episode is logged (one line per episode, not per write)."""
        with self._full_lock:
            self.full_refused += writes
            if self.full_since is not None:
                return
            self.full_since, self.full_reason = time.time(), reason
            self.episodes += 1
        log.error("store_full", reason=reason, free_bytes=self.space.free(), min_free_bytes=self.space.min_free,
                  path=str(self.path))

    def _leave_full(self, free: int) -> None:
        with self._full_lock:
            if self.full_since is None:
                return
            since, refused = self.full_since, self.full_refused
            self.full_since, self.full_reason, self.full_refused = None, "", 0
        log.info("store_space_recovered", after_seconds=round(time.time() - since, 3), refused_writes=refused,
                 free_bytes=free, path=str(self.path))
        if not self.secondary:
            self._keep_room()  # given back at a start on a full disk: set aside again
        for callback in (self._wake_waiters, *self._on_recovered):
            self._loop.call_soon_threadsafe(callback)

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
        """Run ``fn(conn, *args)`` on a read connection, inside one read transaction: every statement
        of ``fn`` sees the same snapshot (a row and its counts never come from two different commits)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_snapshot, fn, args)

    def _read_snapshot(self, fn: Callable[..., T], args: tuple) -> T:
        conn = self._reader()
        conn.execute("BEGIN")
        try:
            return fn(conn, *args)
        finally:
            conn.execute("COMMIT")

    def read_now(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` on the calling thread's own read connection, without the hop to the
        reader pool. Only for a bounded point lookup (one index probe, tens of microseconds): the
        hop costs several times more than such a query, and the caller (the event loop) waits for
        either. A WAL reader never waits for the writer."""
        return fn(self._reader(), *args)

    def read_now_snapshot(self, fn: Callable[..., T], *args: Any) -> T:
        """``read_now`` inside one read transaction (``read``'s snapshot), for a few bounded point
        reads that must agree; the caller has bounded them (nothing awaits between BEGIN and COMMIT)."""
        return self._read_snapshot(fn, args)

    async def read_point(self, fn: Callable[..., T], *args: Any) -> T:
        """A bounded point lookup (``read_now``'s kind): here on the calling thread, the hop costing
        more than the query; PostgreSQL (pg.py) runs it on the reader pool instead, where a query is
        a round trip to the server that must not stall the event loop."""
        return self.read_now(fn, *args)

    async def read_point_snapshot(self, fn: Callable[..., T], *args: Any) -> T:
        """``read_point`` for a few bounded point reads that must agree (``read_now_snapshot``)."""
        return self.read_now_snapshot(fn, *args)

    @property
    def writer_alive(self) -> bool:
        return self._writer is not None and self._writer.is_alive()


def _resolve(outcomes: list) -> None:
    for fut, ok, value in outcomes:
        if fut is None or fut.cancelled():  # None: the writer's own probe
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
