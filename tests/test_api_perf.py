"""The API's hot path kept cheap without changing what it reports (scripts/bench_api_cpu.py measures it)."""

from __future__ import annotations

import re

import aiohttp

from tests.support.api import api_client, api_key
from tests.support.daemon import running_daemon


def counted(metrics: str, route: str, status: int) -> float:
    m = re.search(r'^gateway_api_requests_total\{route="%s",status="%d"\} (\S+)$' % (re.escape(route), status), metrics, re.M)
    return float(m.group(1)) if m else 0.0


async def test_requests_are_counted_per_route_and_status_with_the_children_cached(tmp_path):
    async with running_daemon(tmp_path, {"api": {"listen": "127.0.0.1:0"}}) as d:
        await d.call("tenant.add", name="acme")
        key = await api_key(d, "acme", "owner")
        async with api_client(d, key) as api:
            for _ in range(3):
                assert (await api.get("/v1/tenant"))[0] == 200
            assert (await api.get("/v1/domains/nowhere.test"))[0] == 404
            assert (await api.get("/v1/domains/nowhere.test"))[0] == 404
        async with api_client(d, "gw_live_aaaaaaaaaaaa_" + "a" * 43) as stranger:
            assert (await stranger.get("/v1/tenant"))[0] == 401
        async with aiohttp.ClientSession() as http, http.get(f"http://{d.address('web')}/metrics") as resp:
            metrics = await resp.text()
        assert counted(metrics, "GET /v1/tenant", 200) == 3
        assert counted(metrics, "GET /v1/tenant", 401) == 1
        assert counted(metrics, "GET /v1/domains/{domain}", 404) == 2
        assert re.search(r'^gateway_api_request_seconds_count\{method="GET"\} 6\.0$', metrics, re.M), metrics[-2000:]


async def test_tenant_read_on_the_loop_follows_a_change_at_once(tmp_path):
    async with running_daemon(tmp_path, {"api": {"listen": "127.0.0.1:0"}}) as d:
        await d.call("tenant.add", name="acme")
        key = await api_key(d, "acme", "owner")
        async with api_client(d, key) as api:
            assert (await api.get("/v1/tenant"))[1]["outbound_enabled"] is True
            status, body, _ = await api.put("/v1/tenant/outbound", {"enabled": False})
            assert status == 200 and body["outbound_enabled"] is False
            assert (await api.get("/v1/tenant"))[1]["outbound_enabled"] is False
        assert (await d.store.tenants.get("acme"))["outbound_enabled"] is False


async def test_a_small_status_read_on_the_loop_answers_as_the_reader_does(tmp_path):
    """A message of a few recipients is read on the loop, one of more than SMALL_RECIPIENTS by a
    reader: both answer the same shape, scoped to the tenant (another tenant's key: 404)."""
    from gateway.store.messages import SMALL_RECIPIENTS, _small
    from gateway.store.queue import NewMessage, QueueIds
    from tests.support.inbound import receiving_domain

    ids = QueueIds()
    async with running_daemon(tmp_path, {"api": {"listen": "127.0.0.1:0"}}) as d:
        await d.call("tenant.add", name="acme")
        await d.call("tenant.add", name="globex")
        tenant_id = (await d.store.tenants.get("acme"))["id"]
        domain = await receiving_domain(d.store, tenant_id, "acme.test", usecase="receipts", inbound=False)
        sizes = {"small": 2, "big": SMALL_RECIPIENTS + 2}
        qids = {}
        for name, n in sizes.items():
            qids[name] = ids.new()
            await d.store.queue.put(NewMessage(queue_id=qids[name], tenant_id=tenant_id, usecase_id=domain.usecase_id,
                                               mail_from="app@acme.test", message_id=f"{name}@acme.test", body=b"Subject: x\r\n\r\nx\r\n",
                                               recipients=[f"user{i}@example.org" for i in range(n)], hold_reason="paused"))
        assert d.store.db.read_now(_small, qids["small"], tenant_id) and not d.store.db.read_now(_small, qids["big"], tenant_id)
        globex_id = (await d.store.tenants.get("globex"))["id"]
        assert d.store.db.read_now(_small, qids["big"], globex_id)   # another tenant's: as fast as none at all
        owner, stranger = await api_key(d, "acme", "owner"), await api_key(d, "globex", "owner")
        async with api_client(d, owner) as api:
            shapes = {}
            for name, qid in qids.items():
                status, body, _ = await api.get(f"/v1/messages/{qid}")
                assert status == 200, body
                assert body["queue_id"] == qid and len(body["recipients"]) == sizes[name]
                assert [e["type"] for e in body["events"]] == ["queued", "held"]
                shapes[name] = (set(body), set(body["recipients"][0]))
            assert shapes["small"] == shapes["big"]
        async with api_client(d, stranger) as api:
            for qid in qids.values():
                assert (await api.get(f"/v1/messages/{qid}"))[0] == 404


async def test_a_remembered_key_still_refuses_another_secret_and_a_revocation(tmp_path):
    """The key check compares a remembered token without the HMAC: a token of the same public id with
    another secret is still checked (401), the right one still works after it, a revoked one stops."""
    async with running_daemon(tmp_path, {"api": {"listen": "127.0.0.1:0", "key_cache_ttl": 60.0}}) as d:
        await d.call("tenant.add", name="acme")
        made = await d.call("apikey.add", tenant="acme", role="owner")
        token = made["token"]
        forged = token[:-43] + ("A" if token[-43] != "A" else "B") + token[-42:]
        async with api_client(d, token) as api, api_client(d, forged) as bad:
            assert (await api.get("/v1/tenant"))[0] == 200
            assert (await api.get("/v1/tenant"))[0] == 200   # remembered
            assert (await bad.get("/v1/tenant"))[0] == 401
            assert (await api.get("/v1/tenant"))[0] == 200
            await d.call("apikey.revoke", key=made["public_id"], tenant="acme")
            assert (await api.get("/v1/tenant"))[0] == 401


async def test_disabling_a_tenant_refuses_its_remembered_keys_at_once(tmp_path):
    """A key remembered for key_cache_ttl (an hour here) must not outlive its tenant's switch: before,
    a disabled tenant's keys went on working until the cache ran out."""
    async with running_daemon(tmp_path, {"api": {"listen": "127.0.0.1:0", "key_cache_ttl": 3600.0}}) as d:
        await d.call("tenant.add", name="acme")
        token = (await d.call("apikey.add", tenant="acme", role="owner"))["token"]
        async with api_client(d, token) as api:
            assert (await api.get("/v1/tenant"))[0] == 200   # checked, now remembered
            await d.call("tenant.disable", name="acme")
            assert (await api.get("/v1/tenant"))[0] in (401, 403)
            await d.call("tenant.enable", name="acme")
            assert (await api.get("/v1/tenant"))[0] == 200
