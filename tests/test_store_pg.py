"""The store on PostgreSQL: its schema against SQLite's, its migrations, the SQL translation, and the
delivery claim shared by two nodes (FOR UPDATE SKIP LOCKED). The repositories' own behaviour runs on
both backends in their test files (the ``store_url`` fixture)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import psycopg
import pytest

from gateway.config import StoreConfig
from gateway.errors import StoreError
from gateway.store import Store
from gateway.store.db import Database, migrations
from gateway.store.dialect import Translator, translate
from gateway.store.pg import PgDatabase, pg_migrations, redact
from gateway.store.queue import NewMessage, QueueIds
from tests.support.submission import make_usecase


def sqlite_schema(path) -> dict[str, set[str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        conn.close()


def pg_schema(url: str) -> dict[str, set[str]]:
    with psycopg.connect(url) as conn:
        out: dict[str, set[str]] = {}
        for table, column in conn.execute("SELECT table_name, column_name FROM information_schema.columns"
                                          " WHERE table_schema = current_schema()"):
            out.setdefault(table, set()).add(column)
        return out


async def test_the_two_schemas_have_the_same_tables_columns_and_versions(tmp_path, pg_store_url):
    db = await Database.open(tmp_path / "gateway.db")
    versions = await db.read(lambda c: [tuple(r) for r in c.execute("SELECT version, name FROM schema_migrations ORDER BY version")])
    await db.close()
    lite, pg = sqlite_schema(tmp_path / "gateway.db"), pg_schema(pg_store_url)
    pg["message_ids"].discard("id")  # PostgreSQL only: SQLite's rowid (the arrival order retention and threads walk)
    assert sorted(pg) == sorted(lite)
    assert {t: sorted(c) for t, c in pg.items()} == {t: sorted(c) for t, c in lite.items()}
    with psycopg.connect(pg_store_url) as conn:
        assert [tuple(r) for r in conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")] == versions


async def test_every_sqlite_migration_after_the_baseline_has_a_postgresql_one():
    baseline = pg_migrations()[0][0]
    later = [(v, n) for v, n, _ in migrations() if v > baseline]
    assert [(v, n) for v, n, _ in pg_migrations()[1:]] == later


async def test_migrations_are_not_applied_twice_and_a_newer_schema_is_refused(tmp_path, pg_store_url):
    db = await PgDatabase.open(pg_store_url, tmp_path / "gateway.db")
    count = await db.read(lambda c: c.execute("SELECT count(*) FROM schema_migrations").fetchone()[0])
    assert count == len(migrations())
    await db.write(lambda c: c.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 0)"))
    await db.close()
    with pytest.raises(StoreError, match="schema version 9999, newer than this gateway knows"):
        await PgDatabase.open(pg_store_url, tmp_path / "gateway.db")
    with psycopg.connect(pg_store_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = 9999")


async def test_an_unreachable_server_is_a_store_error_without_the_password(tmp_path):
    url = "postgresql://gateway:sekrit@127.0.0.1:1/none"
    with pytest.raises(StoreError, match="cannot connect") as refused:
        await PgDatabase.open(url, tmp_path / "gateway.db")
    assert "sekrit" not in str(refused.value)
    assert redact(url) == "postgresql://gateway:***@127.0.0.1:1/none"
    assert redact("postgresql://gateway@h/db") == "postgresql://gateway@h/db"


@pytest.mark.parametrize("sqlite_sql, pg_sql", [
    ("SELECT * FROM t WHERE a = ? AND b LIKE '50%' LIMIT ?",
     "SELECT * FROM t WHERE a = %s AND b ILIKE '50%%' LIMIT NULLIF(GREATEST(%s::bigint, -1), -1)"),
    ("INSERT OR IGNORE INTO meta (key, value) VALUES ('k', ?)",
     "INSERT INTO meta (key, value) VALUES ('k', %s) ON CONFLICT DO NOTHING"),
    ("SELECT id FROM events INDEXED BY events_subject WHERE subject = '?'", "SELECT id FROM events WHERE subject = '?'"),
    ("SELECT IFNULL(max(a, b), 0), max(c), group_concat(x || ':' || y, ' '), instr(e, ?) FROM t",
     "SELECT COALESCE(GREATEST(a, b), 0), max(c), string_agg(x || ':' || y, ' '), strpos(e, %s) FROM t"),
    ("SELECT SUM(state = 'held') FROM r", "SELECT SUM((state = 'held')::int) FROM r"),
    ("SELECT 1 FROM c WHERE json_extract(c.settings, '$.incoming.enabled') = 1",
     "SELECT 1 FROM c WHERE (c.settings::jsonb #> '{incoming,enabled}') IN ('true', '1')"),
    ("DELETE FROM k WHERE s NOT IN (SELECT value FROM json_each(?))",
     "DELETE FROM k WHERE s NOT IN (SELECT value FROM json_array_elements_text(%s::json) AS j(value))"),
    ("UPDATE r SET c = ? WHERE id IN (SELECT id FROM r WHERE c IS NULL ORDER BY n LIMIT ?) RETURNING id",
     "UPDATE r SET c = %s WHERE id = ANY(ARRAY(SELECT id FROM r WHERE c IS NULL ORDER BY n LIMIT NULLIF(GREATEST(%s::bigint, -1), -1)"
     " FOR UPDATE SKIP LOCKED)) RETURNING id"),
    ("SELECT rowid, at FROM attempts ORDER BY rowid LIMIT 5", "SELECT id, at FROM attempts ORDER BY id LIMIT 5"),
    ("SELECT 1 FROM m WHERE 1 AND x = 1 AND 0 AND (y OR 1) ORDER BY id", "SELECT 1 FROM m WHERE TRUE AND x = 1 AND FALSE AND (y OR TRUE) ORDER BY id"),
    ("SELECT 1 FROM r WHERE r.rcpt = ? COLLATE NOCASE", "SELECT 1 FROM r WHERE lower(r.rcpt) = lower(%s)"),
    ("SELECT * FROM pauses WHERE tenant_id IS ? AND usecase_id IS NOT ? AND x IS NULL",
     "SELECT * FROM pauses WHERE tenant_id IS NOT DISTINCT FROM %s AND usecase_id IS DISTINCT FROM %s AND x IS NULL"),
])
def test_translation(sqlite_sql, pg_sql):
    assert translate(sqlite_sql).sql == pg_sql


def test_an_insert_returns_its_id_and_an_upsert_names_the_existing_row():
    columns = {"usage_monthly": frozenset({"tenant_id", "month", "messages"})}
    up = translate("INSERT INTO usage_monthly (tenant_id, month, messages) VALUES (?, ?, 1)"
                   " ON CONFLICT (tenant_id, month) DO UPDATE SET messages = messages + 1", frozenset({"tenants"}), columns=columns)
    assert up.sql.endswith("DO UPDATE SET messages = usage_monthly.messages + 1") and not up.returns_id
    ins = translate("INSERT INTO tenants (name, created_at) VALUES (?, 0)", frozenset({"tenants"}))
    assert ins.sql.endswith(" RETURNING id") and ins.returns_id
    assert not translate("INSERT INTO tenants (name) VALUES (?)", frozenset({"tenants"}), many=True).returns_id


def test_each_statement_is_translated_once_and_cheaply():
    """The cache: a statement costs one dict lookup after its first translation (measured here)."""
    tr = Translator(frozenset({"tenants"}))
    sql = ("SELECT m.queue_id, SUM(r.state = 'pending') AS pending FROM messages m JOIN recipients r ON r.message_id = m.id"
           " WHERE m.tenant_id = ? AND r.rcpt LIKE ? GROUP BY m.id LIMIT ?")
    began = time.perf_counter()
    first = tr(sql)
    cold = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(10000):
        assert tr(sql) is first
    warm = (time.perf_counter() - began) / 10000
    assert len(tr) == 1
    assert warm < cold and warm < 20e-6, (cold, warm)


async def _queued(store: Store, n: int) -> None:
    ctx = await make_usecase(store)
    ids = QueueIds()
    for i in range(n):
        qid = ids.new()
        await store.queue.put(NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["usecase_id"],
                                         mail_from="app@example.com", message_id=f"{qid}@example.com", body=b"Subject: x\r\n\r\nhi\r\n",
                                         recipients=[f"r{i}@dest.example"], now=time.time() - 10))


async def test_two_nodes_claim_different_recipients_one_batch_after_the_other(tmp_path, pg_store_url):
    """Node A's claim transaction is open (its rows locked, not committed) when node B claims: B's batch
    waits for A's (the nodes' writers take one lock, pg.WRITE_LOCK) and then claims the other rows,
    never A's a second time. (Before the lock, B's claim went past A's with SKIP LOCKED; with the claim
    as IN (SELECT ... LIMIT) PostgreSQL ran that subquery per row and one claim of 3 took all 6.)"""
    config = StoreConfig(url=pg_store_url)
    a = await Store.open(tmp_path / "a.db", config)
    b = await Store.open(tmp_path / "b.db", config)
    try:
        await _queued(a, 6)
        inside, release = threading.Event(), threading.Event()

        def claim_and_hold(conn):
            from gateway.store.delivery import _claim

            rows = _claim(conn, "node-a", time.time(), 3)
            inside.set()
            release.wait(20)
            return rows

        held = asyncio.ensure_future(a.db.write(claim_and_hold))
        await asyncio.to_thread(inside.wait, 20)
        order: list[str] = []
        held.add_done_callback(lambda _: order.append("a"))
        claim_b = asyncio.ensure_future(b.delivery.claim("node-b", 10))
        claim_b.add_done_callback(lambda _: order.append("b"))
        # B's batch is waiting on A's lock (seen from the server), not done.
        await asyncio.wait_for(_lock_waiters(pg_store_url, 1), 10)
        assert not claim_b.done()
        release.set()
        got_a, got_b = await asyncio.wait_for(asyncio.gather(held, claim_b), 20)
        assert order == ["a", "b"]
        ids_a, ids_b = {r["id"] for r in got_a}, {r["id"] for r in got_b}
        assert (len(ids_a), len(ids_b), ids_a & ids_b) == (3, 3, set()), (got_a, got_b)
        owners = await a.db.read(lambda c: sorted({r[0] for r in c.execute("SELECT claimed_by FROM recipients")}))
        assert owners == ["node-a", "node-b"]
    finally:
        await b.close()
        await a.close()


async def _lock_waiters(url: str, n: int) -> None:
    """Until ``n`` sessions wait for an advisory lock."""
    import psycopg

    from gateway.store.pg import WRITE_LOCK

    def waiting() -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                " AND objid = %s", (WRITE_LOCK,)).fetchone()[0]
    while await asyncio.to_thread(waiting) < n:
        await asyncio.sleep(0.02)


async def test_bodies_go_in_and_out_whole_and_in_pieces(tmp_path, pg_store_url):
    """blobopen on PostgreSQL: a message body larger than one piece, written whole, read back exact."""
    store = await Store.open(tmp_path / "gateway.db", StoreConfig(url=pg_store_url))
    try:
        ctx = await make_usecase(store)
        body = bytes(range(256)) * 4096 + b"%s ? '\x00"
        put = await store.queue.put(NewMessage(queue_id="q1", tenant_id=ctx["tenant_id"], usecase_id=ctx["usecase_id"],
                                               mail_from="app@example.com", message_id="m1@example.com", body=body,
                                               recipients=["r@dest.example"]))
        assert (await store.delivery.bodies([put["id"]]))[put["id"]] == body
    finally:
        await store.close()


async def test_a_dropped_connection_fails_its_batch_and_the_next_write_reconnects(tmp_path, pg_store_url):
    """A server restart or a killed backend: the writes of that batch fail (their callers are told),
    the next batch and the next read get new connections, nothing has to restart the daemon."""
    db = await PgDatabase.open(pg_store_url, tmp_path / "gateway.db")
    try:
        def insert(conn, name):
            return conn.execute("INSERT INTO tenants (name, created_at) VALUES (?, 0)", (name,)).lastrowid

        await db.write(insert, "before")
        assert await db.read(lambda c: c.execute("SELECT count(*) FROM tenants").fetchone()[0]) == 1
        with psycopg.connect(pg_store_url, autocommit=True) as admin:
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                   " WHERE datname = current_database() AND pid != pg_backend_pid()").fetchone()[0]
        assert killed >= 2  # the writer and the reader
        with pytest.raises(StoreError, match="commit failed"):
            await db.write(insert, "lost")
        assert isinstance(await db.write(insert, "after"), int)
        names = await db.read(lambda c: sorted(r[0] for r in c.execute("SELECT name FROM tenants")))
        assert names == ["after", "before"]
        assert not db.problems()
    finally:
        await db.close()


async def test_a_pipelined_batch_with_a_failing_write_runs_again_and_only_that_write_fails(tmp_path, pg_store_url):
    """The writer sends a batch's statements without waiting (pipeline mode), so a statement's error
    arrives late, not where the repository code catches it. Such a batch runs again a statement at a
    time: the write that catches its IntegrityError sees it there, the write that does not fails
    alone, the others commit once."""
    db = await PgDatabase.open(pg_store_url, tmp_path / "gateway.db")
    try:
        def insert(conn, name):
            return conn.execute("INSERT INTO tenants (name, created_at) VALUES (?, 0)", (name,)).lastrowid

        def insert_or_note(conn, name):
            try:
                conn.execute("INSERT INTO tenants (name, created_at) VALUES (?, 0)", (name,))
                return "inserted"
            except sqlite3.IntegrityError:
                return "exists"

        await db.write(insert, "taken")
        inside, release = threading.Event(), threading.Event()

        def hold(conn):
            inside.set()
            release.wait(20)

        held = asyncio.ensure_future(db.write(hold))
        await asyncio.to_thread(inside.wait, 20)
        # Queued behind the held batch: the next batch is these four together.
        writes = [db.write_soon(insert, "one"), db.write_soon(insert_or_note, "taken"), db.write_soon(insert, "taken"),
                  db.write_soon(insert, "two")]
        commits = db.commits
        release.set()
        await held
        one, noted, failed, two = await asyncio.gather(*writes, return_exceptions=True)
        assert db.commits == commits + 2  # the held batch, then the four in one
        assert db.replays == 1
        assert isinstance(one, int) and isinstance(two, int) and noted == "exists"
        assert isinstance(failed, sqlite3.IntegrityError)
        names = await db.read(lambda c: sorted(r[0] for r in c.execute("SELECT name FROM tenants")))
        assert names == ["one", "taken", "two"]
    finally:
        await db.close()


async def test_a_batch_of_puts_waits_for_the_server_a_few_times_not_once_per_statement(tmp_path, pg_store_url):
    """Round trips are what a write costs on PostgreSQL: in a batch, a put waits where it reads a
    result it needs (the message's id for its recipients, the pauses) and the batch once for its
    COMMIT, not once per statement (9 a put before pipeline mode)."""
    store = await Store.open(tmp_path / "gateway.db", StoreConfig(url=pg_store_url))
    try:
        ctx = await make_usecase(store)
        writer, ids = store.db._write_conn, QueueIds()
        msgs = [NewMessage(queue_id=(q := ids.new()), tenant_id=ctx["tenant_id"], usecase_id=ctx["usecase_id"],
                           mail_from="app@example.com", message_id=f"{q}@example.com", body=b"Subject: x\r\n\r\nhi\r\n",
                           recipients=["r@dest.example"]) for _ in range(20)]
        trips, statements = writer.round_trips, writer.statements
        await asyncio.gather(*(store.queue.put(m) for m in msgs))
        per_put = (writer.round_trips - trips) / len(msgs)
        assert writer.statements - statements >= 7 * len(msgs)
        assert per_put <= 2.5, per_put
        assert store.db.replays == 0
    finally:
        await store.close()
