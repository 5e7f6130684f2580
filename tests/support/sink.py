"""A recording remote MX on 127.0.0.1 (aiosmtpd, on the test's own loop) that can be scripted.

    async with mail_sink() as sink:                     # sink.port
        sink.script("bob@example.org", "450 4.2.0 mailbox busy", "250 OK")   # 1st RCPT 450, then 250
        sink.script("eve@example.org", "550 5.1.1 no such user")            # always 550
        sink.drop_in_data = 1                           # next DATA: read it, then drop the connection
        go = sink.stall("carol@example.org")            # RCPT TO for carol waits until go.set()
        sink.gate = asyncio.Event()                      # RCPT waits (a remote gone quiet) until set
        ...
        await sink.wait_for(3)                           # until 3 messages were accepted (or TimeoutError)
        sink.messages[0].data, .mail_from, .rcpt_tos, .connection, .tls

Options: ``starttls=True`` offers STARTTLS with a self-signed certificate; ``implicit_tls=True`` wraps
the listener in TLS; ``users={"name": "password"}`` enables AUTH PLAIN/LOGIN (after TLS only);
``pipelining=True`` advertises PIPELINING (RFC 2920). A user may have several passwords
(``users={"apikey": ("pw-a", "pw-b")}``, one smarthost account name shared by many tenants, as
SendGrid's ``apikey``); each message records the login and the password its session authenticated with.
``stall_auth="username" | "password" | "plain"`` answers nothing once that AUTH step arrived (LOGIN
after the username or after the password, PLAIN after its blob) until the client gives up.
``smtputf8=True`` offers SMTPUTF8 (RFC 6531), and a message's ``smtputf8`` says whether its MAIL FROM
carried the parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    connection: int      # which TCP connection carried it (1, 2, ...)
    tls: bool
    auth_user: str | None = None
    auth_password: str | None = None   # which of the user's passwords the session authenticated with
    smtputf8: bool = False


def self_signed_context(directory: Path, name: str = "sink.test") -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx


class Sink:
    def __init__(self, users: dict[str, str | tuple[str, ...]] | None = None, pipelining: bool = False):
        self.pipelining = pipelining  # advertise RFC 2920 PIPELINING (aiosmtpd reads commands in order anyway)
        self.messages: list[Received] = []
        self.connections = 0
        self.dropped = 0             # DATA transactions we dropped on purpose
        self.drop_in_data = 0        # how many upcoming DATA transactions to drop
        self.gate: asyncio.Event | None = None  # when set to an Event, each RCPT waits until it is set
        self.waiting = 0             # RCPTs waiting at the gate now
        self.waiting_hosts: Counter[str] = Counter()  # the same, by the client's EHLO name
        self.users = users or {}
        self.auth_attempts: list[tuple[str, bool]] = []
        self.stalled = 0             # AUTH steps left unanswered (stall_auth)
        self.port = 0
        self._scripts: dict[str, list[str]] = {}
        self._stalls: dict[str, asyncio.Event] = {}
        self.stalled = 0             # RCPT TO commands waiting on a stall right now
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ scripting

    def script(self, rcpt: str, *replies: str) -> None:
        """Replies to RCPT TO for this address, one per attempt; the last one repeats."""
        self._scripts[rcpt.lower()] = list(replies)

    def stall(self, rcpt: str) -> asyncio.Event:
        """RCPT TO for this address gets no answer until the returned event is set (a remote that hangs)."""
        event = self._stalls[rcpt.lower()] = asyncio.Event()
        return event

    def _rcpt_reply(self, rcpt: str) -> str:
        replies = self._scripts.get(rcpt.lower())
        if not replies:
            return "250 2.1.5 OK"
        return replies.pop(0) if len(replies) > 1 else replies[0]

    # ------------------------------------------------------------------ waiting

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Wait until at least ``count`` messages were accepted."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.messages) >= count)
        return self.messages

    async def wait_until(self, predicate, timeout: float = 15.0) -> None:
        """Wait until ``predicate(sink)`` is true (checked after each message or drop)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def for_rcpt(self, rcpt: str) -> list[Received]:
        return [m for m in self.messages if rcpt in m.rcpt_tos]

    # ------------------------------------------------------------------ aiosmtpd hooks

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        stall = self._stalls.get(address.lower())
        if stall is not None and not stall.is_set():
            self.stalled += 1
            await self._notify()
            try:
                await stall.wait()
            finally:
                self.stalled -= 1
        gate = self.gate
        if gate is not None and not gate.is_set():
            self.waiting += 1
            host = getattr(session, "host_name", None) or ""
            self.waiting_hosts[host] += 1
            await self._notify()
            try:
                await gate.wait()  # cancelled with the session if the client goes away meanwhile
            finally:
                self.waiting -= 1
                self.waiting_hosts[host] -= 1
        reply = self._rcpt_reply(address)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if self.drop_in_data > 0:
            self.drop_in_data -= 1
            self.dropped += 1
            server.transport.abort()
            await self._notify()
            return "250 OK (never seen: the connection is gone)"
        self.messages.append(Received(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos), data=envelope.content,
            connection=session.connection_number, tls=session.tls,
            auth_user=session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
            auth_password=session.auth_data.password.decode() if isinstance(session.auth_data, LoginPassword) else None,
            smtputf8=envelope.smtp_utf8,
        ))
        await self._notify()
        return "250 2.0.0 OK queued"

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        allowed = self.users.get(user, ())
        ok = password in ((allowed,) if isinstance(allowed, str) else allowed)
        self.auth_attempts.append((user, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class StallingSink(Sink):
    """A smarthost that stops answering in the middle of AUTH (``stall_at``), as a wedged server does."""

    def __init__(self, users, pipelining: bool, stall_at: str):
        super().__init__(users, pipelining)
        self.stall_at = stall_at

    async def _stall(self) -> None:
        self.stalled += 1
        await self._notify()
        await asyncio.Event().wait()  # aiosmtpd cancels this when the client hangs up

    async def auth_LOGIN(self, server, args):  # noqa: N802 - aiosmtpd's naming
        if len(args) == 1:
            await server.challenge_auth("Username:")
        if self.stall_at == "username":
            await self._stall()
        await server.challenge_auth("Password:")
        await self._stall()

    async def auth_PLAIN(self, server, args):  # noqa: N802
        if len(args) == 1:
            await server.challenge_auth("")
        await self._stall()


class _Session(SMTP):
    """aiosmtpd's SMTP that numbers its connection for the sink."""

    def __init__(self, sink: Sink, **kwargs):
        super().__init__(sink, **kwargs)
        self._sink = sink

    def connection_made(self, transport):
        super().connection_made(transport)  # called again after STARTTLS, with a fresh session
        if not hasattr(self, "_number"):
            self._sink.connections += 1
            self._number = self._sink.connections
        self.session.connection_number = self._number
        self.session.tls = transport.get_extra_info("sslcontext") is not None or self.session.ssl is not None


@contextlib.asynccontextmanager
async def mail_sink(*, starttls: bool = False, implicit_tls: bool = False,
                    users: dict[str, str | tuple[str, ...]] | None = None, host: str = "127.0.0.1",
                    pipelining: bool = False, stall_auth: str | None = None, smtputf8: bool = False) -> AsyncIterator[Sink]:
    sink = StallingSink(users, pipelining, stall_auth) if stall_auth else Sink(users, pipelining)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = self_signed_context(Path(tmp)) if (starttls or implicit_tls or users) else None
        kwargs: dict = {"hostname": "sink.test", "ident": "sink", "data_size_limit": 50 * 1024 * 1024,
                        "enable_SMTPUTF8": smtputf8}
        if ctx is not None and not implicit_tls:
            kwargs["tls_context"] = ctx
        if users:
            kwargs.update(authenticator=sink._authenticate, auth_require_tls=True)
        if stall_auth:  # offer only the mechanism that stalls (a client prefers PLAIN when offered)
            kwargs["auth_exclude_mechanism"] = ["LOGIN"] if stall_auth == "plain" else ["PLAIN"]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Session(sink, loop=loop, **kwargs), host, 0,
                                          ssl=ctx if implicit_tls else None)
        sink.port = server.sockets[0].getsockname()[1]
        try:
            yield sink
        finally:
            server.close()
            await server.wait_closed()


__all__ = ["mail_sink", "Sink", "StallingSink", "Received", "self_signed_context"]
