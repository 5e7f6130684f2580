"""The suppression list's store functions: add/refresh, scoped lookup, expiry, removal, tenant scoping."""

import pytest

from gateway.store import Store
from gateway.config import StoreConfig


@pytest.fixture
async def store(tmp_path, store_url):
    s = await Store.open(tmp_path / "gateway.db", StoreConfig(url=store_url))
    a = await s.tenants.add("acme")
    b = await s.tenants.add("other")
    s.ids = (a["id"], b["id"])
    yield s
    await s.close()


async def test_add_refresh_find_in_scope_order_and_expiry(store):
    acme, other = store.ids
    first = await store.suppressions.add(acme, ("usecase", 7), "bob@example.org", "unsubscribe", source="web", now=100.0)
    again = await store.suppressions.add(acme, ("usecase", 7), "bob@example.org", "manual", source="operator", now=200.0)
    assert first["added"] and not again["added"] and first["id"] == again["id"]
    assert await store.suppressions.find(acme, "bob@example.org", [("tenant", 0)]) is None
    hit = await store.suppressions.find(acme, "bob@example.org", [("tenant", 0), ("usecase", 7)])
    assert hit["reason"] == "manual" and hit["created_at"] == 100.0
    # Another tenant never sees it.
    assert await store.suppressions.find(other, "bob@example.org", [("usecase", 7)]) is None
    await store.suppressions.add(acme, ("tenant", 0), "soft@example.org", "soft_bounce", expires_at=1000.0)
    assert await store.suppressions.find(acme, "soft@example.org", [("tenant", 0)], now=999.0) is not None
    assert await store.suppressions.find(acme, "soft@example.org", [("tenant", 0)], now=1000.0) is None


async def test_remove_by_scope_or_all_and_events(store):
    acme, _ = store.ids
    await store.suppressions.add(acme, ("tenant", 0), "x@example.org", "hard_bounce")
    await store.suppressions.add(acme, ("marketing", 0), "x@example.org", "complaint")
    assert await store.suppressions.remove(acme, "x@example.org", [("marketing", 0)]) == 1
    assert [r["scope"] for r in await store.suppressions.list(acme)] == ["tenant"]
    assert await store.suppressions.remove(acme, "x@example.org") == 1
    assert await store.suppressions.list(acme) == []
    kinds = [e["kind"] for e in await store.events.list(tenant_id=acme)]
    assert kinds.count("suppression_added") == 2 and kinds.count("suppression_removed") == 2
