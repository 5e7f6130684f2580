"""Channel addresses on the submission path: direction and disabled at MAIL (and at DATA for the
header From), sending from an address that is no listed sender, what the queued copy carries (reply
copy as an envelope recipient and in Reply-To, never a Bcc header; header and footer), and the
parent links and References chain built from our records."""

from __future__ import annotations

import email
import email.policy

import aiosmtplib
import pytest

from tests.support.submission import message, submission_listener


async def queued_body(sub, queue_id: str) -> bytes:
    return await sub.store.db.read(lambda c: c.execute("SELECT body FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()[0])


def queue_id_of(reply: str) -> str:
    assert "queued as" in reply, reply
    return reply.rsplit(" ", 1)[1]


async def add(sub, address: str, usecase: str = "billing", **fields):
    return await sub.store.addresses.add("acme", address, usecase=usecase, **fields)


async def test_direction_and_disabled_refused_at_mail(tmp_path):
    async with submission_listener(tmp_path) as sub:
        await add(sub, "off@example.com", enabled=0)
        await add(sub, "in@example.com", direction="inbound")
        await add(sub, "out@example.com", direction="outbound")
        await add(sub, "both@example.com")
        await sub.store.usecases.add("acme", domain="example.com", name="news", senders=["news@example.com"], entity="",
                                     kind="marketing", unsubscribe_scope="usecase", route="direct", rate_limit=0)
        await add(sub, "other@example.com", usecase="news")
        async with sub.client() as smtp:
            for sender, code, text in [("off@example.com", 550, "5.7.1 Sender address disabled"),
                                       ("OFF@Example.com", 550, "5.7.1 Sender address disabled"),
                                       ("in@example.com", 550, "5.7.1 Sender address does not send"),
                                       ("other@example.com", 553, "5.7.1 Sender address not allowed"),
                                       ("stranger@example.com", 553, "5.7.1 Sender address not allowed")]:
                with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
                    await smtp.sendmail(sender, ["bob@example.org"], message(sender))
                assert info.value.code == code and info.value.message.startswith(text), (sender, info.value)
            # Enabled sending addresses are senders of their use case, listed in usecase_senders or not.
            for sender in ("out@example.com", "both@example.com"):
                _, reply = await smtp.sendmail(sender, ["bob@example.org"], message(sender))
                assert (await sub.store.queue.show(queue_id_of(reply)))["mail_from"] == sender
            # A listed sender in MAIL FROM does not let a disabled address into the header From.
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await smtp.sendmail("app@example.com", ["bob@example.org"], message("off@example.com"))
            assert info.value.code == 550 and info.value.message.startswith("5.7.1 Sender address disabled")
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await smtp.sendmail("out@example.com", ["bob@example.org"], message("in@example.com"))
            assert info.value.code == 550
        # Re-enabled: accepted at the next MAIL (the test listener caches no context).
        await sub.store.addresses.update("acme", "off@example.com", enabled=1)
        async with sub.client() as smtp:
            await smtp.sendmail("off@example.com", ["bob@example.org"], message("off@example.com"))


async def test_reply_copy_is_a_recipient_and_reply_to_never_a_bcc_header(tmp_path):
    async with submission_listener(tmp_path) as sub:
        await add(sub, "support@example.com", reply_copy="desk@example.net", footer_text="-- \nExample support")
        async with sub.client() as smtp:
            _, reply = await smtp.sendmail("support@example.com", ["bob@example.org"], message("support@example.com"))
            qid = queue_id_of(reply)
            _, reply = await smtp.sendmail("support@example.com", ["bob@example.org", "DESK@example.net"],
                                           message("support@example.com", extra="Reply-To: Team <team@example.com>\r\n"))
            qid2 = queue_id_of(reply)
        shown = await sub.store.queue.show(qid)
        assert [r["rcpt"] for r in shown["recipients"]] == ["bob@example.org", "desk@example.net"]
        body = await queued_body(sub, qid)
        msg = email.message_from_bytes(body, policy=email.policy.default)
        assert b"\r\nReply-To: <desk@example.net>\r\n" in body and msg["Bcc"] is None and "desk" not in str(msg["To"])
        assert msg.get_content().replace("\r\n", "\n") == "Hello Bob.\n\n-- \nExample support\n"
        # The app's own Reply-To stays first; a copy it already addressed is not added twice.
        assert [r["rcpt"] for r in (await sub.store.queue.show(qid2))["recipients"]] == ["bob@example.org", "DESK@example.net"]
        body = await queued_body(sub, qid2)
        assert b"\r\nReply-To: Team <team@example.com>, <desk@example.net>\r\n" in body and body.count(b"Reply-To") == 1


async def test_decorated_message_over_the_size_limit_is_refused(tmp_path):
    async with submission_listener(tmp_path, submission={"max_message_size": 4000}) as sub:
        await add(sub, "support@example.com", footer_text="f" * 3000)
        async with sub.client() as smtp:
            with pytest.raises(aiosmtplib.SMTPResponseException) as info:
                await smtp.sendmail("support@example.com", ["bob@example.org"], message("support@example.com", size=2500))
            assert info.value.code == 552
            await smtp.rset()
            await smtp.sendmail("app@example.com", ["bob@example.org"], message(size=2500))  # undecorated: fits


async def test_parent_recorded_and_references_rebuilt_when_the_client_strips_them(tmp_path):
    async with submission_listener(tmp_path) as sub:
        tenant_id = sub.ctx["tenant_id"]

        async def inbound(mid: str, parent: str) -> None:
            # What the processor records for a customer's reply (direction 'in', its parent).
            def run(conn):
                thread = conn.execute("SELECT thread_id FROM message_ids WHERE tenant_id = ? AND message_id = ?",
                                      (tenant_id, parent)).fetchone()[0]
                conn.execute("INSERT INTO message_ids (message_id, tenant_id, usecase_id, thread_id, direction, created_at, parent)"
                             " VALUES (?, ?, ?, ?, 'in', 0, ?)", (mid, tenant_id, sub.ctx["id"], thread, parent))
            await sub.store.db.write(run)

        async with sub.client() as smtp:
            async def send(extra: str) -> bytes:
                _, reply = await smtp.sendmail("app@example.com", ["bob@example.org"], message(extra=extra))
                return await queued_body(sub, queue_id_of(reply))

            first = await send("Message-ID: <out1@example.com>\r\n")
            assert b"References" not in first
            await inbound("in1@cust.example", "out1@example.com")
            second = await send("Message-ID: <out2@example.com>\r\nIn-Reply-To: <in1@cust.example>\r\n")
            await inbound("in2@cust.example", "out2@example.com")
            third = await send("Message-ID: <out3@example.com>\r\nIn-Reply-To: <in2@cust.example>\r\nReferences: <in2@cust.example>\r\n")
            unknown = await send("Message-ID: <out4@example.com>\r\nIn-Reply-To: <nobody@else.example>\r\n")
        refs = [email.message_from_bytes(b, policy=email.policy.default)["References"] for b in (second, third, unknown)]
        assert refs[0].split() == ["<out1@example.com>", "<in1@cust.example>"]
        assert refs[1].split() == ["<out1@example.com>", "<in1@cust.example>", "<out2@example.com>", "<in2@cust.example>"]
        assert refs[2] is None
        rows = await sub.store.db.read(lambda c: c.execute(
            "SELECT message_id, parent, thread_id FROM message_ids WHERE direction = 'out' ORDER BY message_id").fetchall())
        assert [tuple(r) for r in rows] == [("out1@example.com", "", "out1@example.com"),
                                            ("out2@example.com", "in1@cust.example", "out1@example.com"),
                                            ("out3@example.com", "in2@cust.example", "out1@example.com"),
                                            ("out4@example.com", "", "out4@example.com")]


async def test_another_tenants_address_is_no_sender_here(tmp_path):
    from tests.support.submission import PASSWORD, make_usecase

    async with submission_listener(tmp_path) as sub:
        await add(sub, "support@example.com", direction="outbound")
        beta = await make_usecase(sub.store, tenant="beta", domain="beta.example", usecase="desk", senders=["@beta.example"])
        sub.auth.logins["beta"] = (PASSWORD, beta["id"])
        async with sub.client(login=("beta", PASSWORD)) as smtp:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
                await smtp.sendmail("support@example.com", ["bob@example.org"], message("support@example.com"))
            assert info.value.code == 553
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await smtp.sendmail("x@beta.example", ["bob@example.org"], message("support@example.com"))
            assert info.value.code == 553
        assert set(beta["addresses"]) == set()   # beta's context never holds acme's addresses
