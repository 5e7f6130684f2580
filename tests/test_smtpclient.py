"""The delivery SMTP client (gateway/delivery/smtpclient.py) and the courier session on top of it:
against the aiosmtpd sink with PIPELINING on and off, and against scripted raw servers for what a
well-behaved server never does (multi-line replies in odd shapes, drops mid-DATA, garbage)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gateway.delivery.courier import Envelope, SessionOptions, SmtpSession
from gateway.delivery.reply import describe_failure
from gateway.delivery.smtpclient import (SMTPDisconnected, SMTPProtocolError, SMTPTimeout, SmtpClient, Transaction,
                                         format_data)
from tests.support.sink import mail_sink

OPTS = SessionOptions(helo="gw.test", connect_timeout=5, command_timeout=5, tls="opportunistic")


async def session_to(port: int, options: SessionOptions = OPTS) -> SmtpSession:
    s = SmtpSession("127.0.0.1", port, "mx.dest.test", options)
    await s.open()
    return s


# --------------------------------------------------------------------------- data formatting


@pytest.mark.parametrize("raw, wire", [
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b".lead\r\n..two\r\nmid.dle\r\n.\r\n", b"..lead\r\n...two\r\nmid.dle\r\n..\r\n.\r\n"),
    (b"bare\nlf\n.dot", b"bare\r\nlf\r\n..dot\r\n.\r\n"),
    (b"bare\rcr\r\n", b"bare\r\ncr\r\n.\r\n"),
    (b"no newline at end", b"no newline at end\r\n.\r\n"),
    (b"", b".\r\n"),
])
def test_format_data_normalises_line_endings_and_dot_stuffs(raw, wire):
    assert format_data(raw) == wire


# --------------------------------------------------------------------------- against aiosmtpd


@pytest.mark.parametrize("pipelining", [False, True])
async def test_transactions_over_one_connection_with_and_without_pipelining(pipelining):
    async with mail_sink(starttls=True, pipelining=pipelining) as sink:
        sink.script("eve@dest.test", "550 5.1.1 no such user")
        sink.script("tmp@dest.test", "451 4.2.0 mailbox busy")
        s = await session_to(sink.port)
        try:
            assert s.tls and s._smtp.supports("pipelining") is pipelining
            got = await s.send(Envelope("a@src.test", ("bob@dest.test", "eve@dest.test", "tmp@dest.test")),
                               b"Subject: hi\r\n\r\n.starts with a dot\r\nline\r\n")
            assert got["bob@dest.test"].code == 250
            assert (got["eve@dest.test"].code, got["eve@dest.test"].enhanced) == (550, "5.1.1")
            assert got["tmp@dest.test"].outcome == "deferred"
            # every recipient refused: no message, the session is RSET and reused
            got = await s.send(Envelope("a@src.test", ("eve@dest.test",)), b"Subject: no\r\n\r\nx\r\n")
            assert got["eve@dest.test"].code == 550 and s.alive
            got = await s.send(Envelope("b@src.test", ("carol@dest.test",)), b"Subject: two\r\n\r\nbody\n")
            assert got["carol@dest.test"].code == 250
            assert s.sent == 2
        finally:
            await s.close()
        assert [m.rcpt_tos for m in sink.messages] == [["bob@dest.test"], ["carol@dest.test"]]
        assert {m.connection for m in sink.messages} == {1}
        assert sink.messages[0].data.endswith(b".starts with a dot\r\nline\r\n")  # unstuffed by the server: intact
        assert sink.messages[1].mail_from == "b@src.test" and all(m.tls for m in sink.messages)


async def test_implicit_tls_session_reads_through_its_buffer():
    """Implicit TLS: the connection's protocol is a TlsReader in front of the client's own (tlsreader.py);
    the greeting, a multi-line EHLO and every reply reach the client, two messages go over one session."""
    body = b"".join(b"line %05d " % i + b"y" * 60 + b"\r\n" for i in range(1000))   # 72 KB: several reads of the sink
    async with mail_sink(implicit_tls=True) as sink:
        s = await session_to(sink.port, SessionOptions(helo="gw.test", connect_timeout=5, command_timeout=5, tls="implicit"))
        try:
            assert s.tls and s._smtp.ssl_object() is not None and s._smtp.supports("size")
            for rcpt in ("bob@dest.test", "carol@dest.test"):
                got = await s.send(Envelope("a@src.test", (rcpt,)), b"Subject: hi\r\n\r\n" + body)
                assert got[rcpt].code == 250
        finally:
            await s.close()
        assert [m.rcpt_tos for m in sink.messages] == [["bob@dest.test"], ["carol@dest.test"]]
        assert all(m.tls and m.data.endswith(body) for m in sink.messages)


@pytest.mark.parametrize("pipelining", [False, True])
async def test_421_from_rcpt_defers_and_breaks_the_session(pipelining):
    async with mail_sink(pipelining=pipelining) as sink:
        sink.script("bob@dest.test", "421 4.7.0 too many, later")
        s = await session_to(sink.port, SessionOptions(helo="gw.test", connect_timeout=5, command_timeout=5, tls="off"))
        got = await s.send(Envelope("a@src.test", ("bob@dest.test", "carol@dest.test")), b"x\r\n")
        assert {r: g.code for r, g in got.items()} == {"bob@dest.test": 421, "carol@dest.test": 421}
        assert all(g.outcome == "deferred" for g in got.values()) and not s.alive
        await s.close()
        assert sink.messages == []


@pytest.mark.parametrize("pipelining", [False, True])
async def test_server_dropping_in_data_defers_every_recipient_not_yet_answered(pipelining):
    async with mail_sink(pipelining=pipelining) as sink:
        sink.script("eve@dest.test", "550 5.1.1 no such user")
        sink.drop_in_data = 1
        s = await session_to(sink.port)
        got = await s.send(Envelope("a@src.test", ("bob@dest.test", "eve@dest.test")), b"Subject: x\r\n\r\nbody\r\n")
        assert got["eve@dest.test"].code == 550  # answered before the drop: stays answered
        assert got["bob@dest.test"].code == 451 and "lost during DATA" in got["bob@dest.test"].text
        assert "connection closed by the remote server" in got["bob@dest.test"].text
        assert not s.alive and sink.dropped == 1
        await s.close()


async def test_unsafe_address_is_refused_before_anything_is_sent():
    async with mail_sink(pipelining=True) as sink:
        s = await session_to(sink.port)
        try:
            for env in (Envelope("a@src.test\r\nRCPT TO:<x@evil.test>", ("bob@dest.test",)),
                        Envelope("a@src.test", ("bob@dest.test\nDATA",)), Envelope("a@src.test", ("b\0b@dest.test",))):
                with pytest.raises(ValueError):
                    await s.send(env, b"x\r\n")
            with pytest.raises(ValueError):
                s._smtp.command("NOOP", "RCPT TO:<a@b>\r\nDATA")
            assert s.alive  # nothing reached the wire: the session is still in step
            got = await s.send(Envelope("a@src.test", ("bob@dest.test",)), b"x\r\n")
            assert got["bob@dest.test"].code == 250
        finally:
            await s.close()
        assert [m.rcpt_tos for m in sink.messages] == [["bob@dest.test"]]


async def test_auth_plain_after_starttls_and_refused_credentials():
    async with mail_sink(starttls=True, users={"relay": "s3cret"}) as sink:
        opts = SessionOptions(helo="gw.test", connect_timeout=5, command_timeout=5, tls="starttls", username="relay",
                              password="s3cret")
        s = await session_to(sink.port, opts)
        assert [st["step"] for st in s.steps] == ["connect", "ehlo", "starttls", "auth"] and all(st["ok"] for st in s.steps)
        await s.close()
        bad = SmtpSession("127.0.0.1", sink.port, "127.0.0.1", SessionOptions(**{**opts.__dict__, "password": "wrong"}))
        with pytest.raises(Exception) as err:
            await bad.open()
        assert "auth failed: 535" in str(err.value) and bad.steps[-1] == {"step": "auth", "ok": False,
                                                                          "detail": bad.steps[-1]["detail"]}
        assert sink.auth_attempts == [("relay", True), ("relay", False)]


# --------------------------------------------------------------------------- scripted raw servers


@contextlib.asynccontextmanager
async def raw_server(handler):
    """A TCP server on 127.0.0.1 that runs ``handler(reader, writer, log)``; ``log`` collects raw reads."""
    log: list[bytes] = []

    async def serve(reader, writer):
        try:
            await handler(reader, writer, log)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], log
    finally:
        server.close()
        await server.wait_closed()


async def test_pipelined_commands_go_in_one_write_and_multiline_replies_are_joined():
    async def handler(reader, writer, log):
        writer.write(b"220-raw.test ESMTP\r\n220 second greeting line\r\n")
        await reader.readline()
        writer.write(b"250-raw.test\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n")
        await writer.drain()
        chunk = await reader.readuntil(b"DATA\r\n")  # MAIL, RCPTs and DATA together
        log.append(chunk)
        writer.write(b"250 2.1.0 ok\r\n550-5.1.1 first line\r\n550 5.1.1 second line\r\n250 2.1.5 ok\r\n354 go\r\n")
        log.append(await reader.readuntil(b"\r\n.\r\n"))
        writer.write(b"250-2.0.0 queued\r\n250 2.0.0 as 123\r\n")
        log.append(await reader.readline())
        writer.write(b"221 bye\r\n")

    async with raw_server(handler) as (port, log):
        c = SmtpClient(local_hostname="gw.test", timeout=5)
        greeting = await c.connect("127.0.0.1", port, timeout=5)
        assert greeting.code == 220 and greeting.message == "raw.test ESMTP\nsecond greeting line"
        await c.ehlo()
        assert c.supports("PIPELINING") and c.max_size == 1000000 and not c.supports("starttls")
        tx = await c.send_mail(Transaction(), "a@src.test", ["x@dest.test", "y@dest.test"], b"..x\r\n", options=["SIZE=5"])
        await c.quit()
    assert log[0] == b"MAIL FROM:<a@src.test> SIZE=5\r\nRCPT TO:<x@dest.test>\r\nRCPT TO:<y@dest.test>\r\nDATA\r\n"
    assert log[1] == b"...x\r\n.\r\n" and log[2] == b"QUIT\r\n"
    assert tx.rcpts["x@dest.test"].message == "5.1.1 first line\n5.1.1 second line"
    assert tx.accepted == ["y@dest.test"] and tx.final.code == 250 and tx.final.message == "2.0.0 queued\n2.0.0 as 123"


async def test_354_after_every_recipient_was_refused_ends_with_an_empty_message():
    async def handler(reader, writer, log):
        writer.write(b"220 raw.test\r\n")
        await reader.readline()
        writer.write(b"250-raw.test\r\n250 PIPELINING\r\n")
        await reader.readuntil(b"DATA\r\n")
        writer.write(b"250 ok\r\n550 no\r\n354 go anyway\r\n")
        log.append(await reader.readline())
        writer.write(b"554 no valid recipients\r\n")
        log.append(await reader.readline())
        writer.write(b"250 reset\r\n")
        await reader.read()

    async with raw_server(handler) as (port, log):
        s = await session_to(port)
        got = await s.send(Envelope("a@src.test", ("x@dest.test",)), b"secret body\r\n")
        assert got["x@dest.test"].code == 550 and s.alive
        await s.close()
    assert log == [b".\r\n", b"RSET\r\n"]  # the message itself never went out


async def test_drop_in_the_middle_of_the_message_and_a_silent_server():
    async def dropper(reader, writer, log):
        writer.write(b"220 raw.test\r\n")
        await reader.readline()
        writer.write(b"250 raw.test\r\n")
        for _ in range(3):
            await reader.readline()
            writer.write(b"354 go\r\n" if _ == 2 else b"250 ok\r\n")
        await reader.read(10)  # part of the message, then gone
        writer.transport.abort()

    async with raw_server(dropper) as (port, _):
        s = await session_to(port)
        got = await s.send(Envelope("a@src.test", ("x@dest.test",)), b"y" * 500_000 + b"\r\n")
        assert got["x@dest.test"].code == 451 and "lost during DATA" in got["x@dest.test"].text and not s.alive

    async def silent(reader, writer, log):
        writer.write(b"220 raw.test\r\n")
        await reader.readline()
        await reader.read()

    async with raw_server(silent) as (port, _):
        c = SmtpClient(local_hostname="gw.test", timeout=0.2)
        await c.connect("127.0.0.1", port, timeout=5)
        with pytest.raises(SMTPTimeout) as err:
            await c.ehlo()
        assert describe_failure(err.value) == "timed out" and not c.connected


async def test_garbled_reply_breaks_the_connection():
    async def handler(reader, writer, log):
        writer.write(b"220 raw.test\r\n")
        await reader.readline()
        writer.write(b"hello there\r\n")
        await reader.read()

    async with raw_server(handler) as (port, _):
        c = SmtpClient(local_hostname="gw.test", timeout=5)
        await c.connect("127.0.0.1", port, timeout=5)
        with pytest.raises(SMTPProtocolError):
            await c.ehlo()
        assert not c.connected
        with pytest.raises((SMTPProtocolError, SMTPDisconnected)):
            await c.rset()


async def test_an_unsolicited_reply_takes_an_idle_connection_out_of_the_pool():
    async def handler(reader, writer, log):
        writer.write(b"220 raw.test\r\n")
        await reader.readline()
        writer.write(b"250 raw.test\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"421 4.4.2 idle too long\r\n")  # and the connection stays open
        await reader.read()

    async with raw_server(handler) as (port, _):
        s = await session_to(port)
        assert s.alive
        async with asyncio.timeout(10):  # until the 421 has arrived (a fixed 0.3 s is too short on a loaded machine)
            while s.alive:
                await asyncio.sleep(0.01)
        assert not s.alive  # the pool will not hand it out: the 421 would answer our next MAIL FROM
        await s.close()


@pytest.mark.parametrize("size", ["\u00b2", "\u0661\u0662"])
async def test_a_remote_size_that_is_not_ascii_digits_is_no_limit(size):
    """'²'.isdigit() is True but int('²') raises; '١٢' int()s to 12: a remote's SIZE is ASCII digits or nothing."""
    async def handler(reader, writer, log):
        writer.write(b"220 raw.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-raw.test\r\n250 SIZE " + size.encode() + b"\r\n")
        await writer.drain()
        await reader.readline()
        writer.write(b"221 bye\r\n")

    async with raw_server(handler) as (port, _):
        c = SmtpClient(local_hostname="gw.test", timeout=5)
        await c.connect("127.0.0.1", port, timeout=5)
        await c.ehlo()
        assert c.max_size == 0
        await c.quit()
