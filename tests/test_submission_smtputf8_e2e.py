"""SMTPUTF8 (RFC 6531) end to end: a UTF-8 address submitted to the daemon arrives at a remote that
offers SMTPUTF8, and bounces with 5.6.7 (a DSN to the sender) at one that does not."""

from __future__ import annotations

import email
import email.policy

import aiosmtplib
import pytest

from gateway.submission import client_tls_context
from tests.support.delivery import delivering_daemon, publish_mx, wait_events
from tests.support.sink import mail_sink

RCPT = "jörg@dest.test"


def utf8_message(sender: str, rcpt: str = RCPT) -> bytes:
    return (f"From: App <{sender}>\r\nTo: Jörg <{rcpt}>\r\nSubject: Grüße aus dem Büro\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHallo Jörg.\r\n").encode()


async def submit_utf8(d, setup, rcpt: str = RCPT) -> str:
    host, port = d.hostport("submission")
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
    async with smtp:
        await smtp.ehlo()
        assert smtp.supports_extension("smtputf8")
        await smtp.auth_plain(setup["username"], setup["password"])
        _, reply = await smtp.sendmail(setup["sender"], [rcpt], utf8_message(setup["sender"], rcpt), mail_options=["SMTPUTF8"])
    assert "queued as" in reply, reply
    return reply.rsplit(" ", 1)[1]


@pytest.mark.parametrize("rcpt, mx_domain", [(RCPT, "dest.test"), ("jörg@bücher.test", "xn--bcher-kva.test")])
async def test_utf8_recipient_arrives_at_a_remote_offering_smtputf8(tmp_path, dns_server, rcpt, mx_domain):
    async with mail_sink(smtputf8=True) as sink:
        publish_mx(dns_server, mx_domain)  # a U-label domain's MX is looked up under its A-label
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            qid = await submit_utf8(d, setup, rcpt)
            [got] = await sink.wait_for(1)
            assert got.rcpt_tos == [rcpt] and got.smtputf8
            parsed = email.message_from_string(got.data.decode("utf-8"), policy=email.policy.default)  # RFC 6532 headers
            assert parsed["Subject"] == "Grüße aus dem Büro" and parsed["To"].addresses[0].addr_spec == rcpt
            await wait_events(d, qid, "delivered")


async def test_utf8_recipient_bounces_5_6_7_at_a_remote_without_smtputf8(tmp_path, dns_server):
    async with mail_sink(smtputf8=False) as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            publish_mx(dns_server, setup["domain"], "mx.dest.test")  # the app's own domain receives the DSN at the sink
            qid = await submit_utf8(d, setup)
            [bounced] = await wait_events(d, qid, "bounced")
            [dsn_event] = await wait_events(d, qid, "dsn_sent")
            await wait_events(d, dsn_event["data"]["dsn_queue_id"], "delivered")
            assert sink.for_rcpt(RCPT) == []
            [dsn] = sink.for_rcpt(setup["sender"])
            report = email.message_from_bytes(dsn.data, policy=email.policy.default)
            per_message, *per_rcpt = list(report.iter_parts())[1].get_payload()
            [failed] = per_rcpt
            assert failed["Action"] == "failed" and failed["Status"] == "5.6.7", str(failed)
            assert "SMTPUTF8" in failed["Diagnostic-Code"]


@pytest.mark.parametrize("offered", [True, False])
async def test_utf8_headers_travel_under_smtputf8_where_offered_and_as_8bit_elsewhere(tmp_path, dns_server, offered):
    async with mail_sink(smtputf8=offered) as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            host, port = d.hostport("submission")
            smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
            async with smtp:
                await smtp.ehlo()
                await smtp.auth_plain(setup["username"], setup["password"])
                data = utf8_message(setup["sender"]).replace(RCPT.encode(), b"bob@dest.test")
                await smtp.sendmail(setup["sender"], ["bob@dest.test"], data, mail_options=["SMTPUTF8"])
            [got] = await sink.wait_for(1)
            assert got.smtputf8 is offered
            assert "Subject: Grüße aus dem Büro".encode() in got.data
