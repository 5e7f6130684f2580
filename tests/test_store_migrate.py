"""`gateway store migrate-to URL`: an SQLite store copied into PostgreSQL, verified, and usable."""

from __future__ import annotations

import asyncio

import psycopg

from gateway.config import StoreConfig
from gateway.statelock import StateLock
from gateway.store import Store
from gateway.store.copy import checksum
from gateway.store.queue import NewMessage, QueueIds
from tests.support import process
from tests.support.submission import make_usecase

BODY = bytes(range(256)) * 300 + b"\r\n.\r\n%s '?'"


async def filled(state) -> dict:
    """A store with a little of everything a queue holds, and what it holds."""
    store = await Store.open(state / "gateway.db")
    try:
        ctx = await make_usecase(store)
        await store.tenants.add("other", monthly_quota=5)
        ids = QueueIds()
        queued = []
        for i in range(3):
            qid = ids.new()
            await store.queue.put(NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["usecase_id"],
                                             mail_from="app@example.com", message_id=f"{qid}@example.com", body=BODY + bytes([i]),
                                             recipients=[f"r{i}@dest.example", f"s{i}@dest.example"]))
            queued.append(qid)
        await store.suppressions.add(ctx["tenant_id"], ("tenant", 0), "gone@dest.example", "hard_bounce")
        tenants = await store.tenants.list()
        return {"queued": queued, "tenants": [t["name"] for t in tenants], "max_tenant": max(t["id"] for t in tenants)}
    finally:
        await store.close()


def migrate(state, url, check=0):
    return process.run_cli("--state-dir", str(state), "store", "migrate-to", url, "--batch", "2", check=check, timeout=60)


async def test_a_store_copied_verified_and_then_used_on_postgresql(tmp_path, pg_url):
    state = tmp_path / "state"
    state.mkdir()
    before = await filled(state)
    done = await asyncio.to_thread(migrate, state, pg_url)
    assert "verified messages: 3 rows" in done.stdout and "verified recipients: 6 rows" in done.stdout, done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith(f"migrated {state / 'gateway.db'} to {pg_url}:"), done.stdout

    store = await Store.open(state / "gateway.db", StoreConfig(url=pg_url))
    try:
        assert [t["name"] for t in await store.tenants.list()] == before["tenants"]
        listed = await store.queue.list(limit=10)
        assert sorted(m["queue_id"] for m in listed) == sorted(before["queued"])
        claimed = await store.delivery.claim("node", 10)
        bodies = await store.delivery.bodies(sorted({r["message_id"] for r in claimed}))
        assert sorted(bodies.values()) == sorted(BODY + bytes([i]) for i in range(3))
        # The identities continue after the copied ids (the sequences were reset).
        added = await store.tenants.add("after")
        assert added["id"] == before["max_tenant"] + 1
    finally:
        await store.close()

    again = await asyncio.to_thread(migrate, state, pg_url, None)
    assert again.returncode == 1 and "is not empty" in again.stderr, again.stderr


async def test_refused_while_the_daemon_holds_the_state_lock(tmp_path, pg_url):
    state = tmp_path / "state"
    state.mkdir()  # the lock comes first: nothing else is looked at
    lock = StateLock(state / "gateway.lock").acquire()
    try:
        refused = await asyncio.to_thread(migrate, state, pg_url, None)
    finally:
        lock.release()
    assert refused.returncode == 1 and "stop the daemon first" in refused.stderr, refused.stderr
    with psycopg.connect(pg_url) as conn:  # nothing was created there
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0] == 0


def test_the_checksum_ignores_order_and_spelling_of_integral_numbers_but_not_content():
    rows = [(1, "a", b"\x00", None, 2.5), (2, "b", b"", 1.0, 3.0)]
    assert checksum(rows) == checksum(rows[::-1])
    assert checksum([(1, "a", b"\x00", None, 2.5), (2, "b", b"", 1, 3)]) == checksum(rows)
    assert checksum([(1, "a", b"\x01", None, 2.5), rows[1]]) != checksum(rows)
    assert checksum([(1, "a", b"\x00", None, 2.5)]) != checksum(rows)
