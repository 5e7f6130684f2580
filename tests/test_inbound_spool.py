"""The inbound spool: rows of one received message commit together, raw bytes intact, scoped reads."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.errors import NotFound
from gateway.store import Store
from gateway.store.inbound import Spooled
from gateway.store.queue import QueueIds


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "gateway.db")
    yield s
    await s.close()


async def test_one_message_to_two_tenants_is_two_rows_committed_together(store, tmp_path):
    a = await store.tenants.add("acme")
    b = await store.tenants.add("globex")
    raw = b"From: c@example.org\r\nMessage-ID: <m1@example.org>\r\n\r\n" + b"x" * 300_000 + b"\r\n"
    ids = QueueIds()
    rows = await store.inbound.spool([
        Spooled(inbound_id=ids.new(), source="mx", raw=raw, tenant_id=a["id"], recipients=["help@acme.test"],
                mail_from="c@example.org", client="127.0.0.1", header_message_id="m1@example.org"),
        Spooled(inbound_id=ids.new(), source="mx", raw=raw, tenant_id=b["id"], recipients=["sales@globex.test"],
                mail_from="c@example.org", client="127.0.0.1", header_message_id="m1@example.org"),
    ])
    assert len(rows) == 2
    # Another connection sees both rows: the spool returned after the commit.
    conn = sqlite3.connect(tmp_path / "gateway.db")
    try:
        got = conn.execute("SELECT tenant_id, recipients, raw, state, size FROM inbound_messages ORDER BY id").fetchall()
    finally:
        conn.close()
    assert [(t, r, s) for t, r, _, s, _ in got] == [(a["id"], '["help@acme.test"]', "spooled"), (b["id"], '["sales@globex.test"]', "spooled")]
    assert all(bytes(body) == raw and size == len(raw) for _, _, body, _, size in got)


async def test_get_is_scoped_to_the_tenant(store):
    a = await store.tenants.add("acme")
    b = await store.tenants.add("globex")
    qid = QueueIds().new()
    await store.inbound.spool([Spooled(inbound_id=qid, source="imap", raw=b"Subject: hi\r\n\r\nbody\r\n", tenant_id=a["id"])])
    row = await store.inbound.get(qid, tenant_id=a["id"])
    assert row["raw"] == b"Subject: hi\r\n\r\nbody\r\n" and row["source"] == "imap" and row["recipients"] == []
    with pytest.raises(NotFound):
        await store.inbound.get(qid, tenant_id=b["id"])


def test_unknown_source_is_refused():
    with pytest.raises(ValueError):
        Spooled(inbound_id="x", source="fax", raw=b"")
