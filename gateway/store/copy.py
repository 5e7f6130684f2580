"""`gateway store migrate-to URL`: an SQLite store copied into an empty PostgreSQL one, then verified.

The daemon is stopped (the command holds the state lock), so the file does not change underneath.
The target is brought to this gateway's schema (migrations_pg/) and must hold no rows. Every table
is copied in dependency order (referenced tables first) in batches of ``batch`` rows with COPY,
all in one transaction (the foreign keys are DEFERRABLE and checked at its COMMIT, so a
half-copied store is never visible); then each identity's sequence is set past the largest id.
After the commit every table is read back from both sides: the row counts and a checksum of the
rows (order-independent: the sum of a digest per row, so the two databases' collations do not
matter) must agree. A difference is an error naming the table; the target keeps what was copied
(drop and create the database to try again).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .db import connect as sqlite_connect
from .db import migrations
from .pg import connect as pg_connect
from .pg import migrate_locked, redact

BATCH = 5000
_MASK = (1 << 64) - 1


def _canonical(value: Any) -> bytes:
    """One value as both backends give it back: integral floats as integers (SQLite's REAL columns
    return 1.0 where PostgreSQL's BIGINT returns 1 and the reverse), bytes as hex."""
    if value is None:
        return b"\x00N"
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"\x00B" + bytes(value).hex().encode()
    if isinstance(value, str):
        return b"\x00S" + value.encode()
    return b"\x00" + type(value).__name__[:1].encode() + repr(value).encode()


def checksum(rows: Iterable[Iterable[Any]]) -> tuple[int, int]:
    """(rows, checksum): the sum mod 2^64 of a BLAKE2b-64 per row; independent of the rows' order."""
    count = total = 0
    for row in rows:
        digest = hashlib.blake2b(b"".join(_canonical(v) for v in row), digest_size=8).digest()
        total = (total + int.from_bytes(digest, "big")) & _MASK
        count += 1
    return count, total


def _dependency_order(pg) -> list[str]:
    """The store's tables, each after every table it references."""
    tables = [r[0] for r in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                                       " AND tablename != 'schema_migrations' ORDER BY tablename").fetchall()]
    refs: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in pg.execute(
            "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c"
            " JOIN pg_namespace n ON n.oid = c.connamespace WHERE c.contype = 'f' AND n.nspname = current_schema()").fetchall():
        if child in refs and parent != child:
            refs[child].add(parent)
    order: list[str] = []
    while len(order) < len(tables):
        ready = [t for t in tables if t not in order and refs[t] <= set(order)]
        if not ready:  # a cycle (domains <-> usecases): the deferred checks allow any order among them
            ready = [next(t for t in tables if t not in order)]
        order.extend(ready)
    return order


def _columns(pg, table: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in pg.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s ORDER BY ordinal_position", (table,)).fetchall()]


def _source_columns(lite: sqlite3.Connection, table: str, pg_columns: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(PostgreSQL column, SQLite expression, PostgreSQL type) for every column both sides have."""
    have = {r[1] for r in lite.execute(f'PRAGMA table_info("{table}")')}
    out = []
    for name, kind in pg_columns:
        if name in have:
            out.append((name, f'"{name}"', kind))
        elif name == "id" and table == "message_ids":
            out.append((name, "rowid", kind))  # PostgreSQL's arrival order is SQLite's rowid
    missing = have - {c for c, _, _ in out}
    if missing:
        raise StoreError(f"{table}: column(s) {sorted(missing)} have no place in the PostgreSQL schema")
    return out


def _fit(value: Any, kind: str) -> Any:
    # SQLite keeps an integral REAL written into an INTEGER column as 1.0; PostgreSQL's bigint wants 1.
    if kind == "bigint" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def migrate_to(sqlite_path: Path, url: str, *, batch: int = BATCH, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy the store at ``sqlite_path`` into the empty PostgreSQL database at ``url`` and verify it.
    Returns {"tables": {name: {"rows", "checksum"}}, "rows", "seconds"}; raises ``StoreError``."""
    began = time.monotonic()
    if not sqlite_path.exists():
        raise StoreError(f"{sqlite_path}: no store to copy")
    lite = sqlite_connect(sqlite_path, readonly=True, existing=True)
    try:
        have = lite.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        newest = max(v for v, _, _ in migrations())
        if have != newest:
            raise StoreError(f"{sqlite_path} is at schema version {have}, this gateway at {newest}: start and stop the daemon "
                             "once on it (it migrates), then copy")
        if [r[0] for r in lite.execute("PRAGMA quick_check")] != ["ok"]:
            raise StoreError(f"{sqlite_path} fails its integrity check; refusing to copy it")
        try:
            pg = pg_connect(url)
        except Exception as exc:  # noqa: BLE001 - psycopg's connection errors: one line, no password
            raise StoreError(f"{redact(url)}: cannot connect: {exc}") from exc
        try:
            migrate_locked(pg)
            order = _dependency_order(pg)
            busy = [t for t in order if pg.execute(f'SELECT EXISTS (SELECT 1 FROM "{t}")').fetchone()[0]]
            if busy:
                raise StoreError(f"{redact(url)} is not empty ({', '.join(busy[:5])}{'...' if len(busy) > 5 else ''} hold rows); "
                                 "migrate-to copies into an empty database only")
            lite_tables = {r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            extra = lite_tables - set(order) - {"schema_migrations"} - {t for t in lite_tables if t.startswith("sqlite_")}
            if extra:
                raise StoreError(f"table(s) {sorted(extra)} have no place in the PostgreSQL schema")
            plan = {t: _source_columns(lite, t, _columns(pg, t)) for t in order}
            copied: dict[str, int] = {}
            with pg.transaction():
                pg.execute("SET CONSTRAINTS ALL DEFERRED")
                for table in order:
                    cols = plan[table]
                    names = ", ".join(f'"{c}"' for c, _, _ in cols)
                    source = lite.execute(f'SELECT {", ".join(e for _, e, _ in cols)} FROM "{table}"')
                    kinds = [k for _, _, k in cols]
                    n = 0
                    with pg.cursor() as cur:
                        while True:
                            rows = source.fetchmany(batch)
                            if not rows:
                                break
                            with cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
                                for row in rows:
                                    copy.write_row([_fit(v, k) for v, k in zip(row, kinds)])
                            n += len(rows)
                    copied[table] = n
                    say(f"copied {table}: {n} rows")
                for table, cols in plan.items():
                    if any(c == "id" for c, _, _ in cols) and pg.execute(
                            "SELECT pg_get_serial_sequence(%s, 'id')", (f'"{table}"',)).fetchone()[0]:
                        pg.execute(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), COALESCE(MAX(id), 0) + 1, false)"
                                   f' FROM "{table}"')
            report: dict[str, dict[str, int]] = {}
            for table, cols in plan.items():
                mine = checksum(lite.execute(f'SELECT {", ".join(e for _, e, _ in cols)} FROM "{table}"'))
                theirs = checksum(pg.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c, _, _ in cols)} FROM "{table}"'))
                if mine != theirs:
                    raise StoreError(f"verification failed for {table}: SQLite has {mine[0]} rows (checksum {mine[1]:016x}),"
                                     f" PostgreSQL {theirs[0]} (checksum {theirs[1]:016x})")
                report[table] = {"rows": mine[0], "checksum": mine[1]}
                say(f"verified {table}: {mine[0]} rows, checksum {mine[1]:016x}")
        finally:
            pg.close()
    finally:
        lite.close()
    rows = sum(t["rows"] for t in report.values())
    seconds = round(time.monotonic() - began, 3)
    say(f"migrated {sqlite_path} to {redact(url)}: {len(report)} tables, {rows} rows, verified, in {seconds} s")
    return {"tables": report, "rows": rows, "seconds": seconds}
