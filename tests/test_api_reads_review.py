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


def test_one_use_cases_stats_are_read_by_key_not_by_walking_every_use_case_of_the_days():
    import sqlite3

    from gateway.store import stats
    from gateway.store.db import migrate

    conn = sqlite3.connect(":memory:")
    migrate(conn)
    conn.executemany("INSERT INTO daily_stats (tenant_id, day, usecase_id, sent) VALUES (1, ?, ?, 1)",
                     [(f"2026-01-{d:02d}", u) for d in range(1, 32) for u in range(1, 201)])
    sql, args = stats.read_sql(1, "2026-01-01", "2026-12-31", 7, None, 101)
    plan = [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
    assert any("usecase_id=?" in p for p in plan), plan
    assert [r[0] for r in conn.execute(sql, args)] == [f"2026-01-{d:02d}" for d in range(1, 32)]
    sql, args = stats.read_sql(1, "2026-01-01", "2026-12-31", 7, ("2026-01-30", 7), 101)
    assert [r[0] for r in conn.execute(sql, args)] == ["2026-01-31"]
    sql, args = stats.read_sql(1, "2026-01-31", "2026-01-31", 7, ("2026-01-31", 7), 101)
    assert list(conn.execute(sql, args)) == []
    sql, args = stats.read_sql(1, "2026-01-30", "2026-01-31", None, ("2026-01-30", 200), 3)
    assert [tuple(r[:2]) for r in conn.execute(sql, args)] == [("2026-01-31", 1), ("2026-01-31", 2), ("2026-01-31", 3)]


def test_a_thread_read_takes_its_newest_entries_from_the_index_without_sorting_the_whole_thread():
    import sqlite3

    from gateway.store import inbox
    from gateway.store.db import migrate

    conn = sqlite3.connect(":memory:")
    migrate(conn)
    for sql, alias in ((inbox.THREAD_OUT_SQL, "i"), (inbox.THREAD_IN_SQL, "m")):
        plan = [r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql.format(scope=f" AND {alias}.tenant_id = ?"), ("t", 1, 1000))]
        assert not any("TEMP B-TREE" in p for p in plan), plan
        assert any("message_ids_thread" in p or "inbound_thread" in p for p in plan), plan


async def test_a_complaint_matched_by_its_feedback_id_counts_for_its_use_case(tmp_path):
    import time

    from gateway.feedback.arf import feedback_id
    from gateway.services.suppressions import SuppressionService
    from gateway.store import Store
    from gateway.store.stats import day_of
    from tests.test_inbound_processor import complaint

    store = await Store.open(tmp_path / "gateway.db")
    try:
        acme = (await store.tenants.add("acme"))["id"]
        globex = (await store.tenants.add("globex"))["id"]
        news = (await receiving_domain(store, acme, "acme.test", usecase="news")).usecase_id
        desk = (await receiving_domain(store, globex, "globex.test", usecase="desk")).usecase_id
        service = SuppressionService(store)
        assert (await service.handle_report(complaint("dan@dest.example", feedback_id(acme, news))))["matched"]
        # A Feedback-ID naming another tenant's use case: still acme's complaint, counted for no use case.
        assert (await service.handle_report(complaint("eve@dest.example", feedback_id(acme, desk))))["matched"] in (True, False)
        today = day_of(time.time())
        rows = await store.stats.read(acme, today, today)
        assert [(r["usecase"], r["complained"]) for r in rows] == [("news", 1)]
        assert await store.stats.read(globex, today, today) == []
    finally:
        await store.close()


def test_an_event_that_counts_nowhere_writes_no_daily_stats_row():
    import sqlite3

    from gateway.store.db import migrate
    from gateway.store.events import append_event

    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for kind, data in (("held", {"reason": "paused"}), ("released", {}), ("retried", {}), ("deleted", {}), ("dsn_sent", {}),
                       ("queued", {"from": "", "recipients": 1}), ("suppressed", {"checked": "rcpt"}), ("received", {})):
        append_event(conn, 1, kind, "0123456789abcdef", data, message=(1, True))
    assert not [s for s in statements if "daily_stats" in s]
    append_event(conn, 1, "delivered", "0123456789abcdef", {}, message=(1, True))
    assert len([s for s in statements if "daily_stats" in s]) == 1


async def test_a_stats_cursor_crafted_by_hand_is_refused_or_ends_the_pages_never_a_5xx(tmp_path, dns_server):
    from gateway.api.paging import encode_cursor

    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        await d.call("tenant.add", name="acme")
        tenant_id = (await d.store.tenants.get("acme"))["id"]
        await receiving_domain(d.store, tenant_id, "acme.test", usecase="news")
        owner, sender = await api_key(d, "acme", "owner"), await api_key(d, "acme", "sender", usecase="news")
        for token in (owner, sender):
            async with api_client(d, token) as api:
                for key in (["abcdefghij", 1], ["2026-02-30", 1], ["2026-1-011", 1]):
                    status, body, _ = await api.get("/v1/stats", params={"cursor": encode_cursor(key)})
                    assert status == 400 and body["field"] == "query.cursor", (key, body)
                status, body, _ = await api.get("/v1/stats", params={"to": "9999-12-31", "cursor": encode_cursor(["9999-12-31", 1])})
                assert status == 200 and body["data"] == [], body


async def test_a_tenant_created_after_another_was_deleted_inherits_none_of_its_events_or_stats(tmp_path):
    import time

    from gateway.store import Store
    from gateway.store.stats import day_of

    store = await Store.open(tmp_path / "gateway.db")
    try:
        old = (await store.tenants.add("initech"))["id"]
        news = (await receiving_domain(store, old, "initech.test", usecase="news")).usecase_id
        await store.events.append(old, "unsubscribed", "dan@dest.example", {"usecase_id": news, "scope": "tenant", "scope_id": old})
        today = day_of(time.time())
        assert [r["unsubscribed"] for r in await store.stats.read(old, today, today)] == [1]

        def drop(conn):   # what `tenant delete` leaves behind once its domains and use cases are gone
            conn.execute("DELETE FROM usecases WHERE tenant_id = ?", (old,))
            conn.execute("DELETE FROM domains WHERE tenant_id = ?", (old,))
            conn.execute("DELETE FROM tenants WHERE id = ?", (old,))
        await store.db.write(drop)
        new = (await store.tenants.add("hooli"))["id"]
        assert new == old   # SQLite reuses the newest row's id
        rows, _ = await store.events.tenant_page(new)
        assert [e["kind"] for e in rows] == ["tenant_added"]
        assert await store.stats.read(new, today, today) == []
    finally:
        await store.close()


async def test_an_inbox_page_filtered_by_kind_looks_at_a_bounded_number_of_rows(tmp_path):
    from gateway.store import keyset
    from gateway.store.queue import QueueIds

    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        await d.call("tenant.add", name="globex")
        acme = (await d.store.tenants.get("acme"))["id"]
        globex = (await d.store.tenants.get("globex"))["id"]
        ids = QueueIds()
        rows = [(ids.new(), acme, "human") for _ in range(keyset.SCAN * 2 + 5)]
        rows.append((ids.new(), globex, "arf"))
        rare = ids.new()
        rows.append((rare, acme, "arf"))

        def fill(conn):
            conn.executemany("INSERT INTO inbound_messages (inbound_id, source, tenant_id, kind, size, sha256, received_at, raw)"
                             " VALUES (?, 'mx', ?, ?, 1, 'x', 1.0, x'00')", rows)
        await d.store.db.write(fill)
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            status, body, _ = await api.get("/v1/inbox", params={"kind": "arf"})
            assert status == 200 and body["data"] == [] and body["next_cursor"], body   # short page, more to look at
            found, cursor = [], body["next_cursor"]
            for _ in range(5):
                status, body, _ = await api.get("/v1/inbox", params={"kind": "arf", "cursor": cursor})
                assert status == 200, body
                found += [r["inbound_id"] for r in body["data"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert found == [rare] and cursor is None     # globex's is never acme's
            status, body, _ = await api.get("/v1/inbox", params={"limit": "2"})
            status2, body2, _ = await api.get("/v1/inbox", params={"limit": "2", "cursor": body["next_cursor"]})
            assert status2 == 200 and len(body2["data"]) == 2 and body2["data"][0]["inbound_id"] > body["data"][-1]["inbound_id"]
