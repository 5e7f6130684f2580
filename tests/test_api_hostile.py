"""The API listener against a hostile client: huge headers, trickled bodies, idle connections, bytes
that are not UTF-8, JSON that is not JSON, numbers past what the store holds, repeated parameters,
floods of bad keys; and the listener over TLS."""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiohttp

from tests.support.api import api_client, api_key
from tests.support.daemon import running_daemon

PROBLEM = "urn:gateway:problem:"


def host_port(d) -> tuple[str, int]:
    host, _, port = d.address("api").rpartition(":")
    return host, int(port)


async def raw_exchange(d, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send bytes as they are; what came back before the server closed (or read_timeout)."""
    reader, writer = await asyncio.open_connection(*host_port(d))
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in b"".join(chunks):
                    break
        return b"".join(chunks)
    finally:
        writer.close()


async def test_bytes_that_are_not_what_they_claim_get_problems_never_a_500(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            json_headers = {"Content-Type": "application/json"}
            for body in (b'{"enabled": "\xff\xfe"}', b'{"enabled": NaN}', b'{"enabled": true', b"\xef\xbb\xbf{}",
                         b'{"enabled": true, "enabled": 1e999}', b"[" * 50000 + b"]" * 50000):
                status, problem, _ = await api.request("PUT", "/v1/tenant/outbound", data=body, headers=json_headers)
                assert status in (400, 422) and problem["type"].startswith(PROBLEM), (body[:40], status, problem)
            status, problem, _ = await api.request("PUT", "/v1/tenant/outbound", headers=json_headers,
                                                   data=b'{"' + b"z" * 200_000 + b'": 1}')
            assert status == 422 and len(problem["detail"]) < 1100     # the detail quotes the field, not all of it
            for path in ("/v1/apikeys/%ff%fe", "/v1/apikeys/%00", "/v1/apikeys/" + "a" * 5000, "/v1/%c0%af"):
                status, problem, _ = await api.get(path)
                assert status in (404, 414, 400) and (status == 414 or problem["type"] == PROBLEM + "not-found"), (path, status)
            status, problem, _ = await api.get("/v1/apikeys?cursor=%ff%fe")
            assert status == 400 and problem["field"] == "query.cursor"
            status, problem, _ = await api.get("/v1/apikeys?limit=99999999999999999999999999")
            assert status == 422 and problem["field"] == "query.limit"
            # A repeated single-valued parameter: the last one counts (as most servers do), once.
            status, page, _ = await api.get("/v1/apikeys?limit=5&limit=1")
            assert status == 200 and len(page["data"]) == 1
            for name in ("If-Match", "If-None-Match"):
                status, problem, _ = await api.get("/v1/tenant", headers={name: '"' + "a" * 2000 + '"'})
                assert status == 400 and problem["field"] == f"header.{name}", name
            assert (await api.get("/v1/tenant"))[0] == 200


async def test_huge_headers_are_refused_and_the_listener_keeps_serving(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.api.http")
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        huge = b"GET /v1/tenant HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n"
        answer = await raw_exchange(d, huge)
        assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
        many = b"GET /v1/tenant HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(20_000)) + b"\r\n"
        answer = await raw_exchange(d, many)
        assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
        async with api_client(d, owner) as api:
            assert (await api.get("/v1/tenant"))[0] == 200
    refusals = [r for r in caplog.records if r.name == "gateway.api.http"]
    assert len(refusals) == 2 and all(r.levelno == logging.INFO and not r.exc_info for r in refusals), refusals


async def test_a_trickled_body_gets_408_and_frees_its_slot(tmp_path):
    async with running_daemon(tmp_path, {"api": {"body_timeout": 1.0, "max_inflight": 1}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        reader, writer = await asyncio.open_connection(*host_port(d))
        writer.write(b"PUT /v1/tenant/outbound HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + owner.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"en")
        await writer.drain()
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        writer.close()
        async with api_client(d, owner) as api:       # the one in-flight slot is free again
            assert (await api.get("/v1/tenant"))[0] == 200
        assert (await d.call("tenant.show", name="acme"))["outbound_enabled"] is True


async def test_an_address_sending_bad_keys_is_cooled_down_and_others_are_not(tmp_path):
    async with running_daemon(tmp_path, {"api": {"auth_failure_rate": 1.0}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        base = f"http://{d.address('api')}"
        bad = {"Authorization": "Bearer gw_live_aaaaaaaaaaaa_" + "A" * 43}
        statuses = []
        async with aiohttp.ClientSession() as session:
            for _ in range(8):
                async with session.get(base + "/v1/tenant", headers=bad) as resp:
                    statuses.append(resp.status)
                    problem = await resp.json(content_type=None)
            assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
            assert problem["type"] == PROBLEM + "too-many-failures" and int(resp.headers["Retry-After"]) >= 1
            # Even a good key from that address waits (its keys are not looked at while it cools down).
            async with session.get(base + "/v1/tenant", headers={"Authorization": f"Bearer {owner}"}) as resp:
                assert resp.status == 429
        # Another address is not slowed by it.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(base + "/v1/tenant", headers=bad) as resp:
                assert resp.status == 401
            async with session.get(base + "/v1/tenant", headers={"Authorization": f"Bearer {owner}"}) as resp:
                assert resp.status == 200


async def test_the_api_over_tls_with_the_self_signed_pair(tmp_path):
    async with running_daemon(tmp_path, {"api": {"tls": True}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        context = ssl.create_default_context(cafile=str(d.daemon.paths.state_dir / "tls" / "selfsigned.crt"))
        context.check_hostname = False      # the pair names the configured hostname, the test dials 127.0.0.1
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            async with session.get(f"https://{d.address('api')}/v1/tenant", headers={"Authorization": f"Bearer {owner}"}) as resp:
                assert resp.status == 200 and (await resp.json())["name"] == "acme"
            async with session.get(f"https://{d.address('api')}/v1/openapi.json") as resp:
                assert resp.status == 200
        answer = await raw_exchange(d, b"GET /v1/tenant HTTP/1.1\r\nHost: x\r\n\r\n", read_timeout=5)
        assert not answer.startswith(b"HTTP/1.1 200"), answer[:100]      # plain HTTP gets no API


async def test_a_connection_that_sends_nothing_or_half_a_request_is_closed_after_idle_timeout(tmp_path):
    async with running_daemon(tmp_path, {"api": {"idle_timeout": 1.0}}) as d:
        silent = await asyncio.open_connection(*host_port(d))
        half = await asyncio.open_connection(*host_port(d))
        half[1].write(b"GET /v1/tenant HTTP/1.1\r\nHost: x\r\n")     # headers never finished
        async with asyncio.timeout(10):
            for reader, _ in (silent, half):
                assert await reader.read() == b""       # closed by the server
        for _, writer in (silent, half):
            writer.close()


async def test_one_address_cannot_take_every_request_slot(tmp_path):
    async with running_daemon(tmp_path, {"api": {"max_inflight_per_client": 2, "body_timeout": 5.0}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        stalled = []
        for _ in range(2):      # two requests from 127.0.0.1 whose bodies never come: both its slots
            reader, writer = await asyncio.open_connection(*host_port(d))
            writer.write(b"PUT /v1/tenant/outbound HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + owner.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{")
            await writer.drain()
            stalled.append((reader, writer))
        base = f"http://{d.address('api')}/v1/tenant"
        headers = {"Authorization": f"Bearer {owner}"}
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(10):
                while True:     # until the server has both stalled requests in hand
                    async with session.get(base, headers=headers) as resp:
                        if resp.status == 503:
                            assert (await resp.json(content_type=None))["type"] == PROBLEM + "busy"
                            break
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as session:
            async with session.get(base, headers=headers) as resp:
                assert resp.status == 200     # another address is served
        for _, writer in stalled:
            writer.close()


async def test_a_chunked_body_is_cut_at_the_routes_own_limit(tmp_path):
    async with running_daemon(tmp_path, {"api": {"max_body_bytes": 2048}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        sent = 0

        async def body():       # 48 MiB offered; the server must stop long before
            nonlocal sent
            for _ in range(768):
                sent += 65536
                yield b" " * 65536

        async with aiohttp.ClientSession() as session:
            try:
                async with session.put(f"http://{d.address('api')}/v1/tenant/outbound", data=body(),
                                       headers={"Authorization": f"Bearer {owner}", "Content-Type": "application/json"}) as resp:
                    assert resp.status == 413 and (await resp.json(content_type=None))["status"] == 413
            except aiohttp.ClientError:
                pass        # the server answered and closed while the client was still sending: also a refusal
        # Before, the server read up to the send route's limit (35 MB by default); the socket buffers
        # between client and server hold a few MB more than the server read.
        assert sent < 16 * 1024 * 1024, sent
