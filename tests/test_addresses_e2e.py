"""Mail sent from a channel address, end to end: a real client submits to the daemon, which queues,
DKIM-signs and delivers to a recording MX. What the remote receives carries the reply copy (as an
envelope recipient and in Reply-To, no Bcc header), the header and footer in both the text and the
HTML part, the vCard on the first message of the thread only, a References chain rebuilt from our
records across three rounds with a client that strips it; and dkimpy verifies every copy."""

from __future__ import annotations

import email
import email.policy

import aiosmtplib
import dkim

from gateway.submission import client_tls_context
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, publish_mx
from tests.support.sink import mail_sink

SUPPORT = "support@acme.test"


def reply_from_app(n: int, extra: str = "") -> bytes:
    return (f"From: Acme Support <{SUPPORT}>\r\nTo: Bob <bob@dest.test>\r\nSubject: Your ticket\r\n"
            f"Message-ID: <out{n}@acme.test>\r\n{extra}MIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
            "--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nAnswer number " f"{n}.\r\n"
            "--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>Answer number " f"{n}.</p></body></html>\r\n"
            "--alt--\r\n").encode()


async def send(d, setup, data: bytes) -> None:
    host, port = d.hostport("submission")
    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=True, tls_context=client_tls_context(), timeout=10) as smtp:
        await smtp.ehlo()
        await smtp.auth_plain(setup["username"], setup["password"])
        await smtp.sendmail(SUPPORT, ["bob@dest.test"], data)


async def test_reply_copy_decorations_vcard_references_and_dkim_on_what_the_remote_gets(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            await d.call("address.add", tenant="acme", address=SUPPORT, usecase="receipts", display_name="Acme Support",
                         reply_copy="desk@dest.test", header_text="Ticket desk", footer_text="-- \nAcme Support",
                         header_html="<p>Ticket desk</p>", footer_html="<p>Acme Support &#9742;</p>", vcard=True)
            tenant_id = (await d.store.tenants.get("acme"))["id"]

            async def customer_reply(mid: str, parent: str) -> None:
                # The processor's record of an inbound reply (direction 'in', with its parent).
                await d.store.db.write(lambda c: c.execute(
                    "INSERT INTO message_ids (message_id, tenant_id, usecase_id, thread_id, direction, created_at, parent)"
                    " VALUES (?, ?, ?, 'out1@acme.test', 'in', 0, ?)", (mid, tenant_id, setup["usecase_id"], parent)))

            rounds = []
            await send(d, setup, reply_from_app(1))
            rounds.append(list(await sink.wait_for(2)))
            await customer_reply("in1@dest.test", "out1@acme.test")
            await send(d, setup, reply_from_app(2, "In-Reply-To: <in1@dest.test>\r\n"))   # the client stripped References
            rounds.append(list(await sink.wait_for(4))[2:])
            await customer_reply("in2@dest.test", "out2@acme.test")
            await send(d, setup, reply_from_app(3, "In-Reply-To: <in2@dest.test>\r\nReferences: <in2@dest.test>\r\n"))
            rounds.append(list(await sink.wait_for(6))[4:])

    want_refs = [None, "<out1@acme.test> <in1@dest.test>", "<out1@acme.test> <in1@dest.test> <out2@acme.test> <in2@dest.test>"]
    for n, got in enumerate(rounds, 1):
        assert sorted(r for m in got for r in m.rcpt_tos) == ["bob@dest.test", "desk@dest.test"], n
        for m in got:
            assert dkim.DKIM(m.data).verify(dnsfunc=dkim_dnsfunc(dns_server)), (n, m.rcpt_tos)
            msg = email.message_from_bytes(m.data, policy=email.policy.default)
            head = m.data.split(b"\r\n\r\n", 1)[0].lower()
            assert b"\r\nbcc:" not in head and b"desk@dest.test" in head.split(b"\r\nreply-to:", 1)[1].split(b"\r\n")[0]
            refs = msg["References"]
            assert (" ".join(refs.split()) if refs else None) == want_refs[n - 1], n
            texts = {p.get_content_type(): p.get_content() for p in msg.walk() if p.get_content_type() in ("text/plain", "text/html")}
            assert texts["text/plain"].replace("\r\n", "\n") == f"Ticket desk\n\nAnswer number {n}.\n\n-- \nAcme Support\n"
            assert texts["text/html"].strip() == (f"<html><body><p>Ticket desk</p><p>Answer number {n}.</p>"
                                                  "<p>Acme Support &#9742;</p></body></html>")
            cards = [p for p in msg.walk() if p.get_content_type() == "text/vcard"]
            # A vCard on the first message of the thread, none on the replies (their parent is known).
            assert len(cards) == (1 if n == 1 else 0), n
            if cards:
                assert cards[0].get_filename() == "Acme-Support.vcf" and "EMAIL;TYPE=INTERNET:support@acme.test" in cards[0].get_content()
