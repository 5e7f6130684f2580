"""Issue 9's inbound hookups, end to end through the daemon: mail delivered to the sink, then a
report about it sent to the daemon's real MX listener at the gateway's own address (the MX spools
it with tenant None and the envelope recipient it was sent to), processed by the daemon's processor:

    an asynchronous DSN for a 250'd message    -> the recipient suppressed (hard bounce)
    an ARF complaint                           -> suppressed for marketing only
    a mailto: unsubscribe (List-Unsubscribe)   -> unsubscribed (source mailto)
"""

from __future__ import annotations

import asyncio
import re

import aiosmtplib

from tests.support.delivery import delivering_daemon, publish_mx, wait_events
from tests.support.sink import mail_sink
from tests.test_unsubscribe_e2e import fields_of, marketing_mail


async def send_to_mx(d, rcpt: str, raw: bytes, mail_from: str = "") -> str:
    """Through the daemon's MX listener; the inbound id its 250 names."""
    host, port = d.hostport("inbound")
    async with aiosmtplib.SMTP(hostname=host, port=port, timeout=10, start_tls=False) as smtp:
        await smtp.ehlo(hostname="mx.dest.test")
        await smtp.mail(mail_from)
        await smtp.rcpt(rcpt)
        reply = await smtp.data(raw)
    assert reply.code == 250
    return reply.message.rsplit(" ", 1)[-1]


async def processed(d, qid: str, timeout: float = 15.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            row = await d.store.inbound.get(qid)
            if row["state"] != "spooled":
                return row
            await asyncio.sleep(0.02)


def message_id_of(data: bytes) -> str:
    return re.search(rb"(?im)^Message-ID:\s*<([^>]+)>", data).group(1).decode()


def dsn(verp: str, rcpt: str, original_id: str) -> bytes:
    return (f"From: Mail Delivery System <MAILER-DAEMON@mx.dest.test>\r\nTo: {verp}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            "Auto-Submitted: auto-replied\r\nMessage-ID: <dsn1@mx.dest.test>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\n\r\nThe mail system could not deliver your message.\r\n"
            "--b1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.dest.test\r\n\r\n"
            f"Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            f"Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown\r\n"
            f"--b1\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{verp}>\r\nMessage-ID: <{original_id}>\r\n"
            "Subject: news\r\n--b1--\r\n").encode()


def arf(verp: str, rcpt: str, original_id: str) -> bytes:
    return ("From: staff@feedback.dest.test\r\nTo: fbl@example\r\nSubject: complaint\r\nMessage-ID: <arf1@feedback.dest.test>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary="b2"\r\n\r\n'
            "--b2\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
            "--b2\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: dest/1.0\r\nVersion: 1\r\n"
            f"Original-Rcpt-To: {rcpt}\r\n"
            f"--b2\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{verp}>\r\nFrom: app@acme.test\r\nTo: {rcpt}\r\n"
            f"Message-ID: <{original_id}>\r\nSubject: news\r\n\r\nbuy now\r\n--b2--\r\n").encode()


async def test_a_late_dsn_suppresses_and_an_arf_suppresses_for_marketing_only(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, kind="marketing", usecase="news") as (d, setup):
            got = await marketing_mail(d, setup, sink, ["bob@dest.test", "carol@dest.test"])
            tenant_id = (await d.store.tenants.get(setup["tenant"]))["id"]
            by_rcpt = {m.rcpt_tos[0]: m for m in sink.messages}
            bob, carol = by_rcpt["bob@dest.test"], by_rcpt["carol@dest.test"]
            assert bob.mail_from.startswith("bounces+") and bob.mail_from.endswith("@" + setup["return_path_domain"])

            # Bob's mailbox was deleted after his MX said 250: an asynchronous bounce to his VERP return path.
            qid = await send_to_mx(d, bob.mail_from, dsn(bob.mail_from, "bob@dest.test", message_id_of(got["bob@dest.test"])))
            row = await processed(d, qid)
            assert (row["state"], row["kind"], row["tenant_id"]) == ("processed", "dsn", tenant_id)
            report = row["summary"]["report"]
            assert report["refers_to"]["recipient"] == "bob@dest.test" and report["refers_to"]["by"] == "verp"
            assert report["outcome"]["matched"] is True and report["outcome"]["done"] == ["suppressed"]
            entry = await d.store.suppressions.live(tenant_id, "bob@dest.test", [("tenant", 0)])
            assert entry is not None and entry["reason"] == "hard_bounce"
            assert row["raw"].startswith(b"Authentication-Results: ")   # evaluated and recorded on the stored copy

            # Carol complains: suppressed for marketing, not for the tenant's transactional mail.
            qid = await send_to_mx(d, f"fbl@{setup['return_path_domain']}",
                                        arf(carol.mail_from, "carol@dest.test", message_id_of(got["carol@dest.test"])))
            row = await processed(d, qid)
            assert (row["kind"], row["tenant_id"]) == ("arf", tenant_id)
            assert await d.store.suppressions.live(tenant_id, "carol@dest.test", [("marketing", 0)]) is not None
            assert await d.store.suppressions.live(tenant_id, "carol@dest.test", [("tenant", 0)]) is None
            [complained] = await wait_events(d, row["summary"]["report"]["refers_to"]["queue_id"], "complained")
            assert complained["data"]["rcpt"] == "carol@dest.test"


async def test_a_mailto_unsubscribe_unsubscribes(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, kind="marketing", usecase="news") as (d, setup):
            [data] = (await marketing_mail(d, setup, sink, ["erin@dest.test"])).values()
            uri = re.search(r"<(mailto:[^>]+)>", fields_of(data)["List-Unsubscribe"][0]).group(1)   # on by default
            to, _, query = uri[len("mailto:"):].partition("?")
            subject = query.removeprefix("subject=").replace("%20", " ")
            request = (f"From: Erin <erin@dest.test>\r\nTo: {to}\r\nSubject: Re: {subject}\r\n"
                       "Message-ID: <u1@dest.test>\r\n\r\nplease stop\r\n").encode()
            qid = await send_to_mx(d, to, request, mail_from="erin@dest.test")
            row = await processed(d, qid)
            tenant_id = (await d.store.tenants.get(setup["tenant"]))["id"]
            assert (row["kind"], row["tenant_id"], row["summary"]["report"]) == ("unsubscribe", tenant_id,
                                                                                  {"type": "unsubscribe", "changed": True})
            [event] = await d.store.events.list(tenant_id=tenant_id, kind="unsubscribed")
            assert event["data"]["source"] == "mailto"
            entry = await d.store.suppressions.find(tenant_id, "erin@dest.test", [("usecase", setup["usecase_id"])])
            assert entry is not None and entry["source"] == "mailto"
