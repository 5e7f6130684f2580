"""Connectors, suppressions, webhooks and forwarding rules over the HTTP API, against the running daemon.

Each test drives the routes with real keys of every role: the owner and admin succeed, agent and
sender keys get 403, another tenant's key gets 404 on every item route, and no response ever
carries a secret that was written.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from typing import Any

import aiohttp
from click.testing import CliRunner

from gateway.api.paging import encode_cursor
from gateway.cli import main
from gateway.store.db import migrations
from gateway.store.suppressions import _list as list_suppressions
from tests.support.api import ApiClient, api_client, api_key
from tests.support.daemon import merge, running_daemon
from tests.support.tenancy import dns_overrides, sending_setup
from tests.support.sink import mail_sink
from tests.support.webhooks import WebhookReceiver

PROBLEM = "urn:gateway:problem:"
SMTP_SECRET = "smtp-Pa55word-7f3e9c"
MAILBOX_SECRET = "mailbox-Pa55word-0b1d2a"
SENDGRID_SECRET = "SG.sendgrid-token-5a6b7c8d"


def daemon(tmp_path, dns, overrides: dict | None = None):
    """The daemon with its resolver on the test DNS server (a use case needs a verified domain)."""
    return running_daemon(tmp_path, merge(dns_overrides(dns), overrides or {}))


async def tenants(d, dns) -> dict[str, str]:
    """acme (with a verified domain, a use case and a channel address) and globex; a key of every role."""
    await sending_setup(d, dns, tenant="acme", domain="acme.test", usecase="support", sender="help@acme.test")
    await d.call("address.add", tenant="acme", address="help@acme.test", usecase="support")
    await d.call("tenant.add", name="globex")
    return {
        "owner": await api_key(d, "acme", "owner"),
        "admin": await api_key(d, "acme", "admin"),
        "agent": await api_key(d, "acme", "agent"),
        "sender": await api_key(d, "acme", "sender", usecase="support"),
        "other": await api_key(d, "globex", "owner"),
    }


async def refused(d, keys: dict[str, str], calls: list[tuple[str, str, Any]], *, roles=("agent", "sender")) -> None:
    """Each call is 403 for the roles that lack the permission, naming it."""
    for role in roles:
        async with api_client(d, keys[role]) as api:
            for method, path, body in calls:
                status, problem, _ = await api.request(method, path, json_body=body)
                assert status == 403, (role, method, path, status, problem)
                assert problem["type"] == PROBLEM + "forbidden" and problem["permission"], (role, method, path)


async def not_found(d, key: str, calls: list[tuple[str, str, Any]]) -> None:
    """Each call on another tenant's object is 404 (no existence oracle)."""
    async with api_client(d, key) as api:
        for method, path, body in calls:
            status, problem, _ = await api.request(method, path, json_body=body)
            assert status == 404, (method, path, status, problem)
            assert problem["type"] == PROBLEM + "not-found"


async def walk(api: ApiClient, path: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every row of a list, page by page."""
    rows, cursor = [], None
    while True:
        query = {"limit": str(limit), **params, **({"cursor": cursor} if cursor else {})}
        status, body, _ = await api.get(path, params=query)
        assert status == 200, body
        assert len(body["data"]) <= limit
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


# ---------------------------------------------------------------------------------------- connectors


async def test_connectors_add_show_change_test_and_delete_without_ever_showing_a_secret(tmp_path, dns_server):
    async with mail_sink() as sink, daemon(tmp_path, dns_server) as d:
        keys = await tenants(d, dns_server)
        reads: list[bytes] = []
        async with api_client(d, keys["admin"]) as api:
            status, made, headers = await api.post("/v1/connectors", {
                "name": "relay", "kind": "smtp", "host": "127.0.0.1", "port": sink.port, "tls": "none",
                "username": "acme", "secret": SMTP_SECRET, "sender": "bounce@acme.test"})
            assert status == 201, made
            assert made["secret_set"] is True and made["incoming_secret_set"] is False and made["direction"] == "out"
            assert made["settings"]["host"] == "127.0.0.1" and made["settings"]["port"] == sink.port
            assert made["incoming"] is None and "secret" not in made and "has_secret" not in made
            status, made, _ = await api.post("/v1/connectors", {"name": "grid", "kind": "sendgrid", "secret": SENDGRID_SECRET})
            assert status == 201 and made["secret_set"] is True and made["settings"]["host"] is None

            # The problems: a clash, a value the schema refuses (naming the field), one the service refuses.
            status, problem, _ = await api.post("/v1/connectors", {"name": "relay", "kind": "smtp", "host": "127.0.0.1"})
            assert status == 409 and problem["type"] == PROBLEM + "conflict"
            status, problem, _ = await api.post("/v1/connectors", {"name": "Bad Name", "kind": "smtp", "host": "h.example"})
            assert status == 422 and problem["field"] == "name"
            status, problem, _ = await api.post("/v1/connectors", {"name": "x", "kind": "smtp", "host": "h.example", "password": "p"})
            assert status == 422 and problem["field"] == "password"
            status, problem, _ = await api.post("/v1/connectors", {"name": "nogrid", "kind": "sendgrid"})
            assert status == 422 and "API token" in problem["detail"]

            # Change: If-Match against the read's ETag, null removes a setting, a new secret replaces the old.
            status, shown, headers = await api.get("/v1/connectors/relay")
            reads.append(json.dumps(shown).encode())
            tag = headers["ETag"]
            status, problem, _ = await api.patch("/v1/connectors/relay", {"sender": None}, headers={"If-Match": '"stale"'})
            assert status == 412
            status, changed, _ = await api.patch("/v1/connectors/relay", {"sender": None, "secret": SMTP_SECRET + "-new"},
                                                 headers={"If-Match": tag})
            assert status == 200 and changed["settings"]["sender"] is None and changed["secret_set"] is True
            status, problem, _ = await api.patch("/v1/connectors/relay", {"port": 0})
            assert status == 422 and problem["field"] == "port"
            status, problem, _ = await api.patch("/v1/connectors/relay", {"base_url": "https://api.sendgrid.com"})
            assert status == 422 and "sendgrid" in problem["detail"]

            # The real check, step by step, against the sink (AUTH is not offered without TLS: the steps say so).
            status, result, _ = await api.post("/v1/connectors/relay/test")
            assert status == 200 and result["name"] == "relay" and result["steps"]
            assert result["steps"][0]["step"] == "connect" and result["steps"][0]["ok"]
            assert all(set(step) == {"step", "ok", "detail"} for step in result["steps"])

            # The polled mailbox: settings in, the password write-only; fields left out keep their value.
            status, problem, _ = await api.put("/v1/connectors/relay/incoming", {
                "protocol": "imap", "host": "127.0.0.1", "port": 1, "username": "inbox", "usecase": "support"})
            assert status == 422 and "password" in problem["detail"]
            status, problem, _ = await api.put("/v1/connectors/relay/incoming", {
                "protocol": "imap", "host": "127.0.0.1", "port": 1, "username": "inbox", "secret": MAILBOX_SECRET,
                "usecase": "nope"})
            assert status == 422 and "nope" in problem["detail"]
            status, both, _ = await api.put("/v1/connectors/relay/incoming", {
                "protocol": "imap", "host": "127.0.0.1", "port": 1, "username": "inbox", "secret": MAILBOX_SECRET,
                "usecase": "support", "enabled": False})
            assert status == 200, both
            assert both["direction"] == "both" and both["incoming_secret_set"] is True
            assert both["incoming"]["folder"] == "INBOX" and both["incoming"]["usecase"] == "support"
            status, both, _ = await api.put("/v1/connectors/relay/incoming", {"address": "help@acme.test", "usecase": None})
            assert status == 200 and both["incoming"]["address"] == "help@acme.test" and both["incoming"]["usecase"] is None
            assert both["incoming"]["username"] == "inbox"
            status, result, _ = await api.post("/v1/connectors/relay/test")
            assert status == 200 and result["ok"] is False
            assert any(s["step"].startswith("imap:") and not s["ok"] for s in result["steps"])

            for path in ("/v1/connectors", "/v1/connectors/relay", "/v1/connectors/grid", "/v1/connectors?limit=1"):
                status, body, _ = await api.get(path)
                assert status == 200
                reads.append(json.dumps(body).encode())
            listed = await walk(api, "/v1/connectors", 1)
            assert [c["name"] for c in listed] == ["grid", "relay"]
            assert set(listed[0]) == set(made)   # rows shaped like the item: no has_secret, tenant_id, id

            status, gone, _ = await api.delete("/v1/connectors/relay/incoming")
            assert status == 200 and gone["incoming"] is None and gone["incoming_secret_set"] is False
            status, problem, _ = await api.delete("/v1/connectors/relay/incoming")   # an smtp connector is outgoing still
            assert status == 200
        for secret in (SMTP_SECRET, MAILBOX_SECRET, SENDGRID_SECRET):
            assert all(secret.encode() not in body for body in reads), secret

        item = [("GET", "/v1/connectors/relay", None), ("PATCH", "/v1/connectors/relay", {"enabled": False}),
                ("PUT", "/v1/connectors/relay/incoming", {"enabled": False}), ("DELETE", "/v1/connectors/relay/incoming", None),
                ("POST", "/v1/connectors/relay/test", None), ("DELETE", "/v1/connectors/relay", None)]
        await not_found(d, keys["other"], item)
        await not_found(d, keys["owner"], [(m, p.replace("relay", "No%20Such"), b) for m, p, b in item])   # a name none can have
        async with api_client(d, keys["other"]) as api:
            assert (await api.get("/v1/connectors"))[1]["data"] == []
        await refused(d, keys, item + [("GET", "/v1/connectors", None), ("POST", "/v1/connectors", {"name": "x", "kind": "smtp"})])

        async with api_client(d, keys["owner"]) as api:
            await d.call("usecase.update", tenant="acme", name="support", route="connector:grid")
            status, problem, _ = await api.delete("/v1/connectors/grid")
            assert status == 409 and "support" in problem["detail"]
            status, gone, _ = await api.delete("/v1/connectors/relay")
            assert status == 200 and gone["name"] == "relay"
            assert (await api.get("/v1/connectors/relay"))[0] == 404
        changes = await d.call("events.list", tenant="acme", type="api_change", limit=1000)
        assert "DELETE /v1/connectors/relay" in {e["subject"] for e in changes}


# -------------------------------------------------------------------------------------- suppressions


async def test_suppressions_add_list_filter_show_and_remove(tmp_path, dns_server):
    async with daemon(tmp_path, dns_server) as d:
        keys = await tenants(d, dns_server)
        async with api_client(d, keys["admin"]) as api:
            status, added, _ = await api.post("/v1/suppressions", {"address": "Bob@Example.ORG"})
            assert status == 200 and added == {"address": "bob@example.org", "scope": "tenant", "reason": "manual", "added": True}
            status, again, _ = await api.post("/v1/suppressions", {"address": "bob@example.org", "reason": "complaint"})
            assert status == 200 and again["added"] is False
            status, _, _ = await api.post("/v1/suppressions", {"address": "bob@example.org", "scope": "usecase:support",
                                                               "reason": "unsubscribe", "expires_at": "2999-01-01"})
            assert status == 200
            for i in range(5):
                await api.post("/v1/suppressions", {"address": f"u{i}@example.org", "reason": "hard_bounce", "expires_at": 4102444800})

            status, problem, _ = await api.post("/v1/suppressions", {"address": "x@example.org", "scope": "usecase:nope"})
            assert status == 422 and problem["field"] == "scope"
            status, problem, _ = await api.post("/v1/suppressions", {"address": "x@example.org", "reason": "whim"})
            assert status == 422 and problem["field"] == "reason"
            status, problem, _ = await api.post("/v1/suppressions", {"address": "x@example.org", "expires_at": 1e300})
            assert status == 422 and problem["field"] == "expires_at"
            status, problem, _ = await api.post("/v1/suppressions", {"address": "x@example.org", "expires_at": "1e300"})
            assert status == 422 and "9999" in problem["detail"]
            status, problem, _ = await api.post("/v1/suppressions", {"address": "not an address"})
            assert status == 422

            everything = await walk(api, "/v1/suppressions", 2)
            assert len(everything) == 7 and [e["address"] for e in everything][:2] == ["bob@example.org"] * 2
            assert {e["address"] for e in await walk(api, "/v1/suppressions", 2, reason="hard_bounce")} == {f"u{i}@example.org" for i in range(5)}
            (unsub,) = await walk(api, "/v1/suppressions", 10, scope="usecase:support")
            assert unsub["reason"] == "unsubscribe" and unsub["scope"] == "usecase:support" and unsub["expires_at"] > 4e9
            status, problem, _ = await api.get("/v1/suppressions", params={"scope": "domain:nope.test"})
            assert status == 422 and problem["field"] == "scope"
            for cursor in ("bm90IGEgY3Vyc29y", encode_cursor("name"), encode_cursor(1 << 64)):   # not one, a name list's, past SQLite
                status, problem, _ = await api.get("/v1/suppressions", params={"cursor": cursor})
                assert status == 400 and problem["field"] == "query.cursor", cursor

            status, shown, _ = await api.get("/v1/suppressions/BOB@example.org")
            assert status == 200 and shown["address"] == "bob@example.org"
            assert sorted(shown["live"]) == ["tenant", "usecase:support"] and len(shown["entries"]) == 2
            status, removed, _ = await api.delete("/v1/suppressions/bob@example.org", params={"scope": "usecase:support"})
            assert status == 200 and removed == {"address": "bob@example.org", "removed": 1}
            status, shown, headers = await api.get("/v1/suppressions/bob@example.org")
            assert shown["live"] == ["tenant"]
            assert (await api.delete("/v1/suppressions/bob@example.org", headers={"If-Match": '"old"'}))[0] == 412
            assert (await api.delete("/v1/suppressions/bob@example.org", headers={"If-Match": headers["ETag"]}))[0] == 200
            assert (await api.get("/v1/suppressions/bob@example.org"))[0] == 404
            assert (await api.delete("/v1/suppressions/bob@example.org"))[0] == 404
            assert (await api.get("/v1/suppressions/no-at-sign"))[0] == 404

        item = [("GET", "/v1/suppressions/u1@example.org", None), ("DELETE", "/v1/suppressions/u1@example.org", None)]
        await not_found(d, keys["other"], item)
        async with api_client(d, keys["other"]) as api:
            assert (await api.get("/v1/suppressions"))[1]["data"] == []
            status, body, _ = await api.get("/v1/suppressions/export")
            assert status == 200 and body.decode().splitlines() == ["address,scope,reason,source,expires_at"]
        await refused(d, keys, item + [("GET", "/v1/suppressions", None), ("POST", "/v1/suppressions", {"address": "a@b.c"}),
                                       ("GET", "/v1/suppressions/export", None), ("POST", "/v1/suppressions/import", None)])
        # The list the RCPT check reads is the one the API wrote.
        assert (await d.call("suppression.show", tenant="acme", address="u1@example.org"))["live"] == ["tenant"]


async def test_a_csv_import_reports_bad_rows_and_the_export_imports_back_unchanged(tmp_path, dns_server):
    rows = [["address", "scope", "reason", "source", "expires_at"]]
    rows += [[f"user{i}@example.org", "tenant", "manual", "crm", ""] for i in range(6000)]   # past IMPORT_CHUNK and EXPORT_PAGE
    rows += [["carol@example.org", "usecase:support", "unsubscribe", "", "2030-01-01T00:00:00Z"],
             ["not-an-address", "", "", "", ""],                   # line 6003
             ["dave@example.org", "usecase:nope", "", "", ""],     # line 6004
             ["erin@example.org", "", "whim", "", ""],             # line 6005
             ["frank@example.org", "", "", "", "someday"]]         # line 6006
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    body = out.getvalue().encode()
    async with daemon(tmp_path, dns_server) as d:
        keys = await tenants(d, dns_server)
        await sending_setup(d, dns_server, tenant="globex", domain="globex.test", usecase="support", sender="help@globex.test")
        async with api_client(d, keys["admin"]) as api:
            status, result, _ = await api.post("/v1/suppressions/import", data=io.BytesIO(body), headers={"Content-Type": "text/csv"})
            assert status == 200, result
            assert result["added"] == 6001 and result["updated"] == 0 and result["refused_count"] == 4
            assert [r["line"] for r in result["refused"]] == [6003, 6004, 6005, 6006]
            assert "nope" in result["refused"][1]["reason"] and "whim" in result["refused"][2]["reason"]
            status, again, _ = await api.post("/v1/suppressions/import", data=io.BytesIO(body), headers={"Content-Type": "text/csv"},
                                              params={"scope": "tenant"})
            assert again["added"] == 0 and again["updated"] == 6001

            # What is not a usable CSV: a problem, nothing written.
            for bad, field in ((b"email\r\nx@example.org\r\n", "body"), (b"address\r\n\xff\xfe\r\n", "body"), (b"", "body")):
                status, problem, _ = await api.post("/v1/suppressions/import", data=bad, headers={"Content-Type": "text/csv"})
                assert status == 422 and problem["field"] == field, (bad, problem)
            status, problem, _ = await api.post("/v1/suppressions/import", data=io.BytesIO(body), headers={"Content-Type": "application/json"})
            assert status == 415
            status, problem, _ = await api.post("/v1/suppressions/import", data=io.BytesIO(b"address\n" + b"a@b.example\n" * 100_001),
                                                headers={"Content-Type": "text/csv"})
            assert status == 413 and "100000 rows" in problem["detail"]

            async with api.session.get(api.base + "/v1/suppressions/export", headers=api.headers()) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
                assert resp.headers.get("Transfer-Encoding") == "chunked"   # streamed, not built whole
                exported = await resp.read()
            lines = exported.decode().splitlines()
            assert lines[0] == "address,scope,reason,source,expires_at" and len(lines) == 1 + 6001
            assert lines[1] == "user0@example.org,tenant,manual,crm,"
            assert "carol@example.org,usecase:support,unsubscribe,api,2030-01-01T00:00:00Z" in lines
            status, only, _ = await api.get("/v1/suppressions/export", params={"reason": "unsubscribe"})
            assert only.decode().splitlines()[1:] == ["carol@example.org,usecase:support,unsubscribe,api,2030-01-01T00:00:00Z"]

        # The export into another tenant (same scope names): its export is the same file.
        async with api_client(d, keys["other"]) as api:
            status, result, _ = await api.post("/v1/suppressions/import", data=io.BytesIO(exported), headers={"Content-Type": "text/csv"})
            assert status == 200 and result["added"] == 6001 and result["refused_count"] == 0
            status, copied, _ = await api.get("/v1/suppressions/export")
            assert copied == exported


async def test_an_export_that_fails_midway_does_not_end_like_a_complete_one(tmp_path, dns_server):
    async with daemon(tmp_path, dns_server) as d:
        keys = await tenants(d, dns_server)
        tenant_id = (await d.call("tenant.show", name="acme"))["id"]
        await d.store.suppressions.fill(tenant_id, 6000)
        # A row no export can write as a date (stored before expires_at was bounded), on the second page.
        await d.store.db.write(lambda c: c.execute("UPDATE suppressions SET expires_at = 1e300 WHERE address = 'bench-5500@fill.example'"))
        async with api_client(d, keys["admin"]) as api:
            async with api.session.get(api.base + "/v1/suppressions/export", headers=api.headers()) as resp:
                assert resp.status == 200
                first = await resp.content.readline()
                try:
                    await resp.read()
                except aiohttp.ClientPayloadError:
                    cut = True
                else:
                    cut = False
            assert first == b"address,scope,reason,source,expires_at\n" and cut
            assert (await api.get("/v1/tenant"))[0] == 200   # the server goes on serving


# ------------------------------------------------------------------------------- webhooks and forwards


async def test_webhooks_add_show_change_test_log_and_delete_with_the_secret_shown_once(tmp_path, dns_server):
    with WebhookReceiver() as rx:
        async with daemon(tmp_path, dns_server, {"webhooks": {"poll_interval": 0.02}}) as d:
            keys = await tenants(d, dns_server)
            reads: list[bytes] = []
            async with api_client(d, keys["admin"]) as api:
                status, made, _ = await api.post("/v1/webhooks", {"url": rx.url("/a"), "name": "crm", "events": ["suppression_added"]})
                assert status == 201, made
                secret = made["secret"]
                assert secret.startswith("whsec_") and made["events"] == ["suppression_added"] and made["backlog"] == 0
                status, problem, _ = await api.post("/v1/webhooks", {"url": rx.url("/b"), "name": "crm"})
                assert status == 409
                status, problem, _ = await api.post("/v1/webhooks", {"url": "http://169.254.169.254/latest"})
                assert status == 422 and "link-local" in problem["detail"]
                status, problem, _ = await api.post("/v1/webhooks", {"url": "ftp://example.org/x"})
                assert status == 422
                status, problem, _ = await api.post("/v1/webhooks", {"url": rx.url("/b"), "events": ["Not A Kind"]})
                assert status == 422 and problem["field"] == "events[0]"
                status, problem, _ = await api.post("/v1/webhooks", {"url": rx.url("/b"), "usecase": "nope"})
                assert status == 422 and problem["field"] == "usecase"
                status, narrowed, _ = await api.post("/v1/webhooks", {"url": rx.url("/b"), "name": "help", "address": "help@acme.test"})
                assert status == 201 and narrowed["address"] == "help@acme.test" and narrowed["events"] == ["*"]

                # An event reaches the endpoint; its log says so (the write follows the receiver's 2xx).
                await api.post("/v1/suppressions", {"address": "zed@example.org"})
                await asyncio.to_thread(rx.wait, lambda posts: any(p["path"] == "/a" for p in posts), 15)
                for _ in range(500):
                    status, log, _ = await api.get("/v1/webhooks/crm/log")
                    if log["data"]:
                        break
                    await asyncio.sleep(0.02)   # the delivery's commit has no event to await from outside
                assert status == 200 and log["data"][0]["ok"] and log["data"][0]["status"] == 200 and log["data"][0]["events"] == 1

                status, result, _ = await api.post("/v1/webhooks/crm/test")
                assert status == 200 and result["ok"] and result["status"] == 200 and result["url"] == rx.url("/a")
                assert json.loads(rx.of("/a")[-1]["body"])["events"][0]["type"] == "webhook_test"

                status, shown, headers = await api.get("/v1/webhooks/crm")
                assert status == 200 and shown["backlog"] == 0
                assert (await api.patch("/v1/webhooks/crm", {"enabled": False}, headers={"If-Match": '"stale"'}))[0] == 412
                status, changed, _ = await api.patch("/v1/webhooks/crm", {"events": ["*"], "url": rx.url("/c"), "usecase": "support",
                                                                          "enabled": False}, headers={"If-Match": headers["ETag"]})
                assert status == 200, changed
                assert changed["events"] == ["*"] and changed["url"] == rx.url("/c") and changed["usecase"] == "support"
                assert changed["enabled"] is False and changed["disabled_reason"] == "operator"
                status, changed, _ = await api.patch("/v1/webhooks/crm", {"usecase": None, "enabled": True})
                assert status == 200 and changed["usecase"] is None and changed["enabled"] is True
                status, problem, _ = await api.patch("/v1/webhooks/crm", {"address": "nobody@acme.test"})
                assert status == 422 and problem["field"] == "address"
                status, problem, _ = await api.patch("/v1/webhooks/crm", {"url": "http://[fe80::1]/x"})
                assert status == 422
                assert (await api.patch("/v1/webhooks/nope", {"enabled": True}))[0] == 404

                for path in ("/v1/webhooks", "/v1/webhooks/crm", "/v1/webhooks/help", "/v1/webhooks/crm/log"):
                    status, body, _ = await api.get(path)
                    assert status == 200
                    reads.append(json.dumps(body).encode())
                assert [w["name"] for w in await walk(api, "/v1/webhooks", 1)] == ["crm", "help"]
                walked = [e["at"] for e in await walk(api, "/v1/webhooks/crm/log", 1)]
                assert walked == sorted(set(walked), reverse=True) and len(walked) >= len(log["data"])
                # A list's rows are shaped by the model too (the store's ids and tenant ids are not sent).
                assert set(log["data"][0]) == {"at", "ok", "status", "latency", "events", "first_event", "last_event", "error"}
            assert all(secret.encode() not in body for body in reads)
            events = await d.call("events.list", tenant="acme", limit=1000)
            assert secret not in json.dumps(events)
            assert "webhook_updated" in {e["kind"] for e in events}

            # The CLI changes an endpoint through the same service function.
            result = await asyncio.to_thread(CliRunner().invoke, main, ["--socket", str(d.daemon.paths.socket), "webhook", "update",
                                                                        "acme", "help", "--events", "received", "--unset", "address"])
            assert result.exit_code == 0, result.output
            async with api_client(d, keys["admin"]) as api:
                status, help_hook, _ = await api.get("/v1/webhooks/help")
            assert help_hook["events"] == ["received"] and help_hook["address"] is None

            item = [("GET", "/v1/webhooks/crm", None), ("PATCH", "/v1/webhooks/crm", {"enabled": False}),
                    ("POST", "/v1/webhooks/crm/test", None), ("GET", "/v1/webhooks/crm/log", None), ("DELETE", "/v1/webhooks/crm", None)]
            await not_found(d, keys["other"], item)
            await refused(d, keys, item + [("GET", "/v1/webhooks", None), ("POST", "/v1/webhooks", {"url": rx.url("/x")})])
            async with api_client(d, keys["owner"]) as api:
                status, gone, _ = await api.delete("/v1/webhooks/crm")
                assert status == 200 and gone["deleted"] == "crm"
                assert (await api.get("/v1/webhooks/crm"))[0] == 404


async def test_forwarding_rules_list_add_show_and_delete(tmp_path, dns_server):
    async with daemon(tmp_path, dns_server) as d:
        keys = await tenants(d, dns_server)
        async with api_client(d, keys["admin"]) as api:
            status, rule, _ = await api.post("/v1/forwards", {"to": "Archive@Example.org", "usecase": "support"})
            assert status == 201 and rule["to"] == "archive@example.org" and rule["usecase"] == "support" and rule["address"] is None
            status, second, _ = await api.post("/v1/forwards", {"to": "desk@example.org", "address": "help@acme.test"})
            assert status == 201 and second["address"] == "help@acme.test"
            assert (await api.post("/v1/forwards", {"to": "archive@example.org", "usecase": "support"}))[0] == 409
            for body, field in (({"to": "a@example.org"}, "usecase"),
                                ({"to": "a@example.org", "usecase": "support", "address": "help@acme.test"}, "usecase"),
                                ({"to": "a@example.org", "usecase": "nope"}, "usecase"),
                                ({"to": "a@example.org", "address": "nobody@acme.test"}, "address"),
                                ({"to": "a@example.org", "usecase": "support", "cc": "x"}, "cc")):
                status, problem, _ = await api.post("/v1/forwards", body)
                assert status == 422 and problem["field"] == field, (body, problem)
            assert [r["id"] for r in await walk(api, "/v1/forwards", 1)] == [rule["id"], second["id"]]
            status, shown, headers = await api.get(f"/v1/forwards/{rule['id']}")
            assert status == 200 and shown == rule
            for missing in ("999999", "abc", "-1", "1" * 30):
                assert (await api.get(f"/v1/forwards/{missing}"))[0] == 404, missing
            assert (await api.delete(f"/v1/forwards/{rule['id']}", headers={"If-Match": '"stale"'}))[0] == 412

        item = [("GET", f"/v1/forwards/{rule['id']}", None), ("DELETE", f"/v1/forwards/{rule['id']}", None)]
        await not_found(d, keys["other"], item)
        await refused(d, keys, item + [("GET", "/v1/forwards", None), ("POST", "/v1/forwards", {"to": "a@b.c", "usecase": "support"})])
        async with api_client(d, keys["owner"]) as api:
            status, gone, _ = await api.delete(f"/v1/forwards/{rule['id']}", headers={"If-Match": headers["ETag"]})
            assert status == 200 and gone["id"] == rule["id"]
            assert (await api.get(f"/v1/forwards/{rule['id']}"))[0] == 404
        assert [r["id"] for r in await d.call("forward.list", tenant="acme")] == [second["id"]]


async def test_the_openapi_document_describes_every_manage_route_and_no_secret_field(tmp_path, dns_server):
    async with daemon(tmp_path, dns_server) as d:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{d.address('api')}/v1/openapi.json") as resp:
                doc = await resp.json()
    paths = doc["paths"]
    for path in ("/v1/connectors", "/v1/connectors/{connector}", "/v1/connectors/{connector}/incoming",
                 "/v1/connectors/{connector}/test", "/v1/suppressions", "/v1/suppressions/{suppression}",
                 "/v1/suppressions/import", "/v1/suppressions/export", "/v1/webhooks", "/v1/webhooks/{webhook}",
                 "/v1/webhooks/{webhook}/test", "/v1/webhooks/{webhook}/log", "/v1/forwards", "/v1/forwards/{forward_id}"):
        assert path in paths, path
    schemas = doc["components"]["schemas"]
    # Responses name no secret: only the one-time WebhookCreated carries one.
    for name in ("Connector", "Webhook", "Suppression", "Forward", "ConnectorTest"):
        assert not {"secret", "password", "incoming_secret"} & set(schemas[name]["properties"]), name
    assert "secret" in schemas["WebhookCreated"]["properties"]
    assert "text/csv" in paths["/v1/suppressions/import"]["post"]["requestBody"]["content"]
    assert "text/csv" in paths["/v1/suppressions/export"]["get"]["responses"]["200"]["content"]


def test_a_list_page_reads_one_index_range_whatever_the_filter():
    # 1,000,000 entries page as cheaply as ten: every filter of the list is the prefix of an index,
    # and one address is read from the unique index, not by walking the tenant's list in id order.
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    for _, _, sql in migrations():
        conn.executescript(sql)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    for kw in ({}, {"reason": "manual"}, {"scope": ("usecase", 3)}, {"address": "a@b.example"}):
        list_suppressions(conn, 1, kw.get("address"), 0, 10, kw.get("scope"), kw.get("reason"))
    conn.set_trace_callback(None)
    plans = [" ".join(str(step[3]) for step in conn.execute("EXPLAIN QUERY PLAN " + sql)) for sql in statements]
    assert [p.split(" USING ")[1].split(" (")[0] for p in plans] == [
        "INDEX suppressions_tenant_page", "INDEX suppressions_reason_page", "INDEX suppressions_scope_page",
        "INDEX sqlite_autoindex_suppressions_1"], plans
    assert "TEMP B-TREE" not in " ".join(plans[:3])


async def test_a_loopback_webhook_url_is_refused_unless_allowed_as_by_the_cli(tmp_path):
    async with running_daemon(tmp_path, {"webhooks": {"allow_loopback": False}}) as d:
        await d.call("tenant.add", name="acme")
        admin = await api_key(d, "acme", "admin")
        async with api_client(d, admin) as api:
            for url in ("http://127.0.0.1:9/hook", "http://[::1]/hook"):
                status, problem, _ = await api.post("/v1/webhooks", {"url": url})
                assert status == 422 and "allow_loopback" in problem["detail"], problem
            status, made, _ = await api.post("/v1/webhooks", {"url": "https://hooks.example.org/in", "name": "ok"})
            assert status == 201
            status, problem, _ = await api.patch("/v1/webhooks/ok", {"url": "http://127.0.0.1/hook"})
            assert status == 422 and "allow_loopback" in problem["detail"]
            assert (await api.get("/v1/webhooks/ok"))[1]["url"] == "https://hooks.example.org/in"
