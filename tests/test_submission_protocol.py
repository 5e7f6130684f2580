"""The submission listener against malformed and unusual input, over raw sockets and real clients.

Every reply to malformed input is a 4xx/5xx with an enhanced status code saying what was wrong, is
logged once and counted, and nothing a client sends reaches ``handle_exception`` (issue 12). The
protocol items of issue 7: bare-LF command lines, SMTPUTF8, PIPELINING, duplicate header fields, and
the 250 that stands once a message is committed.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl

import pytest
from structlog.testing import capture_logs

from gateway.submission import client_tls_context
from tests.support.submission import PASSWORD, RawClient, message, submission_listener

ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}( |$)")


def internal_errors(logs: list[dict]) -> list[dict]:
    return [e for e in logs if e["event"] in ("submission_exception", "submission_data_failed")]


def refusals(sub, step: str, code: str) -> float:
    return sub.server.metrics.registry.get_sample_value("gateway_submission_refusals_total", {"step": step, "code": code}) or 0


async def logged_in(sub) -> RawClient:
    client = await RawClient.connect(sub.port("submissions"))
    await client.login()
    return client


# --------------------------------------------------------------------------- issue 12: the four


@pytest.mark.parametrize("name", ["Message-ID", "In-Reply-To", "References"])
async def test_invalid_utf8_identifier_is_refused_naming_the_header(tmp_path, name):
    async with submission_listener(tmp_path) as sub:
        client = await logged_in(sub)
        assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        assert (await client.cmd("RCPT TO:<bob@example.org>"))[0] == 250
        with capture_logs() as logs:
            code, text = await client.data(b"From: x <app@example.com>\r\n" + name.encode() + b": <\xc3(@x>\r\n\r\n.\r\n")
        assert (code, text.split()[0]) == (550, "5.6.0"), text
        assert name in text
        assert internal_errors(logs) == []
        # The session goes on: the same message with a clean identifier is accepted.
        assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        assert (await client.cmd("RCPT TO:<bob@example.org>"))[0] == 250
        assert (await client.data(b"From: x <app@example.com>\r\n" + name.encode() + b": <ok@x>\r\n\r\n.\r\n"))[0] == 250
        await client.close()
        assert len(sub.queued) == 1


@pytest.mark.parametrize("command, expected", [
    ("MAIL FROM:<", (501, "5.1.7")),
    ("MAIL FROM:<@", (501, "5.1.7")),
    ("MAIL FROM:<a@[", (501, "5.1.7")),
    ("RCPT TO:<", (501, "5.1.3")),
    ("RCPT TO:<bob@[", (501, "5.1.3")),
])
async def test_unparseable_address_is_a_syntax_error(tmp_path, command, expected):
    async with submission_listener(tmp_path) as sub:
        client = await logged_in(sub)
        if command.startswith("RCPT"):
            assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        with capture_logs() as logs:
            code, text = await client.cmd(command)
        assert (code, text.split()[0]) == expected, (code, text)
        assert internal_errors(logs) == []
        assert (await client.cmd("NOOP"))[0] == 250  # the session goes on
        await client.close()


@pytest.mark.parametrize("mechanism", ["LOGIN", "PLAIN"])
async def test_overlong_line_in_answer_to_an_auth_prompt(tmp_path, mechanism):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        assert (await client.cmd("EHLO client.example"))[0] == 250
        assert (await client.cmd(f"AUTH {mechanism}"))[0] == 334
        with capture_logs() as logs:
            code, text = await client.cmd(b"A" * 70_000)
        assert (code, text) == (500, "5.5.6 Authentication exchange line is too long")
        assert internal_errors(logs) == []
        # The session is still usable: a proper login works.
        blob = base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode()
        assert (await client.cmd(f"AUTH PLAIN {blob}"))[0] == 235
        await client.close()


async def test_plaintext_after_starttls_closes_with_one_info_line(tmp_path):
    async with submission_listener(tmp_path) as sub:
        with capture_logs() as logs:
            for _ in range(2):
                reader, writer = await asyncio.open_connection("127.0.0.1", sub.port("submission"))
                assert (await reader.readline()).startswith(b"220 ")
                writer.write(b"EHLO client.example\r\n")
                while (line := await reader.readline())[3:4] == b"-":
                    pass
                writer.write(b"STARTTLS\r\n")
                assert (await reader.readline()).startswith(b"220 ")
                writer.write(b"EHLO client.example\r\nMAIL FROM:<app@example.com>\r\n" * 20)  # plaintext where TLS should be
                rest = await asyncio.wait_for(reader.read(), 10)  # closed (perhaps after a TLS alert)
                assert b"250" not in rest and b"530" not in rest
                writer.close()
        assert [e for e in logs if e["log_level"] == "error"] == []
        failed = [e for e in logs if e["event"] == "submission_tls_failed"]
        assert len(failed) == 1, logs  # rate-limited per client address
        assert failed[0]["log_level"] == "info" and failed[0]["client"] == "127.0.0.1"


async def test_commands_pipelined_after_starttls_are_refused_and_closed(tmp_path):
    """RFC 3207 4: STARTTLS ends a pipelined group. Plaintext already behind it is refused (it never
    reaches the TLS layer nor, after the handshake, the session: the old command-injection hole)."""
    async with submission_listener(tmp_path) as sub:
        reader, writer = await asyncio.open_connection("127.0.0.1", sub.port("submission"))
        assert (await reader.readline()).startswith(b"220 ")
        writer.write(b"EHLO client.example\r\n")
        while (await reader.readline())[3:4] == b"-":
            pass
        with capture_logs() as logs:
            writer.write(b"STARTTLS\r\nEHLO client.example\r\nMAIL FROM:<app@example.com>\r\n")
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"554 5.5.1 ")
            assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert [e for e in logs if e["log_level"] == "error"] == []
        [failed] = [e for e in logs if e["event"] == "submission_tls_failed"]
        assert failed["log_level"] == "info" and failed["client"] == "127.0.0.1"
        assert refusals(sub, "STARTTLS", "554") == 1


# --------------------------------------------------------------------------- every reply to malformed input


MALFORMED = [
    # (commands before, the command, expected code)
    ([], b"", 500),
    ([], b"\xff\xfe", 500),
    ([], b"XYZZY", 500),
    ([], b"HELO", 501),
    ([], b"EHLO", 501),
    ([], b"MAIL", 501),
    ([], b"MAIL FROM:", 501),
    ([], b"MAIL TO:<app@example.com>", 501),
    ([], b"MAIL FROM:<app@example.com> BODY=9BIT", 501),
    ([], b"MAIL FROM:<app@example.com> FOO=1", 555),
    ([], b"MAIL FROM:<app@example.com> SMTPUTF8=yes", 501),
    ([], b"MAIL FROM:<app@example.com> SIZE=x", 501),
    ([], b"MAIL FROM:<app@example.com> SIZE=999999999999", 552),
    ([b"MAIL FROM:<app@example.com>"], b"MAIL FROM:<app@example.com>", 503),
    ([], b"RCPT TO:<bob@example.org>", 503),
    ([b"MAIL FROM:<app@example.com>"], b"RCPT TO:<bob@example.org> NOTIFY=NEVER", 555),
    ([b"MAIL FROM:<app@example.com>"], b"RCPT FROM:<bob@example.org>", 501),
    ([], b"DATA", 503),
    ([b"MAIL FROM:<app@example.com>", b"RCPT TO:<bob@example.org>"], b"DATA now", 501),
    ([], b"RSET now", 501),
    ([], b"QUIT now", 501),
    ([], b"VRFY", 501),
    ([], b"VRFY <", 502),
    ([], b"EXPN list", 502),
    ([], b"HELP NOSUCH", 501),
    ([], b"STARTTLS", 503),
    ([], b"AUTH PLAIN", 503),
    ([], b"NOOP \x00", 501),
    ([], b"NOOP a\rb", 501),
    ([], b"X" * 2000, 500),
    ([], b"MAIL FROM:<app\xff@example.com>", 501),
    ([], b"MAIL FROM:<j\xc3\xb6rg@example.com>", 553),  # UTF-8 without SMTPUTF8
]


async def test_every_reply_to_malformed_input_has_an_enhanced_code_and_is_counted(tmp_path):
    async with submission_listener(tmp_path) as sub:  # one listener, a fresh session per input
        for before, command, code in MALFORMED:
            client = await logged_in(sub)
            for line in before:
                assert (await client.cmd(line))[0] == 250
            with capture_logs() as logs:
                got, text = await client.cmd(command)
            case = (command[:40], got, text)
            assert got == code, case
            assert ENHANCED.match(text), case
            assert internal_errors(logs) == [], case
            refused = [e for e in logs if e["event"] == "submission_refused"]
            assert len(refused) == 1 and refused[0]["code"] == code and refused[0]["client"] == "127.0.0.1", (case, logs)
            counted = refusals(sub, refused[0]["step"], str(code))
            assert counted >= 1, case
            assert (await client.cmd("NOOP"))[0] == 250, case  # the session goes on
            await client.close()
        assert sum(s.value for m in sub.server.metrics.registry.collect() if m.name == "gateway_submission_refusals"
                   for s in m.samples if s.name.endswith("_total")) == len(MALFORMED)


async def test_replies_before_login_have_enhanced_codes(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        for command in (b"MAIL FROM:<app@example.com>", b"AUTH PLAIN", b"AUTH", b"AUTH A B C", b"AUTH NOSUCH", b"HELP"):
            code, text = await client.cmd(command)
            assert code >= 500 and ENHANCED.match(text), (command, code, text)
        await client.close()
        client = await RawClient.connect(sub.port("submissions"))  # a fresh error budget
        assert (await client.cmd("EHLO client.example"))[0] == 250
        for command in (b"AUTH", b"AUTH A B C", b"AUTH NOSUCH", b"MAIL FROM:<app@example.com>", b"HELP"):
            code, text = await client.cmd(command)
            assert code >= 500 and ENHANCED.match(text), (command, code, text)
        code, text = await client.cmd("AUTH LOGIN")
        assert code == 334
        code, text = await client.cmd("*")
        assert (code, text.split()[0]) == (501, "5.7.0")
        code, text = await client.cmd("AUTH PLAIN")
        code, text = await client.cmd("not base64!")
        assert (code, text.split()[0]) == (501, "5.5.2")
        for command, expected in ((b"NOOP", "2.0.0"), (b"RSET", "2.0.0")):
            code, text = await client.cmd(command)
            assert code < 300 and text.startswith(expected), (command, code, text)
        await client.close()


async def test_auth_verdicts_are_counted_once_and_logged_by_the_auth_code(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        assert (await client.cmd("EHLO client.example"))[0] == 250
        with capture_logs() as logs:
            code, _ = await client.cmd("AUTH PLAIN " + base64.b64encode(b"\0app\0wrong").decode())
        assert code == 535
        assert refusals(sub, "AUTH", "535") == 1
        assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["auth_failed"]
        await client.close()


async def test_too_many_bad_commands_closes_the_session(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await logged_in(sub)
        with capture_logs() as logs:
            codes = [(await client.cmd(command))[0] for command in (b"XYZZY", b"MAIL", b"DATA", b"NOOP\x00", b"") * 2]
            assert codes == [500, 501, 503, 501, 500] * 2
            assert (await client.reply())[0] == 421  # after the tenth, as Postfix's smtpd_hard_error_limit
            assert (await client.reply())[0] == 0  # closed
        assert len([e for e in logs if e["event"] == "submission_refused"]) == 10
        assert [e["event"] for e in logs if e["event"] == "submission_too_many_errors"] == ["submission_too_many_errors"]
        await client.close()


async def test_refusals_aiosmtpd_makes_at_data_are_logged_and_counted(tmp_path):
    async with submission_listener(tmp_path, submission={"max_message_size": 4096}) as sub:
        client = await logged_in(sub)
        for payload, code in ((message(size=8000) + b".\r\n", 552), (b"From: app@example.com\r\n\r\n" + b"x" * 1500 + b"\r\n.\r\n", 500)):
            assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
            assert (await client.cmd("RCPT TO:<bob@example.org>"))[0] == 250
            with capture_logs() as logs:
                got, text = await client.data(payload)
            assert got == code and ENHANCED.match(text), text
            assert [(e["step"], e["code"]) for e in logs if e["event"] == "submission_refused"] == [("DATA", code)]
            assert refusals(sub, "DATA", str(code)) == 1
        await client.close()


# --------------------------------------------------------------------------- issue 7 item 12: bare LF


@pytest.mark.parametrize("line", [b"NOOP\n", b"MAIL FROM:<app@example.com>\n"])
async def test_command_ending_in_bare_lf_is_refused_before_dispatch(tmp_path, line):
    async with submission_listener(tmp_path) as sub:
        client = await logged_in(sub)
        client.writer.write(line)
        code, text = await client.reply()
        assert (code, text.split()[0]) == (500, "5.5.2"), text
        # Not dispatched: MAIL was not taken, so a proper MAIL now is not "nested".
        assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        await client.close()


# --------------------------------------------------------------------------- issue 7 item 13: SMTPUTF8, PIPELINING


async def test_ehlo_offers_smtputf8_pipelining_and_enhanced_status_codes(tmp_path):
    async with submission_listener(tmp_path) as sub:
        async with sub.client(login=None) as smtp:
            await smtp.ehlo()
            for ext in ("smtputf8", "pipelining", "enhancedstatuscodes", "8bitmime", "size"):
                assert smtp.supports_extension(ext), ext


async def test_utf8_recipient_with_smtputf8_is_queued_and_without_it_refused(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await logged_in(sub)
        assert (await client.cmd("MAIL FROM:<app@example.com>"))[0] == 250
        code, text = await client.cmd("RCPT TO:<jörg@example.org>")
        assert (code, text.split()[0]) == (553, "5.6.7"), text
        await client.cmd("RSET")
        assert (await client.cmd("MAIL FROM:<app@example.com> SMTPUTF8"))[0] == 250
        assert (await client.cmd("RCPT TO:<jörg@bücher.example>"))[0] == 250
        code, text = await client.data("From: App <app@example.com>\r\nTo: Jörg <jörg@bücher.example>\r\n"
                                       "Subject: Grüße\r\n\r\nHallo.\r\n.\r\n".encode())
        assert code == 250, text
        await client.close()
        shown = await sub.store.queue.show(sub.queued[0])
        assert [r["rcpt"] for r in shown["recipients"]] == ["jörg@bücher.example"]


async def test_pipelined_commands_are_answered_in_order(tmp_path):
    async with submission_listener(tmp_path) as sub:
        reader, writer = await asyncio.open_connection("127.0.0.1", sub.port("submissions"), ssl=client_tls_context())
        assert (await reader.readline()).startswith(b"220 ")
        blob = base64.b64encode(f"\0app\0{PASSWORD}".encode())
        # RFC 2920: everything up to DATA in one write, then the message and QUIT in another.
        writer.write(b"EHLO client.example\r\nAUTH PLAIN " + blob + b"\r\nMAIL FROM:<app@example.com>\r\n"
                     b"RCPT TO:<bob@example.org>\r\nRCPT TO:<bad@-x->\r\nRCPT TO:<carol@example.org>\r\nDATA\r\n")
        codes = []
        while len(codes) < 7:
            line = await reader.readline()
            if line[3:4] != b"-":
                codes.append(int(line[:3]))
        assert codes == [250, 235, 250, 250, 553, 250, 354]
        writer.write(message() + b".\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<dave@example.org>\r\nDATA\r\n")
        codes = [int((await reader.readline())[:3]) for _ in range(4)]
        assert codes == [250, 250, 250, 354]
        writer.write(message() + b".\r\nQUIT\r\n")
        assert [int((await reader.readline())[:3]) for _ in range(2)] == [250, 221]
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
        assert len(sub.queued) == 2
        first = await sub.store.queue.show(sub.queued[0])
        assert [r["rcpt"] for r in first["recipients"]] == ["bob@example.org", "carol@example.org"]


# --------------------------------------------------------------------------- issue 7 item 14: duplicate fields


@pytest.mark.parametrize("name", ["To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "Sender", "In-Reply-To", "References"])
async def test_duplicate_single_fields_are_refused_naming_the_field(tmp_path, name):
    async with submission_listener(tmp_path) as sub:
        async with sub.client() as smtp:
            import aiosmtplib

            value = {"Date": "Mon, 1 Jan 2024 00:00:00 +0000", "Subject": "again"}.get(name, "<x@example.org>")
            raw = b"From: App <app@example.com>\r\n" + f"{name}: {value}\r\n{name.lower()}: {value}\r\n".encode() + b"\r\nhi\r\n"
            with pytest.raises(aiosmtplib.SMTPDataError) as err:
                await smtp.sendmail("app@example.com", ["bob@example.org"], raw)
            assert (err.value.code, err.value.message.split()[0]) == (550, "5.6.0")
            assert name in err.value.message
        assert sub.queued == []


# --------------------------------------------------------------------------- issue 7 item 7: 250 after the commit


async def test_bookkeeping_failure_after_the_commit_still_answers_250(tmp_path):
    async with submission_listener(tmp_path) as sub:
        def broken(queue_id: str) -> None:
            sub.queued.append(queue_id)
            raise RuntimeError("callback broke")

        class BrokenHistogram:
            def observe(self, value: float) -> None:
                raise RuntimeError("metrics broke")

        sub.server.handler.submitter.on_queued = broken
        sub.server.handler.metrics.message_size = BrokenHistogram()
        async with sub.client() as smtp:
            with capture_logs() as logs:
                _, reply = await smtp.sendmail("app@example.com", ["bob@example.org"], message())
        assert reply.startswith("2.0.0 Ok: queued as ")
        assert len(sub.queued) == 1
        assert len(await sub.store.queue.list()) == 1
        failed = [e for e in logs if e["log_level"] == "error"]
        assert {(e["event"], e["part"]) for e in failed} == {("submission_after_commit_failed", "notify"),
                                                             ("submission_after_commit_failed", "metrics")}


# --------------------------------------------------------------------------- client parameters: ASCII digits only


@pytest.mark.parametrize("size", ["\u00b2", "1\u2460", "\u0661\u0662", "\uff11"])
async def test_a_size_that_is_not_ascii_digits_is_a_syntax_error(tmp_path, size):
    """'²'.isdigit() is True but int('²') raises; '١٢' (Arabic-Indic) int()s to 12: neither is a number on the wire."""
    async with submission_listener(tmp_path) as sub:
        client = await logged_in(sub)
        with capture_logs() as logs:
            code, text = await client.cmd(f"MAIL FROM:<app@example.com> SIZE={size}")
        assert (code, text[:5]) == (501, "5.5.4"), text
        assert internal_errors(logs) == []
        assert (await client.cmd("MAIL FROM:<app@example.com> SIZE=100"))[0] == 250
        await client.close()


def test_size_param_counts_only_ascii_digits():
    from gateway.submission.policy import size_param as _size_param

    assert _size_param(["SIZE=100"]) == 100
    for value in ("\u00b2", "1\u2460", "\u0661\u0662", "\uff11", "", "-1", "+1", " 1"):
        assert _size_param([f"SIZE={value}"]) is None, value


# --------------------------------------------------------------------------- AUTH conformance


async def test_auth_mechanism_names_are_case_insensitive(tmp_path):
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        assert (await client.cmd("EHLO client.example"))[0] == 250
        blob = base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode()
        assert (await client.cmd(f"AUTH plain {blob}"))[0] == 235  # RFC 4954 4: mechanism names are case-insensitive
        await client.close()


async def test_plain_with_another_authzid_is_refused_535_and_counted_as_a_failure(tmp_path):
    async with submission_listener(tmp_path, submission={"auth_failures_limit": 2}) as sub:
        client = await RawClient.connect(sub.port("submissions"))
        assert (await client.cmd("EHLO client.example"))[0] == 250
        proxy = base64.b64encode(f"someone-else\0app\0{PASSWORD}".encode()).decode()
        with capture_logs() as logs:
            assert await client.cmd(f"AUTH PLAIN {proxy}") == (535, "5.7.8 Authentication credentials invalid")
            assert (await client.cmd(f"AUTH PLAIN {proxy}"))[0] == 535
            # Two failures: the login is cooling down, even with the right credentials.
            right = base64.b64encode(f"\0app\0{PASSWORD}".encode()).decode()
            assert (await client.cmd(f"AUTH PLAIN {right}"))[0] == 454
        assert [e["event"] for e in logs if e["log_level"] != "debug"] == ["auth_failed", "auth_failed", "auth_refused_cooldown"]
        assert sub.auth.calls == 0  # a proxy login is never a password check
        await client.close()


# --------------------------------------------------------------------------- debug logs hold no credentials


async def test_credentials_pipelined_behind_a_refused_auth_are_not_logged(tmp_path):
    """538 (no TLS yet) and 504 (unknown mechanism) leave the client's pipelined answers to be read as
    commands: at debug level none of them is logged as it was sent, in any of its encodings."""
    secret_user, secret_password = "app-user-7q", "pw-Zx81-secret"
    blobs = [base64.b64encode(secret_user.encode()), base64.b64encode(secret_password.encode()),
             base64.b64encode(f"\0{secret_user}\0{secret_password}".encode()),
             base64.b64encode(b"\x00\xa8\xe8"),  # three bytes of a secret whose base64 ("AKjo") looks like a verb
             base64.b64encode(b"@\x03\x02")]  # ... or is one ("QAMC")? Either way: masked
    async with submission_listener(tmp_path) as sub:
        client = await RawClient.connect(sub.port("submission"), implicit=False)
        assert (await client.cmd("EHLO client.example"))[0] == 250
        with capture_logs() as logs:
            client.writer.write(b"AUTH LOGIN\r\n" + b"\r\n".join(blobs[:2]) + b"\r\nAUTH PLAIN\r\n" + blobs[2] + b"\r\n"
                                + b"AUTH X-UNKNOWN\r\n" + b"\r\n".join(blobs[3:]) + b"\r\n" + blobs[1] + b"\r\nEHLO client.example\r\nNOOP\r\n")
            codes = [(await client.reply())[0] for _ in range(11)]
        assert codes == [538, 500, 500, 538, 500, 538, 500, 500, 500, 250, 250]
        commands = [e for e in logs if e["event"] == "submission_command"]
        assert len(commands) == 11
        text = repr(logs)
        for secret in [secret_user, secret_password, *(b.decode() for b in blobs)]:
            assert secret not in text
        assert [e["line"] for e in commands][-2:] == ["EHLO client.example", "NOOP"]
        await client.close()
