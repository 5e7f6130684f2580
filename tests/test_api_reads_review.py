"""A review of the API's reads: what a key of one use case or tenant can reach of another's through
ids the store reuses, and what the reads cost in rows examined. Real daemon, real aiohttp client."""

from __future__ import annotations

from tests.support.api import api_client, api_key
from tests.support.daemon import running_daemon
from tests.support.dns import dns_overrides
from tests.support.inbound import receiving_domain


async def test_a_use_case_created_after_another_was_deleted_does_not_inherit_its_events(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        await d.call("tenant.add", name="acme")
        tenant_id = (await d.store.tenants.get("acme"))["id"]
        await receiving_domain(d.store, tenant_id, "acme.test", usecase="news")
        old = (await d.store.usecases.get("acme", "news"))["id"]
        # What "news" leaves on record: mail received for it (the data names its use case).
        await d.store.events.append(tenant_id, "received", "in-1", {"usecase_id": old, "subject": "news-only secret"})
        await d.call("usecase.delete", tenant="acme", name="news")
        await d.call("usecase.add", tenant="acme", domain="acme.test", name="alerts", entity="acme alerts", kind="transactional", senders=["alerts@acme.test"])
        new = (await d.store.usecases.get("acme", "alerts"))["id"]
        sender = await api_key(d, "acme", "sender", usecase="alerts")
        async with api_client(d, sender) as api:
            status, body, _ = await api.get("/v1/events")
        assert status == 200, body
        assert [e for e in body["data"] if e["type"] == "received"] == [], (old, new, body["data"])


def test_an_inbox_page_walks_the_tenants_rows_in_order_without_sorting_them_all():
    import sqlite3

    from gateway.store import inbox
    from gateway.store.db import migrate

    conn = sqlite3.connect(":memory:")
    migrate(conn)
    for where, args in ((["m.tenant_id = ?"], (1,)), (["m.tenant_id = ?", f"m.id > ({inbox.AFTER_SQL})"], (1, "x", "x"))):
        plan = [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + inbox.list_sql(where), (*args, 101))]
        assert not any("TEMP B-TREE" in p for p in plan), plan
        assert any("inbound_tenant" in p for p in plan), plan
