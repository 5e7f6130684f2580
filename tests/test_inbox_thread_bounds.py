"""``gateway thread show`` (store.inbox.thread) answers a bounded list however long a thread grew:
anyone who knows one Message-ID of it can make it longer by replying."""

from __future__ import annotations

import pytest

from gateway.config import StoreConfig

from gateway.store import Store
from gateway.store import inbox as inbox_store
from tests.support.inbound import receiving_domain
from tests.support.processed import processed_message


async def test_a_thread_longer_than_the_bound_answers_its_newest_entries(tmp_path, monkeypatch, store_url):
    monkeypatch.setattr(inbox_store, "MAX_THREAD", 3)   # the bound, small enough to pass here
    store = await Store.open(tmp_path / "gateway.db", StoreConfig(url=store_url))
    try:
        acme = (await store.tenants.add("acme"))["id"]
        dom = await receiving_domain(store, acme, "acme.test", usecase="support")
        made = [await processed_message(store, tmp_path, tenant_id=acme, usecase_id=dom.usecase_id, thread_id="root@example.org",
                                        message_id=f"r{i}@example.org") for i in range(5)]
        thread = await store.inbox.thread("root@example.org", tenant_id=acme)
        assert [e["id"] for e in thread] == [m["inbound_id"] for m in made[-3:]]
    finally:
        await store.close()
