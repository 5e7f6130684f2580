"""The submission listeners: aiosmtpd protocols served on the daemon's own loop.

Two listening sockets share one handler and one TLS context: ``submission`` speaks plain SMTP and
offers STARTTLS (AUTH only once TLS is up), ``submissions`` is TLS from the first byte (RFC 8314).
Each connection is an aiosmtpd ``SMTP`` protocol created by ``loop.create_server`` (not aiosmtpd's
threaded Controller), extended here with what aiosmtpd leaves to us: connection limits, a session
time limit, CR/LF/NUL refusal in command arguments, enhanced status codes on aiosmtpd's own size
replies, DATA read under the in-flight memory budget (data.py), and a graceful stop that lets a
message being committed get its 250.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from typing import Any

import structlog
from aiosmtpd.smtp import MISSING, SMTP, Session, TLSSetupException

from ..budget import ByteBudget
from ..config import Config, SubmissionConfig, split_hostport
from ..errors import SMTPError, StartupError
from ..lifecycle import Component, Listener, format_address
from ..metrics import Metrics
from . import data, policy
from .handler import SubmissionHandler
from .handler import _size_param as size_param  # noqa: PLC2701 - the one SIZE= parser
from .ratelimit import ConnectionCounter
from .tls import TlsContext

log = structlog.get_logger("submission")

# aiosmtpd's own replies that lack an enhanced status code (RFC 3463), as clients should see them.
_REWRITES = {
    b"552 Error: message size exceeds fixed maximum message size": b"552 5.3.4 Message size exceeds fixed maximum message size",
    b"552 Error: Too much mail data": b"552 5.3.4 Message size exceeds fixed maximum message size",
    b"500 Line too long (see RFC5321 4.5.3.1.6)": b"500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)",
    b"500 Command line too long": b"500 5.5.2 Command line too long",
}
SHUTDOWN_REPLY = b"421 4.3.2 Service shutting down, try again later"


class _Session(Session):
    """aiosmtpd's Session logs a deprecation warning whenever login_data is set; we keep it quiet."""

    login_data = None  # plain attribute instead of the warning property


def _is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return type(loop).__module__.startswith("uvloop")


class _TlsUp:
    """Stands where aiosmtpd keeps its SSLProtocol once STARTTLS is done: it only reads ``_extra``."""

    def __init__(self, transport: asyncio.BaseTransport):
        self._extra = {key: transport.get_extra_info(key) for key in
                       ("sslcontext", "ssl_object", "peercert", "cipher", "compression", "peername", "sockname")}


class SubmissionSMTP(SMTP):
    """One client connection."""

    def __init__(self, handler: SubmissionHandler, *, owner: "SubmissionServer", implicit_tls: bool, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.owner = owner
        self.implicit_tls = implicit_tls
        self.busy = False
        self.closing = False
        if implicit_tls:
            # The whole connection is TLS: AUTH is allowed at once (aiosmtpd only knows STARTTLS).
            self._auth_require_tls = False

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def tls_description(self) -> str | None:
        transport = self.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if sslobj is None:
            return None
        cipher = sslobj.cipher()
        return f"version={sslobj.version()} cipher={cipher[0] if cipher else '?'}"

    async def _handle_client(self) -> None:
        ip = str(self.session.peer[0]) if isinstance(self.session.peer, tuple) else str(self.session.peer)
        refused = self.owner.counter.admit(ip)
        if refused:
            log.warning("submission_connection_refused", client=ip, limit=refused)
            self.owner.metrics.submission_refusals.labels(step="CONNECT", code="421").inc()
            await self.push("421 4.7.0 Too many connections, try again later")
            self.transport.close()
            return
        self.owner.sessions.add(self)
        self.owner.metrics.submission_connections.inc()
        timer = self.loop.call_later(self.owner.config.session_timeout, self._session_expired)
        try:
            await super()._handle_client()
        finally:
            timer.cancel()
            self.owner.counter.release(ip)
            self.owner.metrics.submission_connections.dec()
            self.owner.session_ended(self)

    def _session_expired(self) -> None:
        log.info("submission_session_expired", client=self.session.peer, limit=self.owner.config.session_timeout)
        if self.transport is not None:
            self.transport.write(b"421 4.4.2 Session time limit reached\r\n")
            self.transport.close()

    def shutdown(self) -> None:
        """Daemon stopping: idle sessions are told 421 and closed now; a busy one after its reply."""
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.write(SHUTDOWN_REPLY + b"\r\n")
            self.transport.close()

    async def push(self, status: Any) -> None:
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        await super().push(_REWRITES.get(status, status))
        if self.closing and not self.busy and self.transport is not None:
            self.transport.write(SHUTDOWN_REPLY + b"\r\n")
            self.transport.close()

    async def _checked(self, step: str, arg: str | None) -> bool:
        try:
            policy.check_command_argument(arg)
        except SMTPError as err:
            await self.push(self.event_handler._refuse(self, step, err))  # noqa: SLF001 - our own handler
            return False
        return True

    async def smtp_HELO(self, hostname: str) -> None:  # noqa: N802 - aiosmtpd's naming
        if await self._checked("HELO", hostname):
            await super().smtp_HELO(hostname)

    async def smtp_EHLO(self, hostname: str) -> None:  # noqa: N802
        if await self._checked("EHLO", hostname):
            await super().smtp_EHLO(hostname)

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        if await self._checked("MAIL", arg):
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        if await self._checked("RCPT", arg):
            await super().smtp_RCPT(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802
        """aiosmtpd's STARTTLS, but through ``loop.start_tls``: with uvloop the TLS layer is its C
        implementation instead of asyncio's pure-Python SSLProtocol, which cost about a sixth of the
        loop's time under load (every reply of every message goes through it)."""
        if self._tls_protocol is not None:
            await self.push("503 5.5.1 TLS already active")
            return
        if not _is_uvloop(self.loop):
            # On asyncio's own loop start_tls gains nothing (the same SSLProtocol), and its upgrade
            # of a StreamReaderProtocol in place stalls: keep aiosmtpd's way there (tests' loop).
            await super().smtp_STARTTLS(arg)
            return
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 TLS not available")
            return
        await self.push("220 Ready to start TLS")
        plain = self.transport
        try:
            tls = await self.loop.start_tls(plain, self, self.tls_context, server_side=True)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise TLSSetupException() from error
        # What aiosmtpd's own STARTTLS leaves behind: the plain transport (closed with the
        # connection), a "TLS is up" marker carrying the TLS extra info, and connection_made's
        # STARTTLS branch (new session, reader and writer on the TLS transport, leftover plaintext
        # discarded as RFC 3207 4.2 asks).
        self._original_transport = plain
        self._tls_protocol = _TlsUp(tls)
        self.connection_made(tls)

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802
        if await self._checked("AUTH", arg):
            await super().smtp_AUTH(arg)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802
        """aiosmtpd's DATA with the message read by data.receive: charged to the budget as it arrives."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        reservation = data.Reservation(self.owner.budget)
        try:
            first = data.first_size(size_param(self.envelope.mail_options), self.data_size_limit)
            if not reservation.cover(first):
                await self._refuse_data(data.Outcome.NO_MEMORY)
                return
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            outcome, content = await data.receive(self._reader, reservation, size_limit=self.data_size_limit,
                                                  line_limit=self.line_length_limit)
            if outcome is not data.Outcome.RECEIVED:
                self._set_post_data_state()
                await self._refuse_data(outcome)
                return
            # The handler holds the only reference, so it can drop the buffer once it has prepared.
            self.envelope.original_content = self.envelope.content = content
            del content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
        finally:
            reservation.release()
        await self.push("250 OK" if status is MISSING else status)

    async def _refuse_data(self, outcome: data.Outcome) -> None:
        if outcome is data.Outcome.NO_MEMORY:
            self.owner.metrics.memory_refusals.inc()
        await self.push(self.event_handler._refuse(self, "DATA", data.refusal(outcome)))  # noqa: SLF001 - our own handler


class SubmissionServer(Component):
    name = "submission"

    def __init__(self, config: SubmissionConfig, *, handler: SubmissionHandler, tls: TlsContext, hostname: str,
                 budget: ByteBudget, metrics: Metrics | None = None):
        self.config = config
        self.budget = budget
        self.handler = handler
        self.tls = tls
        self.hostname = hostname
        self.metrics = metrics or handler.metrics
        self.counter = ConnectionCounter(config.max_connections, config.max_connections_per_client)
        self.sessions: set[SubmissionSMTP] = set()
        self._servers: dict[str, asyncio.base_events.Server] = {}
        self._addresses = {"submission": config.listen, "submissions": config.listen_tls}
        self._idle = asyncio.Event()
        self._idle.set()

    def _protocol(self, implicit_tls: bool) -> SubmissionSMTP:
        cfg = self.config
        return SubmissionSMTP(
            self.handler,
            owner=self,
            implicit_tls=implicit_tls,
            hostname=self.hostname,
            ident="ESMTP ready",
            tls_context=None if implicit_tls else self.tls.context,
            data_size_limit=cfg.max_message_size,
            timeout=cfg.command_timeout,
            auth_required=True,
            auth_require_tls=True,
            enable_SMTPUTF8=False,
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        quiet_aiosmtpd()
        self.tls.load()
        loop = asyncio.get_running_loop()
        for name, listen, implicit in (("submission", self.config.listen, False), ("submissions", self.config.listen_tls, True)):
            host, port = split_hostport(listen)
            try:
                server = await loop.create_server(
                    lambda implicit=implicit: self._protocol(implicit), host, port,
                    ssl=self.tls.context if implicit else None, reuse_address=True, backlog=512,
                    ssl_handshake_timeout=30.0 if implicit else None,
                )
            except OSError as exc:
                await self._close_servers()
                why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
                raise StartupError(f"{name}: cannot listen on {listen}: {why}") from None
            self._servers[name] = server
            self._addresses[name] = format_address(server.sockets[0].getsockname())
        log.info("submission_listening", starttls=self._addresses["submission"], implicit_tls=self._addresses["submissions"],
                 self_signed=self.tls.self_signed)

    async def _close_servers(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    def session_ended(self, session: SubmissionSMTP) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self._idle.set()

    async def stop(self, deadline: float) -> None:
        """Stop accepting; idle sessions get 421 now, a message being committed gets its reply first."""
        await self._close_servers()
        if self.sessions:
            self._idle.clear()
            for session in list(self.sessions):
                session.shutdown()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._idle.wait(), max(remaining, 0.01))
            except asyncio.TimeoutError:
                log.warning("submission_stop_forced", sessions=len(self.sessions))
                for session in list(self.sessions):
                    if session.transport is not None:
                        session.transport.abort()

    async def reload(self, config: Config) -> None:
        new = config.submission
        self.config = new
        self.counter.configure(new.max_connections, new.max_connections_per_client)
        self.handler.configure(new, config.queue.lifetime)
        self.tls.reload(new.tls_cert, new.tls_key)
        quiet_aiosmtpd()

    def listeners(self) -> list[Listener]:
        return [Listener(name, self._addresses[name], up=name in self._servers) for name in ("submission", "submissions")]

    def status(self) -> dict[str, Any]:
        return {"submission": {"connections": len(self.sessions), "tls_self_signed": self.tls.self_signed,
                               "tls_cert": str(self.tls.cert_path) if self.tls.cert_path else None}}


def quiet_aiosmtpd() -> None:
    """aiosmtpd logs every command line, sender and recipient at INFO ("mail.log"): five records per
    message through the JSON formatter, a large share of the loop's time at the level production runs
    at, repeating what our own events say. Its trace stays available at the debug level."""
    debug = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    logging.getLogger("mail.log").setLevel(logging.NOTSET if debug else logging.WARNING)


def client_tls_context() -> ssl.SSLContext:
    """For tests and the benchmark: a client context that accepts the self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
