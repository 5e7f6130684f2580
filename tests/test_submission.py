"""The submission listener with real clients (aiosmtplib, smtplib, raw bytes) over a real store."""

from __future__ import annotations

import asyncio
import smtplib

import aiosmtplib
import pytest

from gateway.errors import SMTPError
from tests.support.submission import PASSWORD, RawClient, message, submission_listener


def smtplib_client(port: int, *, implicit: bool = False) -> smtplib.SMTP:
    from gateway.submission import client_tls_context

    if implicit:
        return smtplib.SMTP_SSL("127.0.0.1", port, context=client_tls_context(), timeout=10)
    return smtplib.SMTP("127.0.0.1", port, timeout=10)


async def test_accepted_message_is_committed_before_250_and_prepared(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async with sub.client() as smtp:
            raw = message(extra="Bcc: secret@example.net\r\n")
            _, reply = await smtp.sendmail("app@example.com", ["bob@example.org", "carol@example.org"], raw)
        queue_id = reply.rsplit(" ", 1)[1]
        assert reply.startswith("2.0.0 Ok: queued as ")
        # The 250 came after the commit: the row is there, readable by another connection, at once.
        shown = await sub.store.queue.show(queue_id)
        assert shown is not None and [r["rcpt"] for r in shown["recipients"]] == ["bob@example.org", "carol@example.org"]
        assert {r["state"] for r in shown["recipients"]} == {"pending"}
        body = await sub.store.db.read(lambda c: c.execute("SELECT body FROM messages WHERE queue_id = ?", (queue_id,)).fetchone()[0])
        head = body.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"Received: from ")
        assert f"id {queue_id}".encode() in head
        assert b"Bcc:" not in head and b"secret@example.net" not in body
        assert f"Message-ID: <{queue_id}@example.com>".encode() in head
        assert b"\r\nDate: " in head
        assert shown["message_id"] == f"{queue_id}@example.com"
        events = await sub.store.events.list(subject=queue_id)
        assert [e["kind"] for e in events] == ["queued"]
        assert sub.queued == [queue_id]


async def test_client_message_id_kept_and_thread_follows_in_reply_to(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async with sub.client() as smtp:
            await smtp.sendmail("app@example.com", ["bob@example.org"], message(extra="Message-ID: <first@app.example>\r\n"))
            await smtp.sendmail("app@example.com", ["bob@example.org"],
                                message(extra="Message-ID: <second@app.example>\r\nIn-Reply-To: <first@app.example>\r\n"))
            await smtp.sendmail("app@example.com", ["bob@example.org"],
                                message(extra="References: <unknown@else.where> <second@app.example>\r\n"))
        rows = await sub.store.queue.list()
        shown = [await sub.store.queue.show(r["queue_id"]) for r in rows]
        assert [s["message_id"] for s in shown[:2]] == ["first@app.example", "second@app.example"]
        assert {s["thread_id"] for s in shown} == {"first@app.example"}


async def test_smtplib_login_on_implicit_tls_port(tmp_path):
    async with submission_listener(tmp_path) as sub:
        port = sub.port("submissions")

        def send() -> dict:
            with smtplib_client(port, implicit=True) as s:
                s.ehlo("client.example")
                s.login("app", PASSWORD)  # smtplib tries CRAM-MD5, PLAIN, LOGIN: we offer PLAIN and LOGIN
                return s.sendmail("app@example.com", ["bob@example.org"], message())

        assert await asyncio.to_thread(send) == {}
        assert len(sub.queued) == 1


async def test_auth_login_mechanism_over_starttls(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async with sub.client(login=None) as smtp:
            await smtp.ehlo()
            assert set(smtp.esmtp_extensions["auth"].split()) == {"PLAIN", "LOGIN"}
            response = await smtp.auth_login("app", PASSWORD)
            assert response.code == 235
            await smtp.sendmail("app@example.com", ["bob@example.org"], message())
        assert len(sub.queued) == 1


async def test_auth_before_tls_is_538_and_mail_without_auth_is_530(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port(), implicit=False)
        assert (await client.cmd("EHLO client.example"))[0] == 250
        code, text = await client.cmd("AUTH PLAIN AGFwcABwYXNz")
        assert (code, text.split()[0]) == (538, "5.7.11")
        code, text = await client.cmd("MAIL FROM:<app@example.com>")
        assert (code, text.split()[0]) == (530, "5.7.0")
        await client.close()
        # After STARTTLS but without AUTH: still no relaying.
        async with sub.client(login=None) as smtp:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], message())
            assert err.value.code == 530
        assert sub.auth.calls == 0


async def test_failed_auth_cools_down_the_client_address(tmp_path):
    async with submission_listener(tmp_path, submission={"auth_failures_limit": 3, "auth_cooldown": 60.0}) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        await client.cmd("EHLO client.example")
        import base64

        bad = base64.b64encode(b"\0app\0wrong").decode()
        for _ in range(3):
            code, text = await client.cmd(f"AUTH PLAIN {bad}")
            assert (code, text.split()[0]) == (535, "5.7.8")
        calls = sub.auth.calls
        good = base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode()
        code, text = await client.cmd(f"AUTH PLAIN {good}")
        assert (code, text.split()[0]) == (454, "4.7.0")
        assert sub.auth.calls == calls  # refused without looking at the password
        await client.close()
        async with sub.client(login=None) as smtp:  # a new connection from the same address too
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
                await smtp.login("app", PASSWORD)
            assert err.value.code == 454


async def test_sender_policy(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async with sub.client() as smtp:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as err:
                await smtp.sendmail("other@example.com", ["bob@example.org"], message())
            assert (err.value.code, err.value.message.split()[0]) == (553, "5.7.1")
            with pytest.raises(aiosmtplib.SMTPDataError) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], message(sender="ceo@example.com"))
            assert (err.value.code, err.value.message.split()[0]) == (553, "5.7.1")
            with pytest.raises(aiosmtplib.SMTPDataError) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], b"To: bob@example.org\r\nSubject: no from\r\n\r\nhi\r\n")
            assert (err.value.code, err.value.message.split()[0]) == (550, "5.6.0")
            # Case does not matter in the domain (nor, here, in the local part).
            await smtp.sendmail("App@EXAMPLE.com", ["bob@example.org"], message(sender="APP@example.COM"))
        assert len(sub.queued) == 1


@pytest.mark.parametrize("change", ["domain_failing", "tenant_disabled", "outbound_disabled"])
async def test_account_state_refused_at_mail(tmp_path, change):
    async with submission_listener(tmp_path) as sub:
        store = sub.store
        if change == "domain_failing":
            await store.domains.record(sub.ctx["domain_id"], "token-example.com", "failing", {}, [])
        elif change == "tenant_disabled":
            await store.tenants.update("acme", enabled=0)
        else:
            await store.tenants.update("acme", outbound_enabled=0)
        async with sub.client() as smtp:
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], message())
            assert (err.value.code, err.value.message.split()[0]) == (550, "5.7.1")
        assert sub.queued == []


async def test_rate_limit_and_monthly_quota(tmp_path):
    async with submission_listener(tmp_path, usecase={"rate_limit": 2}) as sub:
        async with sub.client() as smtp:
            for _ in range(2):
                await smtp.sendmail("app@example.com", ["bob@example.org"], message())
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], message())
            assert (err.value.code, err.value.message.split()[0]) == (451, "4.7.0")
    (tmp_path / "q").mkdir()
    async with submission_listener(tmp_path / "q", usecase={"monthly_quota": 3}) as sub:
        async with sub.client() as smtp:
            for _ in range(3):
                await smtp.sendmail("app@example.com", ["bob@example.org"], message())
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], message())
            assert (err.value.code, err.value.message.split()[0]) == (452, "4.5.3")
        assert await sub.store.queue.monthly_count(sub.ctx["tenant_id"]) == 3


async def test_recipients_beyond_the_limit_get_452_and_the_rest_is_queued(tmp_path):
    async with submission_listener(tmp_path, submission={"max_recipients": 2}) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        await client.login()
        assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        assert (await client.cmd("RCPT TO:<a@example.org>"))[0] == 250
        assert (await client.cmd("RCPT TO:<A@example.org>"))[0] == 250  # duplicate, collapsed
        assert (await client.cmd("RCPT TO:<b@example.org>"))[0] == 250
        code, text = await client.cmd("RCPT TO:<c@example.org>")
        assert (code, text.split()[0]) == (452, "4.5.3")
        code, text = await client.data(message() + b".\r\n")
        assert code == 250, text
        await client.close()
        shown = await sub.store.queue.show(sub.queued[0])
        assert [r["rcpt"] for r in shown["recipients"]] == ["a@example.org", "b@example.org"]


async def test_size_limit_at_mail_and_at_the_final_dot(tmp_path):
    async with submission_listener(tmp_path, submission={"max_message_size": 4096}) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        await client.login()
        code, text = await client.cmd("MAIL FROM:<app@example.com> SIZE=5000")
        assert (code, text.split()[0]) == (552, "5.3.4")
        assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        assert (await client.cmd("RCPT TO:<bob@example.org>"))[0] == 250
        code, text = await client.data(message(size=8000) + b".\r\n")
        assert (code, text.split()[0]) == (552, "5.3.4")
        # The session goes on and a message that fits is accepted.
        assert (await client.cmd("MAIL FROM:<app@example.com> SIZE=1000"))[0] == 250
        assert (await client.cmd("RCPT TO:<bob@example.org>"))[0] == 250
        assert (await client.data(message() + b".\r\n"))[0] == 250
        await client.close()
        assert len(sub.queued) == 1


@pytest.mark.parametrize("payload", [
    b"From: app@example.com\r\nSubject: x\r\n\r\nline one\nline two\r\n.\r\n",            # bare LF
    b"From: app@example.com\r\nSubject: x\r\n\r\nline one\rline two\r\n.\r\n",            # bare CR
    b"From: app@example.com\r\nSubject: x\r\n\r\nhi\r\n\n.\nMAIL FROM:<x@evil.example>\r\n.\r\n",  # smuggling attempt
    b"From: app@example.com\r\nSubject: x\r\n\r\nnul \x00 here\r\n.\r\n",                  # NUL
])
async def test_bare_line_endings_and_nul_refused(tmp_path, payload):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        await client.login()
        await client.cmd("MAIL FROM:<app@example.com>")
        await client.cmd("RCPT TO:<bob@example.org>")
        code, text = await client.data(payload)
        assert (code, text.split()[0]) == (550, "5.6.0")
        await client.close()
        assert sub.queued == []


@pytest.mark.parametrize("command", [
    b"MAIL FROM:<app\r@example.com>",
    b"MAIL FROM:<app@example.com\x00>",
    b"RCPT TO:<bob\x00@example.org>",
    b"RCPT TO:<bob@exa\rmple.org>",
])
async def test_cr_lf_nul_inside_addresses_refused(tmp_path, command):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        await client.login()
        if command.startswith(b"RCPT"):
            assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        code, text = await client.cmd(command)
        assert code == 501 and text.startswith("5.5.2"), (code, text)
        await client.close()


async def test_malformed_addresses_refused(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        await client.login()
        assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        code, text = await client.cmd("RCPT TO:<" + "x" * 65 + "@example.org>")
        assert (code, text.split()[0]) == (553, "5.1.3")
        code, text = await client.cmd("RCPT TO:<bob@-bad-.example>")
        assert (code, text.split()[0]) == (553, "5.1.3")
        await client.close()


async def test_too_many_received_headers_is_a_loop(tmp_path):
    async with submission_listener(tmp_path, submission={"max_received_headers": 3}) as sub:
        hops = "".join(f"Received: from hop{i} by relay{i}; Mon, 1 Jan 2024 00:00:0{i} +0000\r\n" for i in range(4))
        async with sub.client() as smtp:
            with pytest.raises(aiosmtplib.SMTPDataError) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], hops.encode() + message())
            assert (err.value.code, err.value.message.split()[0]) == (554, "5.4.6")
            await smtp.sendmail("app@example.com", ["bob@example.org"], "".join(hops.splitlines(True)[:3]).encode() + message())
        assert len(sub.queued) == 1


async def test_unexpected_error_answers_generic_451_without_exception_text(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async def broken(_message):
            raise RuntimeError("database password is hunter2")

        sub.server.handler.submitter.submit = broken
        async with sub.client() as smtp:
            with pytest.raises(aiosmtplib.SMTPDataError) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], message())
            assert (err.value.code, err.value.message) == (451, "4.3.0 Internal error, please try again later")
            assert "hunter2" not in err.value.message
        # And the backstop for errors outside our hooks.
        assert await sub.server.handler.handle_exception(ValueError("secret")) == "451 4.3.0 Internal error, please try again later"


async def test_auth_backend_failure_is_temporary_and_silent(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async def broken(username, password):
            raise OSError("disk on fire at /var/secret")

        sub.server.handler.authenticate = broken
        async with sub.client(login=None) as smtp:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
                await smtp.login("app", PASSWORD)
            assert err.value.code == 454 and "fire" not in err.value.message


async def test_paused_mail_is_queued_held_and_resume_releases_it(tmp_path):
    async with submission_listener(tmp_path) as sub:
        await sub.store.pauses.pause("acme", "billing")
        async with sub.client() as smtp:
            await smtp.sendmail("app@example.com", ["bob@example.org"], message())
        shown = await sub.store.queue.show(sub.queued[0])
        assert [(r["state"], r["hold_reason"]) for r in shown["recipients"]] == [("held", "paused")]
        assert [e["kind"] for e in await sub.store.events.list(subject=sub.queued[0])] == ["queued", "held"]
        result = await sub.store.pauses.resume("acme", "billing")
        assert result["released"] == 1
        shown = await sub.store.queue.show(sub.queued[0])
        assert [(r["state"], r["hold_reason"]) for r in shown["recipients"]] == [("pending", "")]


async def test_connections_per_client_limited(tmp_path):
    async with submission_listener(tmp_path, submission={"max_connections_per_client": 1}) as sub:
        first = await RawClient.connect(sub.port("submissions"))
        reader, writer = await asyncio.open_connection("127.0.0.1", sub.port("submission"))
        banner = await reader.readline()
        assert banner.startswith(b"421 4.7.0")
        writer.close()
        await first.close()


async def test_command_timeout_closes_idle_session(tmp_path):
    async with submission_listener(tmp_path, submission={"command_timeout": 1.0}) as sub:
        reader, writer = await asyncio.open_connection("127.0.0.1", sub.port("submission"))
        assert (await reader.readline()).startswith(b"220 ")
        # Told why, then closed by the listener (issue 7 item 15; tests/test_submission_hangup.py).
        assert await asyncio.wait_for(reader.read(), 10) == b"421 4.4.2 Timeout, closing connection\r\n"
        writer.close()


async def test_stop_answers_idle_sessions_421(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        await client.login()
        await sub.server.stop(asyncio.get_running_loop().time() + 5)
        assert (await client.reply())[0] == 421
        await client.close()


def test_smtp_error_reply_format():
    err = SMTPError(452, "4.5.3", "Too many recipients", "more than 2")
    assert err.reply == "452 4.5.3 Too many recipients" and not err.permanent


async def test_second_starttls_refused(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async with sub.client(login=None) as smtp:
            response = await smtp.execute_command(b"STARTTLS")
            assert (response.code, response.message) == (503, "5.5.1 TLS already active")
