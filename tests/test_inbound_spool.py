"""The inbound spool: rows of one received message commit together, raw bytes intact, scoped reads."""

from __future__ import annotations

import sqlite3

import pytest

from gateway.errors import NotFound
from gateway.store import Store
from gateway.config import StoreConfig
from gateway.store.inbound import Spooled
from gateway.store.queue import QueueIds


@pytest.fixture
async def store(tmp_path, store_url):
    s = await Store.open(tmp_path / "gateway.db", StoreConfig(url=store_url))
    yield s
    await s.close()


@pytest.mark.sqlite_only  # reads the file from a second connection
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


async def test_finish_records_once_with_attachments_and_a_received_event(store):
    from gateway.store.inbound import Attachment, Processed
    a = await store.tenants.add("acme")
    qid = QueueIds().new()
    (row_id,) = await store.inbound.spool([Spooled(inbound_id=qid, source="mx", raw=b"Subject: hi\r\n\r\nbody\r\n", tenant_id=a["id"])])
    assert [r["inbound_id"] for r in await store.inbound.spooled()] == [qid]
    done = Processed(kind="reply", thread_id="t1@x", parent_message_id="t1@x", subject="hi", summary={"text": "body"},
                     attachments=[Attachment(position=0, filename="a.pdf", content_type="application/pdf", size=3, sha256="ab")],
                     raw=b"Authentication-Results: gw; none\r\nSubject: hi\r\n\r\nbody\r\n")
    assert await store.inbound.finish(row_id, done) is True
    assert await store.inbound.finish(row_id, done) is False   # a second finish writes nothing
    assert await store.inbound.spooled() == []
    row = await store.inbound.get(qid, tenant_id=a["id"])
    assert (row["state"], row["kind"], row["summary"], row["raw"][:22]) == ("processed", "reply", {"text": "body"}, b"Authentication-Results")
    events = await store.events.list(tenant_id=a["id"], kind="received")
    assert [e["subject"] for e in events] == [qid]
    n = await store.db.read(lambda c: c.execute("SELECT count(*) FROM inbound_attachments").fetchone()[0])
    assert n == 1


async def test_hold_keeps_the_message_with_its_reason(store):
    qid = QueueIds().new()
    (row_id,) = await store.inbound.spool([Spooled(inbound_id=qid, source="pop3", raw=b"x\r\n")])
    assert await store.inbound.hold(row_id, "parse failed: boom") is True
    row = await store.inbound.get(qid)
    assert (row["state"], row["hold_reason"], row["raw"]) == ("held", "parse failed: boom", b"x\r\n")
