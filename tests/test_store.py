"""The store's database: group commit, per-write rollback, migrations and the integrity check."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading

import pytest

from gateway.errors import StoreError
from gateway.store import Store
from gateway.store.db import Database, migrations


@pytest.fixture
async def db(tmp_path, store_url):
    """The database on each backend (tests/support/postgres.py ``store_url``)."""
    if store_url:
        from gateway.store.pg import PgDatabase

        database = await PgDatabase.open(store_url, tmp_path / "gateway.db")
    else:
        database = await Database.open(tmp_path / "gateway.db")
    yield database
    await database.close()
    if getattr(database, "witness", None) is not None:
        database.witness.close()


def insert_tenant(conn: sqlite3.Connection, name: str) -> int:
    return conn.execute("INSERT INTO tenants (name, created_at) VALUES (?, 0)", (name,)).lastrowid


def committed_names(where) -> set[str]:
    """What another connection sees: only committed rows (``where``: a PostgreSQL store or a path)."""
    url = getattr(where, "url", None)
    if url:
        import psycopg

        if getattr(where, "witness", None) is None:  # one connection of its own, reused (connecting costs ~30 ms)
            where.witness = psycopg.connect(url, autocommit=True)
        return {r[0] for r in where.witness.execute("SELECT name FROM tenants")}
    conn = sqlite3.connect(where)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM tenants")}
    finally:
        conn.close()


async def hold_writer(db: Database) -> tuple[threading.Event, asyncio.Future]:
    """Occupy the writer thread until the returned event is set, so that the writes queued
    meanwhile all wait for the next batch. Returns the event and the blocking write."""
    release, entered = threading.Event(), threading.Event()

    def block(conn):
        entered.set()
        release.wait(30)

    task = asyncio.ensure_future(db.write(block))
    await asyncio.to_thread(entered.wait, 30)
    return release, task


async def test_concurrent_writes_share_commits_and_resume_after_their_commit(db, tmp_path):
    path = db if getattr(db, "url", None) else tmp_path / "gateway.db"
    seen_after_resume: list[bool] = []

    async def one(i: int) -> None:
        await db.write(insert_tenant, f"t{i}")
        # This coroutine resumes only once its write is committed: a separate connection sees it.
        seen_after_resume.append(f"t{i}" in committed_names(path))

    commits_before = db.commits
    await asyncio.gather(*(one(i) for i in range(300)))
    assert all(seen_after_resume) and len(seen_after_resume) == 300
    assert db.writes >= 300
    assert db.commits - commits_before < 300  # group commit: fewer commits than writes
    assert committed_names(path) == {f"t{i}" for i in range(300)}


async def test_writes_queued_meanwhile_go_in_one_commit(db):
    release, blocker = await hold_writer(db)
    commits_before = db.commits
    tasks = [asyncio.ensure_future(db.write(insert_tenant, f"b{i}")) for i in range(100)]
    await asyncio.sleep(0)  # one loop turn: every task has queued its write
    assert not any(t.done() for t in tasks)  # nobody resumes before the commit
    release.set()
    await blocker
    ids = await asyncio.gather(*tasks)
    assert len(set(ids)) == 100
    assert db.commits - commits_before == 2  # the blocker's batch, then all 100 together


async def test_a_failing_write_rolls_back_alone(db, tmp_path):
    def half_then_fail(conn):
        insert_tenant(conn, "broken")
        raise ValueError("refused halfway")

    release, blocker = await hold_writer(db)
    commits_before = db.commits
    a = asyncio.ensure_future(db.write(insert_tenant, "a"))
    bad = asyncio.ensure_future(db.write(half_then_fail))
    dup = asyncio.ensure_future(db.write(insert_tenant, "a"))  # UNIQUE violation: sqlite's own error
    c = asyncio.ensure_future(db.write(insert_tenant, "c"))
    await asyncio.sleep(0)
    release.set()
    await blocker
    assert isinstance(await a, int) and isinstance(await c, int)
    with pytest.raises(ValueError, match="refused halfway"):
        await bad
    with pytest.raises(sqlite3.IntegrityError):
        await dup
    assert db.commits - commits_before == 2  # all four shared one commit
    assert committed_names(db if getattr(db, "url", None) else tmp_path / "gateway.db") == {"a", "c"}


async def test_reads_use_their_own_connections_and_cannot_write(db):
    await db.write(insert_tenant, "r")
    assert await db.read(lambda c: c.execute("SELECT name FROM tenants").fetchone()[0]) == "r"
    with pytest.raises(Exception, match="readonly|read-only|query_only") as refused:
        await db.read(insert_tenant, "nope")
    assert type(refused.value).__name__ in ("OperationalError", "ReadOnlySqlTransaction")
    names = await asyncio.gather(*(db.read(lambda c: threading.current_thread().name) for _ in range(20)))
    assert all(n.startswith("store-read") for n in names)


async def test_settings_and_file_mode(db, tmp_path):
    if getattr(db, "url", None):
        pytest.skip("SQLite's pragmas and file")
    def pragmas(conn):
        return (conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA synchronous").fetchone()[0],
                conn.execute("PRAGMA foreign_keys").fetchone()[0])

    assert await db.write(pragmas) == ("wal", 2, 1)  # synchronous=FULL is 2
    assert await db.read(pragmas) == ("wal", 2, 1)
    assert stat.S_IMODE(os.stat(tmp_path / "gateway.db").st_mode) == 0o600


async def test_migrations_applied_once_in_order(tmp_path):
    db = await Database.open(tmp_path / "gateway.db")
    versions = await db.read(lambda c: [r[0] for r in c.execute("SELECT version FROM schema_migrations ORDER BY version")])
    assert versions == [v for v, _, _ in migrations()]
    assert versions == sorted(versions) and versions[0] == 1
    await db.close()
    db = await Database.open(tmp_path / "gateway.db")  # nothing new to apply, nothing applied twice
    assert await db.read(lambda c: c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]) == len(versions)
    await db.close()


async def test_newer_schema_is_refused(tmp_path):
    db = await Database.open(tmp_path / "gateway.db")
    await db.write(lambda c: c.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 0)"))
    await db.close()
    with pytest.raises(StoreError, match="schema version 9999, newer than this gateway knows"):
        await Database.open(tmp_path / "gateway.db")


async def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "gateway.db"
    path.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(StoreError) as exc:
        await Database.open(path)
    assert str(exc.value) == f"{path}: file is not a database; refusing to start"


async def test_damaged_pages_fail_the_integrity_check(tmp_path):
    path = tmp_path / "gateway.db"
    db = await Database.open(path)
    await db.write(lambda c: [insert_tenant(c, f"name-{i:05d}-" + "x" * 200) for i in range(2000)])
    await db.close()  # checkpoints: everything is in the main file
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for offset in range(10 * page, 14 * page, 7):  # scribble over index and table pages in the middle
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="refusing to start"):
        await Database.open(path)


async def test_close_commits_what_is_queued_and_then_refuses(tmp_path):
    db = await Database.open(tmp_path / "gateway.db")
    pending = [asyncio.ensure_future(db.write(insert_tenant, f"q{i}")) for i in range(50)]
    await asyncio.sleep(0)
    await db.close()
    assert len(await asyncio.gather(*pending)) == 50
    assert len(committed_names(tmp_path / "gateway.db")) == 50
    with pytest.raises(StoreError, match="closed"):
        await db.write(insert_tenant, "late")
    await db.close()  # twice is harmless


async def test_probe_writable(tmp_path):
    store = await Store.open(tmp_path / "gateway.db")
    assert await store.probe_writable(timeout=5)
    await store.close()
    assert not await store.probe_writable(timeout=5)


def test_queue_ids_are_crockford_base32_of_time_and_sequence_and_sort_by_time():
    """The id is the 80-bit (milliseconds << 30 | sequence) in Crockford base32, as b32encode spells it."""
    import base64

    from gateway.store.queue import QueueIds

    rfc4648, crockford = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghjkmnpqrstvwxyz"
    times = (1764582000.123, 1764582000.123, 1764582000.124, 4102444800.0)
    ids = QueueIds()
    made = [ids.new(now) for now in times]
    assert made == sorted(made) and len(set(made)) == 4
    for qid, now in zip(made, times):
        value = int.from_bytes(base64.b32decode(qid.translate(str.maketrans(crockford, rfc4648))), "big")
        assert value >> 30 == int(now * 1000)
        assert base64.b32encode(value.to_bytes(10, "big")).decode().translate(str.maketrans(rfc4648, crockford)) == qid


async def test_a_secondary_opens_beside_the_daemon_and_writes_through_its_transactions(tmp_path):
    """The web worker's store: the daemon's file as it is; a write that meets the daemon's open
    transaction waits for it (busy_timeout) instead of failing with 'database is locked'."""
    path = tmp_path / "gateway.db"
    with pytest.raises(StoreError, match="cannot open the daemon's store"):
        await Database.open(path, secondary=True)
    assert not path.exists()  # a secondary never creates the file
    primary = await Database.open(path)
    secondary = await Database.open(path, secondary=True)
    try:
        inside, release = threading.Event(), threading.Event()

        def held(conn):
            insert_tenant(conn, "daemon")
            inside.set()
            release.wait(10)

        first = asyncio.ensure_future(primary.write(held))
        await asyncio.to_thread(inside.wait, 10)
        second = asyncio.ensure_future(secondary.write(insert_tenant, "worker"))
        # No event says the secondary's BEGIN IMMEDIATE is waiting in SQLite's busy handler: give it
        # the time to get there (it would fail at once with 'database is locked' without busy_timeout).
        await asyncio.sleep(0.2)
        assert not second.done()
        release.set()
        await asyncio.gather(first, second)
        assert committed_names(path) == {"daemon", "worker"}
        assert await primary.read(lambda c: c.execute("SELECT count(*) FROM tenants").fetchone()[0]) == 2
    finally:
        await secondary.close()
        await primary.close()


async def test_a_secondary_refuses_a_schema_it_does_not_know(tmp_path):
    path = tmp_path / "gateway.db"
    db = await Database.open(path)
    newest = max(v for v, _, _ in migrations())
    await db.write(lambda c: c.execute("DELETE FROM schema_migrations WHERE version = ?", (newest,)))
    await db.close()
    with pytest.raises(StoreError, match=f"a secondary needs WAL and version {newest}"):
        await Database.open(path, secondary=True)


async def test_the_daemon_lets_a_secondary_holding_its_turn_go_first_but_not_for_ever(tmp_path):
    """The turn file: a secondary about to write holds it; the daemon's writer waits before its next
    BEGIN (the busy handler alone let it take the lock again and again: the secondary's p99 was
    250-1,200 ms beside a busy daemon, scripts/bench_secondary.py), but a secondary stopped with its
    turn held delays a batch by GIVE_WAY at most."""
    import fcntl

    from gateway.store.turns import GIVE_WAY, TURN_SUFFIX

    path = tmp_path / "gateway.db"
    db = await Database.open(path)
    try:
        fd = os.open(str(path) + TURN_SUFFIX, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # what a secondary's _begin_turn takes
            began = asyncio.get_running_loop().time()
            await db.write(insert_tenant, "after-the-turn")
            assert asyncio.get_running_loop().time() - began >= GIVE_WAY
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        assert committed_names(path) == {"after-the-turn"}
    finally:
        await db.close()
