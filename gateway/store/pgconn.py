"""The connection adapter under pg.py: a psycopg connection that takes the store's SQLite SQL.

``PgConnection`` gives the repositories' functions what they use of a ``sqlite3.Connection``:
``execute``/``executemany`` taking SQLite SQL (translated once per statement by dialect.py), rows
that index by name and by position (``Row``, like ``sqlite3.Row``), ``lastrowid``, ``rowcount``,
``blobopen`` (emulated: the bytes go in with one UPDATE, reads take a substring); a constraint
violation is raised as ``sqlite3.IntegrityError``, the exception the repositories catch.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg
import psycopg.adapt
import psycopg.errors

from .dialect import Translator

# Seconds to wait for the server when opening (a PostgreSQL restarting behind the daemon).
CONNECT_TIMEOUT = 10


# ---------------------------------------------------------------------- rows and types

class Row:
    """A result row like ``sqlite3.Row``: by position, by column name (case-insensitive), ``keys()``."""

    __slots__ = ("_values", "_index")

    def __init__(self, values: Sequence[Any], index: dict[str, int]):
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            at = self._index.get(key)
            if at is None:
                at = self._index.get(key.lower())
                if at is None:
                    raise IndexError(f"No item with that key: {key!r}")
            return self._values[at]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Row) and tuple(self._values) == tuple(other._values) and self._index == other._index

    def __hash__(self) -> int:
        return hash(tuple(self._values))

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values))!r})"


def _row_factory(cursor: psycopg.Cursor) -> Callable[[Sequence[Any]], Row]:
    index: dict[str, int] = {}
    for i, column in enumerate(cursor.description or ()):
        index.setdefault(column.name, i)
        index.setdefault(column.name.lower(), i)
    return lambda values: Row(values, index)


class _BoolAsInt(psycopg.adapt.Dumper):
    """Python bools go in as integers: the schema keeps SQLite's 0/1 INTEGER flags."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(psycopg.adapt.Loader):
    """numeric (what SUM() of integers gives) as int or float, as SQLite returns it, not Decimal."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        return float(text) if "." in text or "e" in text.lower() or text in ("NaN", "Infinity", "-Infinity") else int(text)


def _configure(conn: psycopg.Connection) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_loader("numeric", _NumericAsNumber)


# ---------------------------------------------------------------------- the connection adapter

class PipelineFailed(BaseException):
    """A statement of a pipelined write batch failed (pg.py): its error reaches the client late, not
    where the repository code that ran the statement would catch it, so the writer rolls the batch
    back and runs it again one statement at a time. Never leaves the store's writer; a
    BaseException so that no repository's ``except Exception`` takes it for its own."""


class PgCursor:
    """What the repositories use of a sqlite3 cursor. In pipeline mode (pg.py's writer) the result
    is fetched when something of it is asked for: a statement nobody reads costs no wait."""

    __slots__ = ("_cur", "_conn", "_returns_id", "_lastrowid", "_rows")

    def __init__(self, cur: psycopg.Cursor, returns_id: bool, conn: "PgConnection | None" = None):
        self._cur = cur
        self._conn = conn
        self._returns_id = returns_id  # the RETURNING id dialect.py added: lastrowid, not rows for the caller
        self._lastrowid: int | None = None
        self._rows: list | None = [] if returns_id else None

    def _ready(self) -> None:
        conn = self._conn
        if conn is not None and conn.pipeline is not None and self._cur.pgresult is None:
            conn.sync()

    @property
    def lastrowid(self) -> int | None:
        if self._returns_id:
            self._returns_id = False
            self._ready()
            ids = self._cur.fetchall()
            self._lastrowid = ids[-1][0] if ids else None
        return self._lastrowid

    @property
    def rowcount(self) -> int:
        self._ready()
        return self._cur.rowcount

    @property
    def description(self):
        self._ready()
        return self._cur.description

    def fetchone(self) -> Row | None:
        if self._rows is not None:
            return self._rows.pop(0) if self._rows else None
        return self._cur.fetchone() if self.description else None

    def fetchall(self) -> list[Row]:
        if self._rows is not None:
            rows, self._rows = self._rows, []
            return rows
        return self._cur.fetchall() if self.description else []

    def fetchmany(self, size: int = 1) -> list[Row]:
        if self._rows is not None:
            rows, self._rows = self._rows[:size], self._rows[size:]
            return rows
        return self._cur.fetchmany(size) if self.description else []

    def __iter__(self):
        return iter(self.fetchall())


class PgBlob:
    """``sqlite3.Blob`` as the repositories use it: written whole (one UPDATE at close), read in pieces."""

    def __init__(self, conn: "PgConnection", table: str, column: str, row: int, readonly: bool):
        if not re.fullmatch(r"\w+", table) or not re.fullmatch(r"\w+", column):
            raise ValueError(f"blobopen: bad name {table}.{column}")
        self._conn, self._table, self._column, self._row, self._readonly = conn, table, column, row, readonly
        self._pieces: list[bytes] = []
        self._offset = 0
        self._length: int | None = None

    def __len__(self) -> int:
        if self._length is None:
            row = self._conn.raw.execute(f"SELECT octet_length({self._column}) FROM {self._table} WHERE id = %s",
                                         (self._row,)).fetchone()
            if row is None:
                raise sqlite3.OperationalError("no such rowid")
            self._length = row[0] or 0
        return self._length

    def seek(self, offset: int, origin: int = 0) -> None:
        self._offset = offset if origin == 0 else (self._offset + offset if origin == 1 else len(self) + offset)

    def read(self, length: int = -1) -> bytes:
        if length < 0:
            length = len(self) - self._offset
        row = self._conn.raw.execute(f"SELECT substring({self._column} from %s for %s) FROM {self._table} WHERE id = %s",
                                     (self._offset + 1, length, self._row)).fetchone()
        data = bytes(row[0]) if row and row[0] is not None else b""
        self._offset += len(data)
        return data

    def write(self, data: bytes) -> None:
        if self._readonly:
            raise sqlite3.OperationalError("the blob is read-only")
        self._pieces.append(bytes(data))

    def close(self) -> None:
        if self._pieces:
            body, self._pieces = b"".join(self._pieces), []
            self._conn.raw.execute(f"UPDATE {self._table} SET {self._column} = %s WHERE id = %s", (body, self._row))

    def __enter__(self) -> "PgBlob":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


class PgConnection:
    """A psycopg connection that takes the store's SQLite SQL (see the module docstring)."""

    dialect = "postgresql"

    def __init__(self, raw: psycopg.Connection, translate: Translator):
        self.raw = raw
        self._translate = translate
        self.statements = 0  # the repositories' statements run here
        self.round_trips = 0  # the waits for the server: a statement each, or in pipeline mode a sync each
        # Set by pg.py's writer for a pipelined batch: statements are sent without waiting for their
        # results, and an error comes back as PipelineFailed (see there).
        self.pipeline: psycopg.Pipeline | None = None
        # Set by pg.py's writer when it runs a batch again: each statement in a savepoint of its own.
        # A failed statement aborts a PostgreSQL transaction (SQLite's goes on), and a repository
        # that catches the IntegrityError and carries on (apikeys, usecases, tenants...) would then
        # have every later statement of the batch fail, or its COMMIT silently roll everything back.
        self.statement_savepoints = False

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> PgCursor:
        self.statements += 1
        statement = self._translate(sql)
        if self.pipeline is not None:
            try:
                return PgCursor(self.raw.execute(statement.sql, tuple(params) if params else None), statement.returns_id, self)
            except psycopg.Error as exc:
                raise PipelineFailed() from exc
        return PgCursor(self._alone(lambda: self.raw.execute(statement.sql, tuple(params) if params else None)),
                        statement.returns_id)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> PgCursor:
        self.statements += 1
        statement = self._translate(sql, many=True)
        params = [tuple(p) for p in seq]
        cur = self.raw.cursor()
        if not params:
            return PgCursor(cur, False)
        if self.pipeline is not None:
            try:
                cur.executemany(statement.sql, params)
            except psycopg.Error as exc:
                raise PipelineFailed() from exc
            return PgCursor(cur, False, self)
        self._alone(lambda: cur.executemany(statement.sql, params))
        return PgCursor(cur, False)

    def _alone(self, run: Callable[[], Any]) -> Any:
        """One statement waited for; a constraint violation as sqlite3.IntegrityError, and with
        ``statement_savepoints`` undone alone (the transaction goes on, as SQLite's does)."""
        self.round_trips += 1
        if self.statement_savepoints:
            self.run("SAVEPOINT s")
        try:
            out = run()
        except psycopg.errors.IntegrityError as exc:
            if self.statement_savepoints:
                self.run("ROLLBACK TO s")
            raise sqlite3.IntegrityError(str(exc)) from exc
        if self.statement_savepoints:
            self.run("RELEASE s")
        return out

    def run(self, sql: str) -> None:
        """A statement of the writer's or a reader's own (BEGIN, SAVEPOINT, COMMIT), SQL as written;
        in pipeline mode sent without waiting."""
        if self.pipeline is None:
            self.round_trips += 1
        self.raw.execute(sql)

    def sync(self) -> None:
        """Wait for every pipelined statement's result; the first error as PipelineFailed."""
        self.round_trips += 1
        try:
            self.pipeline.sync()
        except psycopg.Error as exc:
            raise PipelineFailed() from exc

    def blobopen(self, table: str, column: str, row: int, readonly: bool = False) -> PgBlob:
        return PgBlob(self, table, column, row, readonly)

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=autocommit, row_factory=_row_factory, connect_timeout=CONNECT_TIMEOUT,
                           application_name="gateway")
    _configure(conn)
    return conn


__all__ = ["Row", "PipelineFailed", "PgCursor", "PgBlob", "PgConnection", "connect", "CONNECT_TIMEOUT"]
