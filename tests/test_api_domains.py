"""Sending domains, use cases, credentials, pauses and channel addresses over the HTTP API, against
the running daemon with a real client, the test DNS server and SMTP AUTH for the credentials."""

from __future__ import annotations

import aiosmtplib
import pytest

from gateway.api.paging import encode_cursor
from gateway.submission import client_tls_context
from tests.support.api import ApiClient, api_client, api_key
from tests.support.daemon import running_daemon
from tests.support.dns import DnsServer, dns_overrides
from tests.support.tenancy import sending_setup

PROBLEM = "urn:gateway:problem:"


async def publish_from_zone(api: ApiClient, dns: DnsServer, domain: str) -> str:
    """What an operator does with the API's zone text: paste it into the zone (the test DNS server)."""
    status, records, _ = await api.get(f"/v1/domains/{domain}/records")
    assert status == 200
    status, text, headers = await api.get(f"/v1/domains/{domain}/records", params={"format": "zone"})
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for record in records["records"]:
        if record["type"] == "TXT" and record["purpose"] != "dkim":
            dns.remove(record["name"], "TXT")  # the zone replaces what was there (one SPF record)
    zone = text.decode()
    dns.load_zone(zone, origin=domain)
    return zone


def problem(body, status: int, slug: str | None = None, field: str | None = None) -> None:
    assert body["status"] == status and body["type"].startswith(PROBLEM), body
    if slug:
        assert body["type"] == PROBLEM + slug, body
    if field:
        assert body["field"] == field, body


async def test_a_domain_added_over_the_api_verifies_from_its_zone_text(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        await d.call("tenant.add", name="acme")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            status, added, headers = await api.post("/v1/domains", {"domain": "Acme.TEST."})
            assert status == 201 and headers["Location"] == "/v1/domains/acme.test"
            assert added["name"] == "acme.test" and added["state"] == "pending"
            (key,) = added["keys"]
            assert key["state"] == "pending" and len(key["public_key"]) > 100 and "key_path" not in key
            dkim = next(r for r in added["records"] if r["purpose"] == "dkim")
            assert key["public_key"] in dkim["value"] and dkim["last_status"] == "unchecked"

            status, records, _ = await api.get("/v1/domains/acme.test/records")
            assert status == 200 and records["domain"] == "acme.test"
            assert {r["status"] for r in records["records"]} == {"unchecked"}
            assert {"verification", "spf", "dkim", "dmarc", "return_path_mx", "return_path_spf"} <= {r["purpose"] for r in records["records"]}

            status, result, _ = await api.post("/v1/domains/acme.test/verify")
            assert status == 200 and result["state"] == "pending" and result["outcome"] == "pending"
            assert any(r["status"] == "missing" for r in result["records"])

            zone = await publish_from_zone(api, dns_server, "acme.test")
            assert f"{key['selector']}._domainkey.acme.test." in zone
            status, result, _ = await api.post("/v1/domains/acme.test/verify")
            assert status == 200, result
            assert result["state"] == "verified" and result["previous_state"] == "pending" and result["outcome"] == "verified"
            assert result["activated_selectors"] == [key["selector"]]
            assert {r["status"] for r in result["records"] if r["required"]} == {"verified"}

            status, records, _ = await api.get("/v1/domains/acme.test/records")
            assert {r["status"] for r in records["records"] if r["required"]} == {"verified"}
            status, shown, headers = await api.get("/v1/domains/acme.test")
            assert status == 200 and shown["state"] == "verified" and shown["last_outcome"] == "verified"
            assert shown["verified_at"] and shown["keys"][0]["state"] == "active" and shown["inbound_enabled"] is False
            assert (await api.get("/v1/domains/acme.test", headers={"If-None-Match": headers["ETag"]}))[0] == 304

            await api.post("/v1/domains", {"domain": "beta.acme-two.test"})
            await api.post("/v1/domains", {"domain": "alpha.acme-two.test"})
            seen, cursor = [], None
            while True:
                status, listed, _ = await api.get("/v1/domains", params={"limit": "2", **({"cursor": cursor} if cursor else {})})
                assert status == 200 and len(listed["data"]) <= 2
                seen += listed["data"]
                cursor = listed["next_cursor"]
                if cursor is None:
                    break
            assert [x["name"] for x in seen] == ["acme.test", "alpha.acme-two.test", "beta.acme-two.test"]
            assert seen[0]["state"] == "verified" and seen[0]["selectors"] == [{"selector": key["selector"], "state": "active"}]
        changes = await d.call("events.list", tenant="acme", type="api_change")
        assert {e["subject"] for e in changes} >= {"POST /v1/domains", "POST /v1/domains/acme.test/verify"}


async def test_dkim_rotation_selector_removal_inbound_switch_and_delete(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        setup = await sending_setup(d, dns_server)
        (old,) = setup["selectors"]
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            status, body, _ = await api.post("/v1/domains/acme.test/dkim", {"selector": "next"})
            assert status == 201, body
            assert {k["selector"]: k["state"] for k in body["keys"]} == {old: "active", "next": "pending"}
            status, body, _ = await api.post("/v1/domains/acme.test/dkim", {"selector": "next"})
            problem(body, 409, "conflict")
            status, body, _ = await api.post("/v1/domains/acme.test/dkim", {"selector": "not a label"})
            problem(body, 422, field="selector")
            status, body, _ = await api.delete(f"/v1/domains/acme.test/dkim/{old}")
            problem(body, 409, "conflict")                       # it signs: rotate first

            await publish_from_zone(api, dns_server, "acme.test")
            status, result, _ = await api.post("/v1/domains/acme.test/verify")
            assert result["state"] == "verified" and result["activated_selectors"] == ["next"]
            keys = {k["selector"]: k["state"] for k in (await api.get("/v1/domains/acme.test"))[1]["keys"]}
            assert keys == {old: "retired", "next": "active"}
            status, body, _ = await api.delete(f"/v1/domains/acme.test/dkim/{old}")
            assert status == 200 and body == {"domain": "acme.test", "selector": old, "algorithm": "rsa", "state": "retired",
                                              "removed": True}
            assert (await api.delete(f"/v1/domains/acme.test/dkim/{old}"))[0] == 404
            assert (await api.delete("/v1/domains/acme.test/dkim/-bad-"))[0] == 404

            status, body, _ = await api.put("/v1/domains/acme.test/inbound", {"enabled": True, "catchall": "nosuch"})
            problem(body, 422, field="catchall")
            status, body, _ = await api.put("/v1/domains/acme.test/inbound", {"enabled": True, "catchall": "receipts"})
            assert status == 200 and body == {"name": "acme.test", "state": "verified", "inbound_enabled": True, "catchall": "receipts"}
            shown = (await api.get("/v1/domains/acme.test"))[1]
            assert shown["inbound_enabled"] is True and shown["catchall"] == "receipts" and shown["used_by"] == ["use case receipts"]
            status, body, _ = await api.put("/v1/domains/acme.test/inbound", {"enabled": False})
            assert status == 200 and body["inbound_enabled"] is False and body["catchall"] is None

            status, body, _ = await api.delete("/v1/domains/acme.test")
            problem(body, 409, "conflict")                       # the use case uses it
            assert "use case receipts" in body["detail"]
            assert (await api.delete("/v1/usecases/receipts"))[0] == 200
            status, _, headers = await api.get("/v1/domains/acme.test")
            assert (await api.delete("/v1/domains/acme.test", headers={"If-Match": '"stale"'}))[0] == 412
            status, body, _ = await api.delete("/v1/domains/acme.test", headers={"If-Match": headers["ETag"]})
            assert status == 200 and body == {"name": "acme.test", "deleted": True, "keys_removed": 1}
            assert (await api.get("/v1/domains/acme.test"))[0] == 404
            assert (await api.get("/v1/domains"))[1]["data"] == []


async def test_invalid_domains_and_selectors_are_refused_naming_the_field(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        for name in ("acme", "globex"):
            await d.call("tenant.add", name=name)
        await d.call("domain.add", tenant="globex", domain="globex.test")
        await d.call("domain.add", tenant="globex", domain="secret-launch.bigcorp.test")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            for body, status, field in [
                ({"domain": "not a domain"}, 422, "domain"),
                ({"domain": "10.0.0.1"}, 422, "domain"),
                ({"domain": "example.com"}, 422, "domain"),          # reserved (RFC 2606)
                ({"domain": "acme.test", "dkim": "dsa"}, 422, "dkim"),
                ({"domain": "acme.test", "selector": "-x-"}, 422, "selector"),
                ({"domain": "acme.test", "colour": "red"}, 422, "colour"),
                ({"domain": "x" * 300 + ".test"}, 422, "domain"),
                ({}, 422, "domain"),
            ]:
                got, problem_body, _ = await api.post("/v1/domains", body)
                assert got == status, (body, problem_body)
                problem(problem_body, status, "invalid-request", field)
            assert (await api.post("/v1/domains", {"domain": "acme.test", "dkim": "ed25519"}))[0] == 201
            got, body, _ = await api.post("/v1/domains", {"domain": "acme.test"})
            problem(body, 409, "conflict")
            got, body, _ = await api.post("/v1/domains", {"domain": "mail.globex.test"})
            problem(body, 409, "conflict")                           # one domain, one tenant
            got, body, _ = await api.post("/v1/domains", {"domain": "bigcorp.test"})
            problem(body, 409, "conflict")                           # a subdomain is held: refused, but not named
            assert "secret" not in body["detail"], body
            assert (await api.get("/v1/domains/not%20a%20domain"))[0] == 404
            got, body, _ = await api.get("/v1/domains/acme.test/records", params={"format": "bind"})
            problem(body, 422, field="query.format")
            for path in ("/v1/domains", "/v1/usecases", "/v1/addresses", "/v1/usecases/x/credentials"):
                for cursor in (encode_cursor(1) if "credentials" not in path else encode_cursor("x"), encode_cursor("bad\x1b[2J name"), "!!"):
                    got, body, _ = await api.get(path, params={"cursor": cursor})
                    problem(body, 400, field="query.cursor")
        assert [x["name"] for x in await d.call("domain.list", tenant="acme")] == ["acme.test"]


async def test_another_tenants_objects_are_not_found_on_every_item_route(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        setup = await sending_setup(d, dns_server)
        await d.call("address.add", tenant="acme", address="help@acme.test", usecase="receipts")
        await d.call("tenant.add", name="globex")
        globex = await api_key(d, "globex", "owner")
        user = setup["username"]
        async with api_client(d, globex) as api:
            calls = [
                ("GET", "/v1/domains/acme.test", None), ("GET", "/v1/domains/acme.test/records", None),
                ("POST", "/v1/domains/acme.test/verify", None), ("POST", "/v1/domains/acme.test/dkim", {}),
                ("DELETE", f"/v1/domains/acme.test/dkim/{setup['selectors'][0]}", None),
                ("PUT", "/v1/domains/acme.test/inbound", {"enabled": True}), ("DELETE", "/v1/domains/acme.test", None),
                ("GET", "/v1/usecases/receipts", None), ("PATCH", "/v1/usecases/receipts", {"entity": "x"}),
                ("DELETE", "/v1/usecases/receipts", None), ("GET", "/v1/usecases/receipts/credentials", None),
                ("POST", "/v1/usecases/receipts/credentials", None), ("GET", f"/v1/usecases/receipts/credentials/{user}", None),
                ("DELETE", f"/v1/usecases/receipts/credentials/{user}", None), ("PUT", "/v1/usecases/receipts/pause", None),
                ("DELETE", "/v1/usecases/receipts/pause", None), ("GET", "/v1/addresses/help@acme.test", None),
                ("PATCH", "/v1/addresses/help@acme.test", {"enabled": False}), ("DELETE", "/v1/addresses/help@acme.test", None),
            ]
            names = [("acme.test", "ghost.test"), (user, "ghost-user"), ("receipts", "ghost"), (setup["selectors"][0], "ghostsel")]

            def ghost(text: str) -> str:
                for real, made_up in names:
                    text = text.replace(real, made_up)
                return text

            for method, path, body in calls:
                status, answer, _ = await api.request(method, path, json_body=body)
                assert status == 404, (method, path, answer)
                problem(answer, 404, "not-found")
                # The same answer as for names nothing has: nothing tells that acme's exist.
                _, nothing, _ = await api.request(method, ghost(path), json_body=body)
                assert ghost(answer["detail"]) == nothing["detail"], (path, answer, nothing)
            # Nor do lists show them, nor may a body name them.
            for path in ("/v1/domains", "/v1/usecases", "/v1/addresses"):
                assert (await api.get(path))[1]["data"] == []
            await d.call("domain.add", tenant="globex", domain="globex.test")
            status, body, _ = await api.post("/v1/usecases", {"name": "x", "domain": "acme.test", "entity": "G", "kind": "transactional",
                                                               "senders": ["a@acme.test"]})
            problem(body, 422, field="domain")
            status, body, _ = await api.post("/v1/addresses", {"address": "help2@acme.test", "usecase": "receipts"})
            problem(body, 422, field="address")
        shown = await d.call("domain.show", domain="acme.test")
        assert shown["state"] == "verified" and len(shown["keys"]) == 1 and shown["used_by"] == ["use case receipts"]
        assert (await d.call("usecase.show", tenant="acme", name="receipts"))["credentials"] == 1
        assert (await d.call("pause.list")) == []
        assert [a["address"] for a in await d.call("address.list", tenant="acme")] == ["help@acme.test"]


async def test_roles_that_may_not_change_these_get_403_naming_the_permission(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        setup = await sending_setup(d, dns_server)
        await d.call("address.add", tenant="acme", address="help@acme.test", usecase="receipts")
        user = setup["username"]
        sel = setup["selectors"][0]
        domain_manage = [("POST", "/v1/domains", {"domain": "new.test"}), ("POST", "/v1/domains/acme.test/dkim", {}),
                         ("DELETE", f"/v1/domains/acme.test/dkim/{sel}", None),
                         ("PUT", "/v1/domains/acme.test/inbound", {"enabled": True}), ("DELETE", "/v1/domains/acme.test", None)]
        usecase_write = [("POST", "/v1/usecases", {"name": "x", "domain": "acme.test", "entity": "A", "kind": "marketing",
                                                   "senders": ["news@acme.test"]}),
                         ("PATCH", "/v1/usecases/receipts", {"entity": "x"}), ("DELETE", "/v1/usecases/receipts", None),
                         ("POST", "/v1/usecases/receipts/credentials", None), ("DELETE", f"/v1/usecases/receipts/credentials/{user}", None),
                         ("PUT", "/v1/usecases/receipts/pause", None), ("DELETE", "/v1/usecases/receipts/pause", None)]
        address_write = [("POST", "/v1/addresses", {"address": "sales@acme.test", "usecase": "receipts"}),
                         ("PATCH", "/v1/addresses/help@acme.test", {"enabled": False}), ("DELETE", "/v1/addresses/help@acme.test", None)]
        reads = {"domains.read": ["/v1/domains", "/v1/domains/acme.test", "/v1/domains/acme.test/records"],
                 "usecases.read": ["/v1/usecases", "/v1/usecases/receipts", "/v1/usecases/receipts/credentials",
                                   f"/v1/usecases/receipts/credentials/{user}"],
                 "addresses.read": ["/v1/addresses", "/v1/addresses/help@acme.test"]}
        refused = {
            "admin": [(c, "domains.manage") for c in domain_manage],
            "agent": [(c, "domains.manage") for c in domain_manage] + [(c, "usecases.write") for c in usecase_write]
                     + [(c, "addresses.write") for c in address_write] + [(("POST", "/v1/domains/acme.test/verify", None), "domains.verify")]
                     + [(("GET", p, None), perm) for perm in ("domains.read", "usecases.read") for p in reads[perm]],
        }
        refused["sender"] = refused["agent"] + [(("GET", p, None), "addresses.read") for p in reads["addresses.read"]]
        allowed = {"admin": [p for paths in reads.values() for p in paths], "agent": reads["addresses.read"], "sender": []}
        for role in ("admin", "agent", "sender"):
            key = await api_key(d, "acme", role, usecase="receipts" if role == "sender" else None)
            async with api_client(d, key) as api:
                for (method, path, body), permission in refused[role]:
                    status, answer, _ = await api.request(method, path, json_body=body)
                    assert status == 403, (role, method, path, answer)
                    problem(answer, 403, "forbidden")
                    assert answer["permission"] == permission, (role, path, answer)
                for path in allowed[role]:
                    assert (await api.get(path))[0] == 200, (role, path)
                if role == "admin":   # an admin asks for a verification; it may not change domain authentication
                    status, result, _ = await api.post("/v1/domains/acme.test/verify")
                    assert status == 200 and result["state"] == "verified"
        shown = await d.call("domain.show", domain="acme.test")
        assert len(shown["keys"]) == 1 and shown["inbound_enabled"] is False
        usecase = await d.call("usecase.show", tenant="acme", name="receipts")
        assert usecase["entity"] == "acme receipts" and usecase["credentials"] == 1
        assert await d.call("pause.list") == [] and len(await d.call("address.list", tenant="acme")) == 1
        assert [x["name"] for x in await d.call("domain.list", tenant="acme")] == ["acme.test"]


async def test_use_cases_credentials_and_pause_over_the_api(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        setup = await sending_setup(d, dns_server)
        await d.call("domain.add", tenant="acme", domain="pending.test")
        admin = await api_key(d, "acme", "admin")
        new = {"name": "news", "domain": "acme.test", "entity": "Acme News", "kind": "marketing", "senders": ["News@Acme.test"]}
        async with api_client(d, admin) as api:
            for change, status, field in [
                ({"kind": "spam"}, 422, "kind"),
                ({"name": "Bad Name"}, 422, "name"),
                ({"senders": ["news@other.test"]}, 422, "senders"),
                ({"senders": []}, 422, "senders"),
                ({"senders": ["not-an-address"]}, 422, "senders"),
                ({"entity": "bad\x07entity"}, 422, "entity"),
                ({"rate_limit": -1}, 422, "rate_limit"),
                ({"route": "connector:nosuch"}, 422, "route"),
                ({"route": "somewhere"}, 422, "route"),
                ({"domain": "nosuch.test", "senders": ["a@nosuch.test"]}, 422, "domain"),
                ({"domain": "pending.test", "senders": ["a@pending.test"]}, 409, None),   # not verified
                ({"name": "receipts"}, 409, None),                                          # taken
            ]:
                got, body, _ = await api.post("/v1/usecases", {**new, **change})
                assert got == status, (change, body)
                problem(body, status, field=field)
            status, made, headers = await api.post("/v1/usecases", new)
            assert status == 201 and headers["Location"] == "/v1/usecases/news"
            assert made["senders"] == ["News@acme.test"] and made["list_unsubscribe"] == "default"
            assert made["list_unsubscribe_active"] is True and made["suppressed"] == "refuse" and made["paused"] is False
            assert made["credentials"] == 0 and made["domain_state"] == "verified"

            listed = (await api.get("/v1/usecases", params={"limit": "1"}))[1]
            assert [u["name"] for u in listed["data"]] == ["news"] and listed["next_cursor"]
            listed = (await api.get("/v1/usecases", params={"limit": "1", "cursor": listed["next_cursor"]}))[1]
            assert [u["name"] for u in listed["data"]] == ["receipts"] and listed["next_cursor"] is None

            # PATCH with If-Match: a stale tag is refused and changes nothing; the current one applies.
            _, before, headers = await api.get("/v1/usecases/news")
            tag = headers["ETag"]
            status, body, _ = await api.patch("/v1/usecases/news", {"entity": "Changed"}, headers={"If-Match": '"other"'})
            problem(body, 412, "precondition-failed")
            assert (await api.get("/v1/usecases/news"))[1]["entity"] == "Acme News"
            status, body, _ = await api.patch("/v1/usecases/news", {"entity": "Acme Weekly", "add_senders": ["weekly@acme.test"],
                                                                    "list_unsubscribe": "off", "rate_limit": 60},
                                              headers={"If-Match": tag})
            assert status == 200 and body["entity"] == "Acme Weekly" and body["senders"] == ["News@acme.test", "weekly@acme.test"]
            assert body["list_unsubscribe"] == "off" and body["list_unsubscribe_active"] is False and body["rate_limit"] == 60
            assert (await api.patch("/v1/usecases/news", {"entity": "again"}, headers={"If-Match": tag}))[0] == 412
            for change, field in [({}, None), ({"kind": "bulk"}, "kind"), ({"remove_senders": ["News@acme.test", "weekly@acme.test"]}, "senders"),
                                  ({"route": "connector:nosuch"}, "route"), ({"colour": 1}, "colour")]:
                got, body, _ = await api.patch("/v1/usecases/news", change)
                assert got == 422, (change, body)
                problem(body, 422, field=field)
            assert (await api.patch("/v1/usecases/news", {"name": "receipts"}))[0] == 409
            status, body, _ = await api.patch("/v1/usecases/news", {"name": "weekly"})
            assert status == 200 and body["name"] == "weekly"
            assert (await api.get("/v1/usecases/news"))[0] == 404
            assert (await api.get("/v1/usecases/NOT%20A%20NAME"))[0] == 404

            # Credentials: the password once, never listed; a revoked one stops working.
            status, cred, headers = await api.post("/v1/usecases/weekly/credentials")
            assert status == 201 and len(cred["password"]) >= 32 and cred["usecase"] == "weekly"
            assert headers["Location"] == f"/v1/usecases/weekly/credentials/{cred['username']}"
            await api.post("/v1/usecases/weekly/credentials")
            status, listed, _ = await api.get("/v1/usecases/weekly/credentials", params={"limit": "1"})
            assert status == 200 and [c["username"] for c in listed["data"]] == [cred["username"]] and listed["next_cursor"]
            assert cred["password"] not in str(listed) and "hash" not in str(listed)
            listed2 = (await api.get("/v1/usecases/weekly/credentials", params={"cursor": listed["next_cursor"]}))[1]
            assert len(listed2["data"]) == 1 and listed2["next_cursor"] is None
            status, one, _ = await api.get(f"/v1/usecases/weekly/credentials/{cred['username']}")
            assert status == 200 and one["revoked_at"] is None and "password" not in one
            assert (await api.get("/v1/usecases/weekly"))[1]["credentials"] == 2
            smtp = d.hostport("submission")
            async with aiosmtplib.SMTP(hostname=smtp[0], port=smtp[1], start_tls=True, tls_context=client_tls_context()) as client:
                await client.login(cred["username"], cred["password"])
            status, one, _ = await api.delete(f"/v1/usecases/weekly/credentials/{cred['username']}")
            assert status == 200 and one["revoked_at"] is not None
            async with aiosmtplib.SMTP(hostname=smtp[0], port=smtp[1], start_tls=True, tls_context=client_tls_context()) as client:
                with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                    await client.login(cred["username"], cred["password"])
            assert (await api.get("/v1/usecases/weekly/credentials/nobody-123"))[0] == 404
            assert (await api.delete("/v1/usecases/weekly/credentials/nobody-123"))[0] == 404
            assert (await api.get(f"/v1/usecases/receipts/credentials/{cred['username']}"))[0] == 404   # another use case's

            # Pause and resume: repeatable; the use case shows it.
            status, body, _ = await api.put("/v1/usecases/receipts/pause")
            assert status == 200 and body == {"usecase": "receipts", "paused": True, "changed": True, "held": 0, "released": 0}
            assert (await api.put("/v1/usecases/receipts/pause"))[1]["changed"] is False
            assert (await api.get("/v1/usecases/receipts"))[1]["paused"] is True
            assert [(p["scope"], p["usecase"]) for p in await d.call("pause.list")] == [("usecase", "receipts")]
            status, body, _ = await api.delete("/v1/usecases/receipts/pause")
            assert status == 200 and body["paused"] is False and body["changed"] is True
            assert (await api.delete("/v1/usecases/receipts/pause"))[1]["changed"] is False
            assert await d.call("pause.list") == []
            assert (await api.put("/v1/usecases/nosuch/pause"))[0] == 404
            assert (await api.delete("/v1/usecases/nosuch/pause"))[0] == 404

            status, body, _ = await api.delete("/v1/usecases/weekly")
            assert status == 200 and body == {"name": "weekly", "deleted": True}
            assert (await api.delete("/v1/usecases/weekly"))[0] == 404
        assert [u["name"] for u in await d.call("usecase.list", tenant="acme")] == [setup["usecase"]]


async def test_channel_addresses_over_the_api(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        await sending_setup(d, dns_server)
        await d.call("domain.add", tenant="acme", domain="other.test")
        admin = await api_key(d, "acme", "admin")
        async with api_client(d, admin) as api:
            for body, status, field in [
                ({"address": "not an address", "usecase": "receipts"}, 422, "address"),
                ({"address": "help@nosuch.test", "usecase": "receipts"}, 422, "address"),
                ({"address": "help@acme.test", "usecase": "nosuch"}, 422, "usecase"),
                ({"address": "help@acme.test", "usecase": "receipts", "direction": "sideways"}, 422, "direction"),
                ({"address": "help@acme.test", "usecase": "receipts", "reply_copy": "help@acme.test"}, 422, "reply_copy"),
                ({"address": "help@acme.test", "usecase": "receipts", "footer_text": "a\x00b"}, 422, "footer_text"),
                ({"address": "help@acme.test", "usecase": "receipts", "footer_text": "x" * 5000}, 422, "footer_text"),
                ({"address": "help@other.test", "usecase": "receipts"}, 409, None),   # the use case is of another domain
            ]:
                got, answer, _ = await api.post("/v1/addresses", body)
                assert got == status, (body, answer)
                problem(answer, status, field=field)
            status, made, headers = await api.post("/v1/addresses", {"address": "Help@ACME.test", "usecase": "receipts",
                                                                     "display_name": "Acme Help", "footer_text": "Thanks,\nAcme"})
            assert status == 201 and headers["Location"] == "/v1/addresses/help@acme.test"
            assert made["address"] == "help@acme.test" and made["direction"] == "both" and made["enabled"] is True
            assert made["footer_text"] == "Thanks,\nAcme" and made["domain_state"] == "verified"
            assert (await api.post("/v1/addresses", {"address": "help@acme.test", "usecase": "receipts"}))[0] == 409
            await api.post("/v1/addresses", {"address": "sales@acme.test", "usecase": "receipts"})
            page1 = (await api.get("/v1/addresses", params={"limit": "1"}))[1]
            page2 = (await api.get("/v1/addresses", params={"limit": "1", "cursor": page1["next_cursor"]}))[1]
            assert [a["address"] for a in page1["data"] + page2["data"]] == ["help@acme.test", "sales@acme.test"]
            assert page2["next_cursor"] is None

            _, shown, headers = await api.get("/v1/addresses/HELP@acme.test")
            assert shown == made
            status, body, _ = await api.patch("/v1/addresses/help@acme.test", {"direction": "inbound"}, headers={"If-Match": '"x"'})
            problem(body, 412, "precondition-failed")
            status, body, _ = await api.patch("/v1/addresses/help@acme.test", {"direction": "inbound", "vcard": True,
                                                                               "reply_copy": "archive@acme.test"},
                                              headers={"If-Match": headers["ETag"]})
            assert status == 200 and body["direction"] == "inbound" and body["vcard"] is True and body["reply_copy"] == "archive@acme.test"
            for change, status, field in [({}, 422, None), ({"usecase": "nosuch"}, 422, "usecase"), ({"enabled": "no"}, 422, "enabled"),
                                          ({"display_name": "a\x01"}, 422, "display_name")]:
                got, answer, _ = await api.patch("/v1/addresses/help@acme.test", change)
                assert got == status, (change, answer)
                problem(answer, status, field=field)
            assert (await api.patch("/v1/addresses/nobody@acme.test", {"enabled": False}))[0] == 404
            assert (await api.get("/v1/addresses/not-an-address"))[0] == 404

            status, body, _ = await api.delete("/v1/addresses/help@acme.test")
            assert status == 200 and body["address"] == "help@acme.test"
            assert (await api.get("/v1/addresses/help@acme.test"))[0] == 404
            assert (await api.delete("/v1/addresses/help@acme.test"))[0] == 404
        assert [a["address"] for a in await d.call("address.list", tenant="acme")] == ["sales@acme.test"]
