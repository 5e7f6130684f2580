"""Turns at writing: the daemon's writer and a secondary's (the web worker's) on one SQLite file.

WAL lets two processes write, one transaction at a time. SQLite's busy handler alone starves the
secondary: the daemon's writer begins its next batch the moment it committed, while the secondary
sleeps 1, 2, 5, 10 ms... between its tries (scripts/bench_secondary.py, 40 writers beside 200
writes/s: the secondary's p99 250-1,200 ms, the daemon's writes/s down 30-45%). So they take turns
on ``<db>-turn``, a file beside the database:

    secondary:  flock(LOCK_EX) -> BEGIN IMMEDIATE, tried every TURN_POLL until the daemon's running
                transaction ends -> ... -> COMMIT -> flock(LOCK_UN)
    daemon:     before each BEGIN, a held LOCK_EX means a secondary waits to write: it goes first
                (the daemon waits for its turn to end, GIVE_WAY at most)

The bound keeps a secondary that stopped (or hangs) inside its turn from stopping the daemon's
commits. Without the file (it could not be made) the writers still serialise, only less fairly.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path

import structlog

log = structlog.get_logger("store")

TURN_SUFFIX = "-turn"
# The longest the daemon's writer lets a secondary's write go first.
GIVE_WAY = 0.05
# Seconds between tries (a secondary's BEGIN, the daemon's look at the turn), and a BEGIN's limit.
TURN_POLL = 0.0005
TURN_TIMEOUT = 30.0


class Turns:
    def __init__(self, database: Path | None):
        self._fd: int | None = None
        if database is None:  # no file: turns are not taken
            return
        try:
            self._fd = os.open(database.with_name(database.name + TURN_SUFFIX), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("store_turn_file_unavailable", error=exc.strerror)

    def give_way(self) -> None:
        """The daemon's writer, before BEGIN: a secondary holding its turn writes first."""
        if self._fd is None:
            return
        deadline = None
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                deadline = deadline or time.monotonic() + GIVE_WAY
                if time.monotonic() >= deadline:
                    return
                time.sleep(TURN_POLL)
                continue
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            return

    def begin(self, conn: sqlite3.Connection) -> None:
        """A secondary's BEGIN: take the turn (the daemon starts no new transaction), then begin as
        soon as the daemon's running one ends. ``end()`` after COMMIT or ROLLBACK."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        deadline = time.monotonic() + TURN_TIMEOUT
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                if code is None or code & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    self.end()
                    raise
            time.sleep(TURN_POLL)

    def end(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
