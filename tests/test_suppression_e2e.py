"""Suppression end to end, through the daemon's real listeners and admin socket.

A remote that 5xx's a recipient -> 'bounced' with class hard (attempt row, event) -> the address is
suppressed tenant-wide -> the next submission to it is refused at RCPT with 550 5.7.1 while the other
recipients go on. Accept-and-drop, the second check just before delivery, soft-failure counting,
tenant isolation, and the CLI against a daemon started as users start it.
"""

from __future__ import annotations

import asyncio
import json

import aiosmtplib
import pytest

from gateway.submission import client_tls_context
from tests.support.daemon import AdminError
from tests.support.delivery import delivering_daemon, publish_mx, recipients, wait_events
from tests.support.process import GatewayProcess
from tests.support.sink import mail_sink
from tests.support.tenancy import sending_setup
from tests.test_outbound_e2e import raw_message, submit


async def session(d, setup):
    host, port = d.hostport("submission")
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.auth_plain(setup["username"], setup["password"])
    return smtp


async def attempts(d, qid: str) -> list[dict]:
    return await d.store.db.read(lambda c: [dict(a) for a in c.execute(
        "SELECT a.outcome, a.code, a.enhanced, a.class, a.class_reason FROM attempts a JOIN recipients r ON r.id = a.recipient_id"
        " JOIN messages m ON m.id = r.message_id WHERE m.queue_id = ?", (qid,))])


def bounced_dsn_of(dsn_events: list[dict]) -> str:
    [dsn] = dsn_events
    return dsn["data"]["dsn_queue_id"]


async def test_hard_bounce_suppresses_and_the_next_submission_is_refused_at_rcpt(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("eve@dest.test", "550 5.1.1 <eve@dest.test>: Recipient address rejected: User unknown in virtual mailbox table")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            qid = await submit(d, setup, ["bob@dest.test", "Eve@Dest.test"])
            [bounced] = await wait_events(d, qid, "bounced")
            [bob] = sink.for_rcpt("bob@dest.test")
            tenant_id = (await d.store.tenants.get(setup["tenant"]))["id"]
            head = bob.data.split(b"\r\n\r\n", 1)[0].decode()
            assert f"Feedback-ID: u{setup['usecase_id']}:t{tenant_id}:gateway\r\n" in head
            signed = "".join(head.split("DKIM-Signature:", 1)[1].split("b=", 1)[0].split()).lower()
            assert "feedback-id" in signed.split("h=", 1)[1].split(";", 1)[0]   # covered by the signature
            assert bounced["data"]["class"] == "hard" and bounced["data"]["class_reason"] == "status 5.1.1"
            assert {(a["outcome"], a["class"]) for a in await attempts(d, qid)} == {("delivered", ""), ("bounced", "hard")}
            # The DSN to the app (acme.test has no MX here) bounces too, but our own DSNs never feed the list.
            [dsn_bounce] = await wait_events(d, bounced_dsn_of(await d.store.events.list(kind="dsn_sent")), "bounced")
            assert dsn_bounce["data"]["class"] == "hard"
            page = await d.call("suppression.list", tenant=setup["tenant"])
            [entry] = page["entries"]
            assert (entry["address"], entry["scope"], entry["reason"], entry["source"]) == ("eve@dest.test", "tenant", "hard_bounce", qid)

            smtp = await session(d, setup)
            await smtp.mail(setup["sender"])
            refused = await smtp.execute_command(b"RCPT", b"TO:<eve@dest.test>")
            assert refused.code == 550 and refused.message.startswith("5.7.1 Recipient suppressed:"), refused
            assert "does not exist" in refused.message
            assert (await smtp.rcpt("carol@dest.test")).code == 250
            _, reply = await smtp.data(raw_message(setup["sender"], ["eve@dest.test", "carol@dest.test"]))
            await smtp.quit()
            qid2 = reply.rsplit(" ", 1)[1]
            assert set(await recipients(d, qid2)) == {"carol@dest.test"}
            [event] = await wait_events(d, "eve@dest.test", "suppressed")
            assert event["data"]["action"] == "refused" and event["data"]["checked"] == "rcpt"
            await wait_events(d, qid2, "delivered")
            assert sink.for_rcpt("eve@dest.test") == []   # the remote refused the first, the second never named eve

            # Removed: mail to it flows again.
            await d.call("suppression.remove", tenant=setup["tenant"], address="EVE@dest.test")
            sink.script("eve@dest.test", "250 2.1.5 OK")
            qid3 = await submit(d, setup, ["eve@dest.test"])
            await wait_events(d, qid3, "delivered")


async def test_accept_and_drop_and_the_check_before_delivery(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, kind="marketing") as (d, setup):
            tenant = setup["tenant"]
            await d.call("suppression.add", tenant=tenant, address="gone@dest.test", scope=f"usecase:{setup['usecase']}")
            await d.call("suppression.add", tenant=tenant, address="complained@dest.test", scope="marketing", reason="complaint")
            await d.call("usecase.update", tenant=tenant, name=setup["usecase"], suppressed="accept-drop")
            await d.call("pause", tenant=tenant)
            qid = await submit(d, setup, ["gone@dest.test", "ok@dest.test", "late@dest.test"])
            assert set(await recipients(d, qid)) == {"ok@dest.test", "late@dest.test"}
            [dropped] = await wait_events(d, "gone@dest.test", "suppressed")
            assert dropped["data"]["action"] == "dropped"
            smtp = await session(d, setup)   # every recipient dropped: 250, nothing queued
            _, reply = await smtp.sendmail(setup["sender"], ["complained@dest.test"], raw_message(setup["sender"], ["complained@dest.test"]))
            await smtp.quit()
            assert "nothing to send" in reply
            [complained] = await wait_events(d, "complained@dest.test", "suppressed")
            assert complained["data"]["reason"] == "complaint" and complained["data"]["scope"] == "marketing"
            # Added while the message waits: the scheduler's second look records it suppressed, sends nothing.
            await d.call("suppression.add", tenant=tenant, address="late@dest.test", scope="tenant")
            await d.call("resume", tenant=tenant)
            [late] = await wait_events(d, qid, "suppressed")
            assert late["data"]["rcpt"] == "late@dest.test" and late["data"]["checked"] == "delivery"
            await wait_events(d, qid, "delivered")
            rows = await recipients(d, qid)
            assert rows["late@dest.test"]["state"] == "suppressed" and rows["ok@dest.test"]["state"] == "delivered"
            assert sink.for_rcpt("late@dest.test") == [] and sink.for_rcpt("complained@dest.test") == []
            assert await d.store.events.list(subject=qid, kind="dsn_sent") == []
            [listed] = await d.store.queue.list(state="suppressed")
            assert (listed["queue_id"], listed["suppressed"], listed["delivered"], listed["state"]) == (qid, 1, 1, "suppressed")


async def test_soft_failures_suppress_for_a_while(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("full@dest.test", "552 5.2.2 <full@dest.test>: Recipient address rejected: Mailbox full")
        extra = {"delivery": {"soft_bounce_limit": 2, "soft_bounce_window": 3600.0, "soft_bounce_suppress_for": 600.0}}
        async with delivering_daemon(tmp_path, dns_server, sink.port, extra) as (d, setup):
            first = await submit(d, setup, ["full@dest.test"])
            [b] = await wait_events(d, first, "bounced")
            assert b["data"]["class"] == "soft"
            assert (await d.call("suppression.list", tenant=setup["tenant"]))["entries"] == []
            second = await submit(d, setup, ["full@dest.test"])
            await wait_events(d, second, "bounced")
            [entry] = (await d.call("suppression.list", tenant=setup["tenant"]))["entries"]
            assert entry["reason"] == "soft_bounce" and entry["source"] == second
            assert 590 < entry["expires_at"] - entry["created_at"] <= 600


async def test_tenant_isolation(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, acme):
            other = await sending_setup(d, dns_server, tenant="globex", domain="globex.test", sender="app@globex.test")
            await d.call("suppression.add", tenant="acme", address="shared@dest.test")
            assert (await d.call("suppression.list", tenant="globex"))["entries"] == []
            with pytest.raises(AdminError) as missing:
                await d.call("suppression.show", tenant="globex", address="shared@dest.test")
            assert missing.value.code == "not_found"
            with pytest.raises(AdminError):
                await d.call("suppression.remove", tenant="globex", address="shared@dest.test")
            with pytest.raises(AdminError):   # a scope of another tenant cannot be named
                await d.call("suppression.add", tenant="globex", address="x@dest.test", scope=f"usecase:{acme['usecase']}x")
            qid = await submit(d, other, ["shared@dest.test"])   # globex's mail is not touched by acme's list
            await wait_events(d, qid, "delivered")
            assert (await d.call("suppression.show", tenant="acme", address="shared@dest.test"))["live"] == ["tenant"]


def test_suppression_cli_through_the_daemon(tmp_path):
    with GatewayProcess(tmp_path) as gw:
        gw.cli("tenant", "add", "acme")
        gw.cli("tenant", "add", "globex")
        out = gw.cli("suppression", "add", "acme", "Bob@Example.ORG", "--reason", "manual").stdout
        assert "bob@example.org" in out
        csv_file = tmp_path / "in.csv"
        csv_file.write_text("address,scope,reason,expires_at\n"
                            "carol@example.org,,,\n"
                            "bob@example.org,marketing,complaint,\n"
                            "not-an-address,,,\n"
                            "dave@example.org,usecase:nope,,\n"
                            "erin@example.org,,soft_bounce,2099-01-01T00:00:00Z\n"
                            "bob@example.org,tenant,unsubscribe,\n")
        result = gw.cli_json("suppression", "import", "acme", str(csv_file))
        assert (result["added"], result["updated"]) == (3, 1)
        assert [(r["line"], r["address"]) for r in result["refused"]] == [(4, "not-an-address"), (5, "dave@example.org")]
        assert "not an email address" in result["refused"][0]["reason"] and "no usecase 'nope'" in result["refused"][1]["reason"]
        shown = gw.cli_json("suppression", "show", "acme", "bob@example.org")
        assert sorted((e["scope"], e["reason"]) for e in shown["entries"]) == [("marketing", "complaint"), ("tenant", "unsubscribe")]
        exported = gw.cli("suppression", "export", "acme").stdout.splitlines()
        assert exported[0] == "address,scope,reason,source,expires_at"
        assert sorted(exported[1:]) == sorted(["bob@example.org,tenant,unsubscribe,import,",
                                               "carol@example.org,tenant,manual,import,",
                                               "bob@example.org,marketing,complaint,import,",
                                               "erin@example.org,tenant,soft_bounce,import,2099-01-01T00:00:00Z"])
        assert gw.cli_json("suppression", "list", "globex")["entries"] == []
        assert "(none)" in gw.cli("suppression", "list", "globex").stdout
        big = tmp_path / "big.csv"   # more rows than one admin call carries: sent in chunks, line numbers kept
        big.write_text("address\n" + "".join(f"user{i}@bulk.example\n" for i in range(4500)) + "broken\n")
        result = gw.cli_json("suppression", "import", "acme", str(big))
        assert (result["added"], result["updated"], [r["line"] for r in result["refused"]]) == (4500, 0, [4502])
        gw.cli("suppression", "remove", "acme", "bob@example.org", "--scope", "marketing")
        missing = gw.cli("suppression", "show", "acme", "nobody@example.org", check=1)
        assert "not suppressed" in missing.stderr
        gw.cli("suppression", "add", "acme", "x@example.org", "--scope", "galaxy", check=1)
        gw.cli("tenant", "delete", "acme")   # the list goes with the tenant
        gw.cli("tenant", "add", "acme")
        assert gw.cli_json("suppression", "list", "acme")["entries"] == []
