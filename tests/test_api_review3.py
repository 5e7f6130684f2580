"""A sceptical review of the HTTP API: each test here caught a defect before its fix (review3)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import tracemalloc

import pytest

from gateway.api import keys
from gateway.delivery.loops import LoopGuard
from gateway.errors import NotFound
from gateway.store import Store
from tests.support.api import api_client, api_key
from tests.support.daemon import AdminError, running_daemon
from tests.support.dns import dns_overrides
from tests.support.sink import mail_sink
from tests.support.tenancy import sending_setup

PROBLEM = "urn:gateway:problem:"


async def test_a_post_whose_body_fields_are_all_optional_takes_no_body(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            assert (await api.post("/v1/domains", {"domain": "acme.test"}))[0] == 201
            # No Content-Type, Content-Length 0: taken as {} (a default rotation), not 415.
            async with api.session.post(api.base + "/v1/domains/acme.test/dkim", headers=api.headers(),
                                        skip_auto_headers=["Content-Type"]) as resp:
                assert resp.status == 201, await resp.text()
                assert "Content-Type" not in resp.request_info.headers
                assert len((await resp.json())["keys"]) == 2
            # aiohttp's client names application/octet-stream for a POST without data: no body still.
            status, body, _ = await api.request("POST", "/v1/domains/acme.test/dkim")
            assert status == 201, body
            # A body with a media type the route does not take is still 415, and so is no body for a route with a required field.
            status, body, _ = await api.request("POST", "/v1/domains/acme.test/dkim", data=b"x",
                                                headers={"Content-Type": "text/plain"})
            assert status == 415, body
            status, body, _ = await api.request("PUT", "/v1/tenant/outbound")
            assert status == 415, body
            document = (await api.get("/v1/openapi.json"))[1]["paths"]
            assert document["/v1/domains/{domain}/dkim"]["post"]["requestBody"]["required"] is False
            assert document["/v1/tenant/outbound"]["put"]["requestBody"]["required"] is True


async def test_api_keys_are_read_a_page_at_a_time_from_the_store(tmp_path):
    store = await Store.open(tmp_path / "g.db")
    try:
        for tenant in ("acme", "globex"):
            await store.tenants.add(tenant)
        made = []
        for n in range(5):
            public_id, token = keys.mint()
            made.append(await store.apikeys.add("acme", role="agent", public_id=public_id, name=f"k{n}",
                                                digest=lambda pepper, t=token: keys.digest(t, pepper)))
        other_id, other = keys.mint()
        await store.apikeys.add("globex", role="owner", public_id=other_id, digest=lambda pepper: keys.digest(other, pepper))
        first = await store.apikeys.list("acme", after=0, limit=2)
        assert [k["name"] for k in first] == ["k0", "k1"]
        rest = await store.apikeys.list("acme", after=first[-1]["id"], limit=10)
        assert [k["name"] for k in rest] == ["k2", "k3", "k4"]
        assert all("hash" not in k for k in first + rest)
        assert (await store.apikeys.get("acme", made[3]["public_id"]))["name"] == "k3"
        with pytest.raises(NotFound):
            await store.apikeys.get("acme", other_id)        # another tenant's key is none of acme's
    finally:
        await store.close()


REFUSED_HOSTS = ["169.254.169.254", "fe80::1", "224.0.0.1", "0.0.0.0", "240.0.0.1", "::ffff:169.254.169.254"]


async def test_connectors_cannot_point_the_gateway_at_link_local_multicast_or_reserved_addresses(tmp_path):
    async with running_daemon(tmp_path) as d:     # delivery.allow_loopback on: loopback is allowed, these never
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            for host in REFUSED_HOSTS:
                status, body, _ = await api.post("/v1/connectors", {"name": "relay", "kind": "smtp", "host": host})
                assert status == 422 and "refused" in body["detail"], (host, body)
                status, body, _ = await api.post("/v1/connectors", {"name": "grid", "kind": "sendgrid", "secret": "SG.x",
                                                                    "base_url": f"http://[{host}]:8080" if ":" in host else f"http://{host}/"})
                assert status == 422 and "refused" in body["detail"], (host, body)
                status, body, _ = await api.post("/v1/connectors", {"name": "box", "kind": "imap", "host": host, "username": "u",
                                                                    "secret": "pw", "usecase": "support"})
                assert status == 422 and "refused" in body["detail"], (host, body)
            assert (await api.post("/v1/connectors", {"name": "relay", "kind": "smtp", "host": "127.0.0.1", "port": 2525}))[0] == 201
            status, body, _ = await api.patch("/v1/connectors/relay", {"host": "169.254.169.254"})
            assert status == 422, body
            status, body, _ = await api.put("/v1/connectors/relay/incoming", {
                "protocol": "pop3", "host": "169.254.169.254", "username": "u", "secret": "pw", "usecase": "support"})
            assert status == 422, body
            assert (await api.get("/v1/connectors/relay"))[1]["settings"]["host"] == "127.0.0.1"
        # The CLI's path is the same service: the same refusal over the admin socket.
        with pytest.raises(AdminError, match="refused"):
            await d.call("connector.add", tenant="acme", name="meta", kind="smtp", host="169.254.169.254")


async def test_connector_loopback_follows_delivery_allow_loopback_when_added_and_when_tested(tmp_path):
    name = socket.gethostname()
    resolved = {a[4][0] for a in socket.getaddrinfo(name, 25, type=socket.SOCK_STREAM)}
    async with running_daemon(tmp_path, {"delivery": {"allow_loopback": False}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            for host in ("127.0.0.1", "::1", "localhost"):
                status, body, _ = await api.post("/v1/connectors", {"name": "relay", "kind": "smtp", "host": host})
                assert status == 422 and "delivery.allow_loopback" in body["detail"], (host, body)
            if not all(ipaddress.ip_address(a).is_loopback for a in resolved):
                pytest.skip(f"{name} does not resolve to loopback here")
            # A name passes when added; what it resolves to is checked when the test connects.
            async with mail_sink() as sink:
                port = sink.port
                assert (await api.post("/v1/connectors", {"name": "relay", "kind": "smtp", "host": name, "port": port,
                                                          "tls": "none"}))[0] == 201
                status, body, _ = await api.post("/v1/connectors/relay/test")
                assert status == 200 and body["ok"] is False, body
                assert body["steps"][0]["step"] == "connect" and "delivery.allow_loopback" in body["steps"][0]["detail"], body
                assert sink.connections == 0


async def test_a_body_that_trickles_in_is_refused_after_body_timeout(tmp_path):
    async with running_daemon(tmp_path, {"api": {"body_timeout": 0.5}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        host, _, port = d.address("api").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write((f"PUT /v1/tenant/outbound HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {owner}\r\n"
                          "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ena").encode())
            await writer.drain()
            async with asyncio.timeout(10):
                status = await reader.readline()
                rest = await reader.read(4096)
            assert status.startswith(b"HTTP/1.1 408"), status
            assert b"request-timeout" in rest
        finally:
            writer.close()
        # The place it held in api.max_inflight is free again: a normal call is answered.
        async with api_client(d, owner) as api:
            assert (await api.get("/v1/tenant"))[0] == 200


@pytest.mark.parametrize("host", ["169.254.169.254", "fe80::1", "224.0.0.1", "240.0.0.1", "::ffff:169.254.169.254"])
def test_delivery_never_connects_to_a_link_local_multicast_or_reserved_address(host):
    """An MX or a connector's smarthost name can resolve anywhere: the address reached is refused, and
    the bounce says why (nothing from such a server is ever quoted back to a tenant)."""
    reply = LoopGuard(allow_loopback=True).refusal(host, 25, "dest.test")
    assert reply is not None and reply.outcome == "bounced" and reply.enhanced == "5.4.4", reply
    assert LoopGuard(allow_loopback=True).refusal("192.0.2.1", 25, "dest.test") is None


async def trickle(d, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT whose body never arrives in full: it stays in flight until the body timeout."""
    host, _, port = d.address("api").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"PUT /v1/tenant/outbound HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode())
    await writer.drain()
    return reader, writer


async def test_one_keys_open_requests_are_bounded_so_other_tenants_are_still_served(tmp_path):
    async with running_daemon(tmp_path, {"api": {"max_inflight_per_key": 2, "max_inflight": 3}}) as d:
        for tenant in ("acme", "globex"):
            await d.call("tenant.add", name=tenant)
        greedy, other = await api_key(d, "acme", "owner"), await api_key(d, "globex", "owner")
        held = [await trickle(d, greedy) for _ in range(2)]
        try:
            async with api_client(d, greedy) as api:
                # Until both trickles are in flight (each is served once its headers are in): on a loaded
                # machine that took longer than 100 quick GETs, so the bound is time, not a count.
                async with asyncio.timeout(20):
                    while True:
                        status, body, headers = await api.get("/v1/tenant")
                        if status == 429:
                            break
                        await asyncio.sleep(0.01)
                assert status == 429 and body["type"] == PROBLEM + "too-many-in-flight" and headers["Retry-After"] == "1"
            async with api_client(d, other) as api:
                assert (await api.get("/v1/tenant"))[0] == 200
        finally:
            for _, writer in held:
                writer.close()


async def test_a_mailbox_whose_name_resolves_to_loopback_is_not_polled_while_loopback_is_off(tmp_path, dns_server):
    name = socket.gethostname()
    if not all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(name, 143, type=socket.SOCK_STREAM)):
        pytest.skip(f"{name} does not resolve to loopback here")
    connections = []
    server = await asyncio.start_server(lambda r, w: (connections.append(1), w.close()), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_daemon(tmp_path, {**dns_overrides(dns_server), "delivery": {"allow_loopback": False}}) as d:
            await sending_setup(d, dns_server, tenant="acme", domain="acme.test", usecase="support", sender="help@acme.test")
            owner = await api_key(d, "acme", "owner")
            async with api_client(d, owner) as api:
                status, body, _ = await api.post("/v1/connectors", {"name": "box", "kind": "imap", "host": name, "port": port,
                                                                    "tls": "none", "insecure_plaintext": True, "username": "u",
                                                                    "secret": "pw", "usecase": "support"})
                assert status == 201, body
                for _ in range(200):
                    status, body, _ = await api.get("/v1/connectors/box")
                    if body["incoming_status"].get("last_error"):
                        break
                    await asyncio.sleep(0.05)
                assert "delivery.allow_loopback" in body["incoming_status"]["last_error"], body
        assert connections == []
    finally:
        server.close()
        await server.wait_closed()


def test_a_suppression_csv_is_checked_and_imported_without_holding_all_its_rows():
    """An 8 MiB body of 2.7 million two-letter fields took ~200 MB as parsed rows before; now one row
    of more than MAX_COLUMNS fields is refused, and rows are held IMPORT_CHUNK at a time."""
    from gateway.api import suppressions
    from gateway.api.problems import ApiProblem

    wide = ("address\n" + ",".join(["ab"] * 2_700_000)).encode()
    with pytest.raises(ApiProblem) as refused:
        suppressions._checked(wide)
    assert refused.value.status == 422 and "line 2" in refused.value.body.detail
    long = ("address,scope,reason\n" + "".join(f"u{n}@example.test,tenant,manual\n" for n in range(100_000))).encode()
    tracemalloc.start()
    try:
        header = suppressions._checked(long)
        chunks = 0
        for chunk in suppressions._chunks(long):
            chunks += 1
            assert len(chunk) <= suppressions.IMPORT_CHUNK
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert header == ["address", "scope", "reason"] and chunks == 100_000 // suppressions.IMPORT_CHUNK
    assert peak < len(long), peak      # one chunk of rows, not 100,000 parsed rows nor a copy of the text


async def test_a_connection_that_sends_nothing_is_closed_after_idle_timeout(tmp_path):
    async with running_daemon(tmp_path, {"api": {"idle_timeout": 0.5}}) as d:
        host, _, port = d.address("api").rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            async with asyncio.timeout(10):
                assert await reader.read() == b""      # closed by the daemon, nothing answered
        finally:
            writer.close()
