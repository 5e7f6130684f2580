"""STARTTLS on uvloop (the daemon's loop): the listener upgrades through ``loop.start_tls`` there
instead of aiosmtpd's asyncio SSLProtocol, so this path gets its own checks on a uvloop loop."""

from __future__ import annotations

import asyncio

import aiosmtplib
import uvloop
from structlog.testing import capture_logs

from gateway.submission import client_tls_context
from tests.support.submission import message, submission_listener


def test_starttls_auth_and_submit_on_uvloop(tmp_path):
    async def scenario() -> None:
        async with submission_listener(tmp_path) as sub:
            async with sub.client() as smtp:
                assert smtp.get_transport_info("ssl_object") is not None
                # A second STARTTLS inside TLS is refused; the session goes on.
                code, _ = await smtp.execute_command(b"STARTTLS")
                assert code == 503
                for i in range(3):
                    errors, reply = await smtp.sendmail("app@example.com", [f"bob{i}@example.org"], message())
                    assert errors == {} and "queued as" in reply
            assert len(sub.queued) == 3
            # AUTH before STARTTLS is still refused (538) on this path.
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=sub.port(), start_tls=False, timeout=10)
            await smtp.connect()
            await smtp.ehlo()
            code, _ = await smtp.execute_command(b"AUTH", b"PLAIN", b"AGFwcABwdw==")
            assert code == 538
            await smtp.quit()

    uvloop.run(scenario())


def test_failed_handshake_closes_only_that_connection_on_uvloop(tmp_path):
    async def scenario() -> None:
        async with submission_listener(tmp_path) as sub:
            reader, writer = await asyncio.open_connection("127.0.0.1", sub.port())
            assert (await reader.readline()).startswith(b"220")
            writer.write(b"EHLO client.test\r\n")
            while not (line := await reader.readline()).startswith(b"250 "):
                assert line.startswith(b"250-")
            writer.write(b"STARTTLS\r\n")
            assert (await reader.readline()).startswith(b"220")
            with capture_logs() as logs:
                writer.write(b"this is not a TLS ClientHello\r\n" * 4)
                assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed it
            writer.close()
            # The client's fault: one info line naming it, nothing at error level.
            assert [e for e in logs if e["log_level"] == "error"] == []
            [failed] = [e for e in logs if e["event"] == "submission_tls_failed"]
            assert failed["log_level"] == "info" and failed["client"] == "127.0.0.1"
            # The listener still serves the next client.
            async with sub.client() as smtp:
                errors, _ = await smtp.sendmail("app@example.com", ["bob@example.org"], message())
                assert errors == {}

    uvloop.run(scenario())


def test_tls_reads_through_the_connection_buffer_on_uvloop(tmp_path):
    """After STARTTLS uvloop reads into the connection's TlsReader buffer (32 KiB): a message many
    times that size, and one command at a time, arrive whole and in order; a client that hangs up
    ends its session (the transport's connection_lost reaches the SMTP protocol)."""
    async def scenario() -> None:
        async with submission_listener(tmp_path) as sub:
            big = message(size=300_000)
            async with sub.client() as smtp:
                assert smtp.get_transport_info("ssl_object") is not None
                for payload in (big, message(subject="second")):
                    errors, reply = await smtp.sendmail("app@example.com", ["bob@example.org"], payload)
                    assert errors == {} and "queued as" in reply
            assert len(sub.queued) == 2
            body = await sub.store.db.read(lambda c: c.execute("SELECT body FROM messages WHERE queue_id = ?",
                                                               (sub.queued[0],)).fetchone()[0])
            assert bytes(body).endswith(big.split(b"\r\n\r\n", 1)[1])
            assert bytes(body).count(b"x" * 76 + b"\r\n") == big.count(b"x" * 76 + b"\r\n")
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=sub.port(), start_tls=False, timeout=10)
            await smtp.connect()
            await smtp.starttls(tls_context=client_tls_context())
            assert len(sub.server.sessions) == 1
            smtp.close()                     # gone without QUIT
            await asyncio.wait_for(sub.server.wait_idle(), 10)
            assert not sub.server.sessions

    uvloop.run(scenario())


def test_implicit_tls_reads_through_the_connection_buffer_on_uvloop(tmp_path):
    """The implicit-TLS listener's connections read through a TlsReader too: AUTH, a message many
    buffers long and the next one arrive whole."""
    async def scenario() -> None:
        async with submission_listener(tmp_path) as sub:
            big = message(size=200_000)
            async with sub.client(implicit=True) as smtp:
                assert smtp.get_transport_info("ssl_object") is not None
                for payload in (big, message(subject="second")):
                    errors, reply = await smtp.sendmail("app@example.com", ["bob@example.org"], payload)
                    assert errors == {} and "queued as" in reply
            body = await sub.store.db.read(lambda c: c.execute("SELECT body FROM messages WHERE queue_id = ?",
                                                               (sub.queued[0],)).fetchone()[0])
            assert bytes(body).endswith(big.split(b"\r\n\r\n", 1)[1]) and len(sub.queued) == 2

    uvloop.run(scenario())
