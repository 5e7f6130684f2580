"""Connector routes (SMTP relay, SendGrid API) and `gateway connector ...` against a real daemon."""

from __future__ import annotations

import asyncio
import json
import sys

import dkim

from tests.support.daemon import AdminError
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, enqueue, recipients, wait_events
from tests.support.sendgrid import sendgrid_api
from tests.support.sink import mail_sink
from tests.support.tenancy import sending_setup

PASSWORD = "relay-s3cret-pw"
TOKEN = "SG.very-secret-token"


async def cli(d, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The real CLI, as a subprocess, against the in-process daemon's admin socket."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from gateway.cli import main; main()", "--socket", str(d.daemon.paths.socket), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_smtp_relay_route_with_starttls_auth_sender_and_reply_to(tmp_path, dns_server):
    async with mail_sink(starttls=True, users={"relay": PASSWORD}) as relay:
        async with delivering_daemon(tmp_path, dns_server, 9) as (d, setup):  # port 9: direct delivery would fail
            await d.call("connector.add", tenant="acme", name="relay", kind="smtp", host="127.0.0.1", port=relay.port,
                         tls="starttls", verify_tls=False, username="relay", secret=PASSWORD, sender="relay@acme.test",
                         reply_to="help@acme.test")
            await d.call("usecase.update", tenant="acme", name=setup["usecase"], route="connector:relay")
            qid = await enqueue(d, setup, ["a@far.example", "b@elsewhere.example"])
            [got] = await relay.wait_for(1)
            assert sorted(got.rcpt_tos) == ["a@far.example", "b@elsewhere.example"]  # one transaction: sender override
            assert got.mail_from == "relay@acme.test" and got.auth_user == "relay" and got.tls
            assert b"\r\nReply-To: help@acme.test\r\n" in b"\r\n" + got.data
            assert dkim.DKIM(got.data).verify(dnsfunc=dkim_dnsfunc(dns_server))
            await wait_events(d, qid, "delivered", 2)
            r = await recipients(d, qid)
            assert r["a@far.example"]["attempt_log"][0]["remote"] == "[127.0.0.1]:%d" % relay.port


async def test_sendgrid_route_maps_statuses(tmp_path, dns_server):
    async with sendgrid_api(token=TOKEN) as api:
        async with delivering_daemon(tmp_path, dns_server, 9) as (d, setup):
            await d.call("connector.add", tenant="acme", name="sg", kind="sendgrid", base_url=api.url, secret=TOKEN)
            await d.call("usecase.update", tenant="acme", name=setup["usecase"], route="connector:sg")
            api.next_status = [429]
            qid = await enqueue(d, setup, ["a@far.example", "b@far.example"])
            [sent] = await api.wait_for(1)
            assert [p["to"] for p in sent["personalizations"]] == [[{"email": "a@far.example"}], [{"email": "b@far.example"}]]
            assert sent["from"]["email"] == setup["sender"] and sent["subject"] == "hello"
            assert sent["custom_args"] == {"queue_id": qid}
            assert sent["content"][0]["type"] == "text/plain" and "Hello there." in sent["content"][0]["value"]
            assert api.requests[0]["auth"] == f"Bearer {TOKEN}" and api.requests[0]["status"] == 429
            deferred = await wait_events(d, qid, "deferred", 2)
            assert all("429" in e["data"]["reply"] for e in deferred)
            await wait_events(d, qid, "delivered", 2)
            # a request SendGrid refuses for good bounces
            api.next_status = [400]
            qid2 = await enqueue(d, setup, ["c@far.example"])
            [bounced] = await wait_events(d, qid2, "bounced")
            assert bounced["data"]["code"] == 554


async def test_disabled_connector_route_holds(tmp_path, dns_server):
    async with delivering_daemon(tmp_path, dns_server, 9) as (d, setup):
        await d.call("connector.add", tenant="acme", name="relay", kind="smtp", host="127.0.0.1", enabled=False)
        await d.call("usecase.update", tenant="acme", name=setup["usecase"], route="connector:relay")
        qid = await enqueue(d, setup, ["a@far.example"])
        [held] = await wait_events(d, qid, "held")
        assert "connector is disabled" in held["data"]["reason"]
        assert (await recipients(d, qid))["a@far.example"]["state"] == "held"


async def test_connector_cli_add_test_list_delete_never_prints_secrets(tmp_path, dns_server):
    async with mail_sink(starttls=True, users={"relay": PASSWORD}) as relay, sendgrid_api(token=TOKEN) as api:
        async with delivering_daemon(tmp_path, dns_server, 9) as (d, setup):
            code, out, err = await cli(d, "connector", "add", "acme", "relay", "--kind", "smtp", "--host", "127.0.0.1",
                                       "--port", str(relay.port), "--no-verify-tls", "--username", "relay", "--secret-stdin",
                                       stdin=PASSWORD + "\n")
            assert code == 0, err
            code, out, err = await cli(d, "connector", "test", "acme", "relay")
            assert code == 0, out + err
            lines = out.splitlines()
            assert [line.split()[1] for line in lines[:4]] == ["connect", "ehlo", "starttls", "auth"]
            assert all(line.startswith("ok") for line in lines[:5]) and "works" in lines[-1]
            assert relay.auth_attempts == [("relay", True)]
            # a wrong password: the failing step is named, the secret is not printed
            await d.call("connector.update", tenant="acme", name="relay", secret="wrong-password")
            code, out, err = await cli(d, "connector", "test", "acme", "relay")
            assert code == 1 and "FAIL  auth" in out and "wrong-password" not in out + err
            # SendGrid: an authenticated API call
            await d.call("connector.add", tenant="acme", name="sg", kind="sendgrid", base_url=api.url, secret=TOKEN)
            code, out, err = await cli(d, "connector", "test", "acme", "sg", "--json")
            result = json.loads(out)
            assert code == 0 and result["ok"] and [s["step"] for s in result["steps"]] == ["connect", "auth", "scope"]
            await d.call("connector.update", tenant="acme", name="sg", secret="SG.bad")
            code, out, _ = await cli(d, "connector", "test", "acme", "sg")
            assert code == 1 and "FAIL  auth" in out
            # listings carry has_secret, never the secret
            code, out, _ = await cli(d, "connector", "list", "--json")
            rows = json.loads(out)
            assert {r["name"] for r in rows} == {"relay", "sg"} and all(r["has_secret"] for r in rows)
            code, out2, _ = await cli(d, "connector", "show", "acme", "relay")
            for text in (out, out2):
                assert PASSWORD not in text and TOKEN not in text and "wrong-password" not in text and "SG.bad" not in text
            # delete asks for --yes, and is refused while a use case routes through it
            code, _, err = await cli(d, "connector", "delete", "acme", "relay")
            assert code == 2 and "--yes" in err
            await d.call("usecase.update", tenant="acme", name=setup["usecase"], route="connector:relay")
            code, _, err = await cli(d, "connector", "delete", "acme", "relay", "--yes")
            assert code == 1 and setup["usecase"] in err
            await d.call("usecase.update", tenant="acme", name=setup["usecase"], route="direct")
            code, out, err = await cli(d, "connector", "delete", "acme", "relay", "--yes")
            assert code == 0 and "deleted connector acme/relay" in out


async def test_connectors_are_tenant_scoped(tmp_path, dns_server):
    async with delivering_daemon(tmp_path, dns_server, 9) as (d, setup):
        await d.call("tenant.add", name="other")
        await d.call("connector.add", tenant="acme", name="relay", kind="smtp", host="127.0.0.1", secret="x", username="u")
        await d.call("connector.add", tenant="other", name="relay", kind="smtp", host="127.0.0.2")  # same name, other tenant
        assert [c["tenant"] for c in await d.call("connector.list", tenant="other")] == ["other"]
        for method in ("connector.show", "connector.test", "connector.delete"):
            try:
                await d.call(method, tenant="other", name="missing")
            except AdminError as exc:
                assert exc.code == "not_found"
            else:
                raise AssertionError(f"{method} reached a connector of another tenant")
        try:
            await d.call("connector.add", tenant="acme", name="bad", kind="smtp", host="a\r\nb")
        except AdminError as exc:
            assert exc.code == "invalid"
        else:
            raise AssertionError("CR/LF accepted in a connector host")


async def test_two_tenants_on_one_smarthost_each_deliver_under_their_own_login(tmp_path, dns_server):
    """SendGrid-style: every tenant's username is `apikey`, only the password differs. A pooled session
    authenticated with one tenant's password must never carry another tenant's mail."""
    passwords = {"acme": "apikey-acme-pw-1", "other": "apikey-other-pw-2"}
    async with mail_sink(starttls=True, users={"apikey": tuple(passwords.values())}) as relay:
        async with delivering_daemon(tmp_path, dns_server, 9, {"delivery": {"idle_timeout": 30.0}}) as (d, acme):
            other = await sending_setup(d, dns_server, tenant="other", domain="other.test", sender="app@other.test")
            sent = {}
            for setup in (acme, other):
                tenant = setup["tenant"]
                await d.call("connector.add", tenant=tenant, name="relay", kind="smtp", host="127.0.0.1", port=relay.port,
                             tls="starttls", verify_tls=False, username="apikey", secret=passwords[tenant])
                await d.call("usecase.update", tenant=tenant, name=setup["usecase"], route="connector:relay")
            for count, setup in enumerate((acme, other, acme), start=1):
                # One after the other: the previous session is idle in the pool when the next message goes.
                rcpt = f"to-{count}@far.example"
                sent[rcpt] = setup["tenant"]
                await enqueue(d, setup, [rcpt])
                await relay.wait_for(count)
            for got in relay.messages:
                [rcpt] = got.rcpt_tos
                assert got.auth_user == "apikey"
                assert got.auth_password == passwords[sent[rcpt]], f"{sent[rcpt]}'s mail left on another tenant's login"
            # acme's two messages shared one session; other's got its own.
            by_tenant = {t: {m.connection for m in relay.messages if sent[m.rcpt_tos[0]] == t} for t in passwords}
            assert len(by_tenant["acme"]) == 1 and by_tenant["acme"].isdisjoint(by_tenant["other"])
