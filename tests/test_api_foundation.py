"""The API's own machinery against the running daemon: keys, roles, problems, limits, ETags, audit."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from click.testing import CliRunner

from gateway.cli import main
from tests.support.api import api_client, api_key
from tests.support.daemon import AdminError, running_daemon

PROBLEM = "urn:gateway:problem:"


async def cli(d, *args):
    return await asyncio.to_thread(CliRunner().invoke, main, ["--socket", str(d.daemon.paths.socket), *args])


async def test_a_key_is_shown_once_and_only_its_hash_is_stored(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        result = await cli(d, "apikey", "add", "acme", "--role", "owner", "--name", "ci deploys")
        assert result.exit_code == 0, result.output
        token = next(line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("token: "))
        assert token.startswith("gw_live_")
        listed = await cli(d, "apikey", "list", "acme", "--json")
        assert token not in listed.output and "hash" not in listed.output
        assert '"role": "owner"' in listed.output and "ci deploys" in listed.output
        async with api_client(d, token) as api:
            status, body, _ = await api.get("/v1/tenant")
        assert status == 200 and body["name"] == "acme"
    db = sqlite3.connect(tmp_path / "state" / "gateway.db")
    (stored,) = db.execute("SELECT hash FROM api_keys").fetchone()
    secret = token[-43:]   # the secret is base64url: it may hold "_" itself
    assert secret not in stored and len(stored) == 64
    dump = "\n".join(db.iterdump())
    assert secret not in dump


async def test_missing_malformed_unknown_revoked_and_expired_keys_get_401(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        good = await api_key(d, "acme", "owner")
        revoked = await api_key(d, "acme", "admin")
        async with api_client(d, revoked) as api:
            assert (await api.get("/v1/tenant"))[0] == 200       # it worked, and is remembered now
        await d.call("apikey.revoke", key=revoked)
        wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
        unknown = "gw_live_aaaaaaaaaaaa_" + "A" * 43
        for token in (None, "nonsense", wrong_secret, unknown, revoked):
            async with api_client(d, token) as api:
                status, body, headers = await api.get("/v1/tenant")
            assert status == 401, token
            assert body["type"] == PROBLEM + "unauthorized" and headers["Content-Type"].startswith("application/problem+json")
        expires_at = time.time() + 1.5  # made here, not with the others: a loaded machine can spend 1.5 s on the 401s
        expiring = await api_key(d, "acme", "admin", expires_at=expires_at)
        async with api_client(d, expiring) as api:
            assert (await api.get("/v1/tenant"))[0] == 200
            # The key's own expiry time has to pass: nothing to await but the clock, and no more of it.
            await asyncio.sleep(max(0.0, expires_at - time.time()) + 0.1)
            assert (await api.get("/v1/tenant"))[0] == 401
        async with api_client(d, good) as api:
            assert (await api.get("/v1/tenant"))[0] == 200


async def test_a_role_without_the_permission_gets_403_naming_it(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        agent = await api_key(d, "acme", "agent")
        async with api_client(d, agent) as api:
            status, body, _ = await api.put("/v1/tenant/outbound", {"enabled": False})
            assert status == 403
            assert body["type"] == PROBLEM + "forbidden" and body["permission"] == "tenant.outbound"
            assert (await api.get("/v1/apikeys"))[1]["permission"] == "apikeys.read"
        assert (await d.call("tenant.show", name="acme"))["outbound_enabled"] is True


async def test_a_change_is_audited_with_who_what_and_when(tmp_path):
    async with running_daemon(tmp_path, {"api": {"trusted_proxies": ["127.0.0.1"]}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner", name="dashboard")
        public_id = owner.split("_")[2]
        async with api_client(d, owner) as api:
            status, body, _ = await api.put("/v1/tenant/outbound", {"enabled": False}, headers={"X-Forwarded-For": "203.0.113.9"})
        assert status == 200 and body["outbound_enabled"] is False
        (event,) = await d.call("events.list", tenant="acme", type="api_change")
        assert event["subject"] == "PUT /v1/tenant/outbound"
        assert event["data"]["key"] == public_id and event["data"]["key_name"] == "dashboard"
        assert event["data"]["role"] == "owner" and event["data"]["client"] == "203.0.113.9"
        assert event["created_at"] > time.time() - 60


async def test_forwarded_headers_are_ignored_from_an_untrusted_peer(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            await api.put("/v1/tenant/outbound", {"enabled": False}, headers={"X-Forwarded-For": "203.0.113.9"})
        (event,) = await d.call("events.list", tenant="acme", type="api_change")
        assert event["data"]["client"] == "127.0.0.1"


async def test_metrics_and_health_are_not_served_on_the_api_listener(tmp_path):
    async with running_daemon(tmp_path) as d:
        async with api_client(d) as api:
            for path in ("/metrics", "/health", "/u/anything"):
                status, body, _ = await api.get(path)
                assert status == 404 and body["type"] == PROBLEM + "not-found", path


async def test_the_rate_limit_answers_429_with_retry_after(tmp_path):
    async with running_daemon(tmp_path, {"api": {"rate_burst": 1.0}}) as d:
        await d.call("tenant.add", name="acme")
        slow = await api_key(d, "acme", "owner", rate_limit=0.5)   # one token, then one every 2 s
        other = await api_key(d, "acme", "owner")
        async with api_client(d, slow) as api:
            assert (await api.get("/v1/tenant"))[0] == 200
            status, body, headers = await api.get("/v1/tenant")
        assert status == 429 and body["type"] == PROBLEM + "rate-limited"
        assert 1 <= int(headers["Retry-After"]) <= 2 and body["retry_after"] == int(headers["Retry-After"])
        async with api_client(d, other) as api:   # per key: the other key is not slowed
            assert (await api.get("/v1/tenant"))[0] == 200


async def test_etags_give_304_and_if_match_refuses_a_stale_change(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        victim = (await d.call("apikey.add", tenant="acme", role="admin", name="old"))["public_id"]
        async with api_client(d, owner) as api:
            status, body, headers = await api.get(f"/v1/apikeys/{victim}")
            assert status == 200 and body["public_id"] == victim
            tag = headers["ETag"]
            assert (await api.get(f"/v1/apikeys/{victim}", headers={"If-None-Match": tag}))[0] == 304
            status, body, _ = await api.delete(f"/v1/apikeys/{victim}", headers={"If-Match": '"stale"'})
            assert status == 412 and body["type"] == PROBLEM + "precondition-failed"
            assert (await api.get(f"/v1/apikeys/{victim}"))[1]["revoked_at"] is None
            status, body, _ = await api.delete(f"/v1/apikeys/{victim}", headers={"If-Match": tag})
            assert status == 200 and body["revoked_at"] is not None
            status, _, headers = await api.get(f"/v1/apikeys/{victim}", headers={"If-None-Match": tag})
            assert status == 200 and headers["ETag"] != tag


async def test_another_tenants_key_is_not_found_and_a_revoked_key_stops_at_once(tmp_path):
    async with running_daemon(tmp_path) as d:
        for name in ("acme", "globex"):
            await d.call("tenant.add", name=name)
        acme = await api_key(d, "acme", "owner")
        globex = await api_key(d, "globex", "owner")
        acme_id = acme.split("_")[2]
        async with api_client(d, globex) as api:
            assert (await api.get(f"/v1/apikeys/{acme_id}"))[0] == 404
            assert (await api.delete(f"/v1/apikeys/{acme_id}"))[0] == 404
            listed = (await api.get("/v1/apikeys"))[1]
            assert [k["public_id"] for k in listed["data"]] == [globex.split("_")[2]]
        async with api_client(d, acme) as api:
            assert (await api.get("/v1/tenant"))[0] == 200
            assert (await api.delete(f"/v1/apikeys/{acme_id}"))[0] == 200     # revokes itself
            assert (await api.get("/v1/tenant"))[0] == 401                      # the cache forgot it


async def test_bad_bodies_and_queries_get_problems_naming_the_field(tmp_path):
    async with running_daemon(tmp_path, {"api": {"max_body_bytes": 2048}}) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            cases = [
                (dict(data=b"{not json", headers={"Content-Type": "application/json"}), 400, None),
                (dict(json_body={"enabled": "yes"}), 422, "enabled"),
                (dict(json_body={"enabled": True, "extra": 1}), 422, "extra"),
                (dict(json_body={}), 422, "enabled"),
                (dict(data=b"enabled=1", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415, "body"),
                (dict(data=b'{"enabled": true}' + b" " * 4096, headers={"Content-Type": "application/json"}), 413, None),
            ]
            for kwargs, status, field in cases:
                got, body, _ = await api.request("PUT", "/v1/tenant/outbound", **kwargs)
                assert got == status, (kwargs, body)
                assert body["status"] == status and body["type"].startswith(PROBLEM)
                if field:
                    assert body["field"] == field, body
            got, body, _ = await api.get("/v1/apikeys", params={"limit": "0"})
            assert got == 422 and body["field"] == "query.limit"
            got, body, _ = await api.get("/v1/apikeys", params={"colour": "red"})
            assert got == 422 and body["field"].startswith("query")
            got, body, _ = await api.get("/v1/apikeys", params={"cursor": "!!!"})
            assert got == 400 and body["field"] == "query.cursor"
            got, body, headers = await api.request("PATCH", "/v1/tenant")
            assert got == 405 and "GET" in headers["Allow"]
        assert (await d.call("tenant.show", name="acme"))["outbound_enabled"] is True


async def test_keys_are_paged_with_a_cursor(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        for n in range(4):
            await d.call("apikey.add", tenant="acme", role="agent", name=f"k{n}")
        seen, cursor = [], None
        async with api_client(d, owner) as api:
            while True:
                params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
                status, body, _ = await api.get("/v1/apikeys", params=params)
                assert status == 200 and len(body["data"]) <= 2
                seen += [k["name"] for k in body["data"]]
                cursor = body["next_cursor"]
                if cursor is None:
                    break
        assert seen == ["", "k0", "k1", "k2", "k3"]


async def test_key_rules_at_the_admin_socket(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        for params, fragment in [
            ({"role": "sender"}, "use case"),
            ({"role": "admin", "usecase": "x"}, "not narrowed"),
            ({"role": "root"}, "role must be"),
            ({"role": "owner", "expires_at": time.time() - 10}, "past"),
        ]:
            try:
                await d.call("apikey.add", tenant="acme", **params)
            except AdminError as exc:
                assert fragment in str(exc), (params, exc)
            else:
                raise AssertionError(f"accepted {params}")
        result = await cli(d, "apikey", "add", "nobody", "--role", "owner")
        assert result.exit_code == 1 and "no tenant" in result.output


async def test_the_openapi_document_describes_every_route_with_its_permission(tmp_path):
    async with running_daemon(tmp_path) as d:
        routes = next(c for c in d.daemon.components if c.name == "api").routes
        async with api_client(d) as api:
            status, doc, _ = await api.get("/v1/openapi.json")
        assert status == 200 and doc["openapi"].startswith("3.1")
        for route in routes:
            op = doc["paths"][route.path][route.method.lower()]
            assert op["x-permission"] == route.permission
            assert "401" in op["responses"] and "403" in op["responses"]
        assert doc["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
