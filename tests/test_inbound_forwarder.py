"""The forwarder (gateway/inbound/forwarder.py) against a real store: what it queues and what it
refuses to queue."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.inbound.forwarder import Forwarder, forward_received
from gateway.store import Store
from tests.support.inbound import receiving_domain
from tests.support.processed import processed_message, raw_message


@pytest.fixture
async def world(tmp_path):
    store = await Store.open(tmp_path / "gateway.db")
    config = parse_config({"daemon": {"hostname": "gw.test"}})
    acme = (await store.tenants.add("acme"))["id"]
    dom = await receiving_domain(store, acme, "acme.test", usecase="support")
    yield {"store": store, "config": config, "acme": acme, "support": dom.usecase_id, "tmp": tmp_path}
    await store.close()


async def queued(store) -> list[dict]:
    return await store.db.read(lambda c: [dict(r) for r in c.execute("SELECT queue_id, tenant_id FROM messages")])


async def test_a_message_that_carries_our_forward_trace_is_not_forwarded_again(world):
    store, config = world["store"], world["config"]
    # Two rules fanning out, both to mailboxes that forward back to the use case's address: every
    # round would double the copies until the MX's Received limit (50 headers, 2^24 messages).
    await store.forwards.add("acme", usecase="support", to_address="a@desk.example")
    await store.forwards.add("acme", usecase="support", to_address="b@desk.example")
    forwarder = Forwarder(store, lambda: config)
    first, _ = raw_message()
    await processed_message(store, world["tmp"], tenant_id=world["acme"], usecase_id=world["support"], raw=first)
    assert await forwarder.run_once() == 1
    assert len(await queued(store)) == 1
    # The forward comes back to us (a desk mailbox forwards to support@acme.test): it carries our trace.
    back = forward_received(hostname="gw.test", queue_id="Q1", inbound_id="I1", recipients=["a@desk.example"], now=0) + first
    back = b"Received: from desk.example by mx.gw.test; Tue, 1 Dec 2026 10:00:01 +0000\r\n" + back
    row = await processed_message(store, world["tmp"], tenant_id=world["acme"], usecase_id=world["support"], raw=back)
    assert await forwarder.run_once() == 1
    assert len(await queued(store)) == 1   # not queued again
    skipped = await store.events.list(tenant_id=world["acme"], kind="forward_skipped")
    assert [e["subject"] for e in skipped] == [row["inbound_id"]]
