"""The submission listeners: aiosmtpd protocols served on the daemon's own loop.

Two listening sockets share one handler and one TLS context: ``submission`` speaks plain SMTP and
offers STARTTLS (AUTH only once TLS is up), ``submissions`` is TLS from the first byte (RFC 8314).
Each connection is a ``protocol.SubmissionSMTP`` created by ``loop.create_server`` (not aiosmtpd's
threaded Controller). This module owns what spans connections: connection limits, the session
set, TLS, the in-flight memory budget that DATA is read under (data.py), and a graceful stop that
lets a message being committed get its 250. What one connection does with the bytes a client sends
(line checks, replies, refusal accounting, DATA reading) is in protocol.py. ``SmtpServer`` is the
part any SMTP listener shares; the MX listener (gateway/inbound/server.py) is another one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
import socket
from typing import Any

from .. import logs
from ..budget import ByteBudget
from ..config import Config, SubmissionConfig, split_hostport
from ..errors import StartupError
from ..lifecycle import Component, Listener, format_address
from ..metrics import Metrics
from ..tlsreader import TlsReader
from .handler import SubmissionHandler
from .protocol import LogThrottle, SubmissionSMTP
from .ratelimit import ConnectionCounter
from .tls import TlsContext

log = logs.get_logger("submission")   # assembled once per configuration (logs.py)
TLS_FAILURE_LOG_INTERVAL = 60.0  # one submission_tls_failed line per client address per minute


class SmtpServer(Component):
    """What spans the connections of one SMTP listener: sockets, connection limits, the session
    set, TLS, the memory budget DATA is read under, a graceful stop. Subclasses say which sockets
    (``endpoints``: name -> (listen address, implicit TLS)) and build each connection's protocol."""

    name = "smtp"

    def __init__(self, config: Any, *, handler: Any, tls: TlsContext, hostname: str, budget: ByteBudget,
                 metrics: Metrics, refusals: Any, connections: Any, endpoints: dict[str, tuple[str, bool]]):
        self.config = config
        self.budget = budget
        self.handler = handler
        self.tls = tls
        self.hostname = hostname
        self.metrics = metrics
        self.refusals = refusals          # Counter by step and code: every refusal the protocol accounts
        self.connections = connections    # Gauge of open connections
        self.counter = ConnectionCounter(config.max_connections, config.max_connections_per_client)
        self.tls_failures = LogThrottle(TLS_FAILURE_LOG_INTERVAL)
        self.sessions: set[SubmissionSMTP] = set()
        self._servers: dict[str, asyncio.base_events.Server] = {}
        self._endpoints = endpoints
        # Listening sockets bound by the daemon (a pipeline worker's, gateway/workers.py), by endpoint
        # name; an endpoint without one binds its own address.
        self.sockets: dict[str, socket.socket] = {}
        self._addresses = {name: listen for name, (listen, _) in endpoints.items()}
        self._idle = asyncio.Event()
        self._idle.set()

    def _protocol(self, implicit_tls: bool) -> SubmissionSMTP:
        raise NotImplementedError

    async def start(self) -> None:
        quiet_aiosmtpd()
        self.tls.load()
        loop = asyncio.get_running_loop()
        for name, (listen, implicit) in self._endpoints.items():
            host, port = split_hostport(listen)
            where: dict[str, Any] = ({"sock": self.sockets[name]} if name in self.sockets else
                                     {"host": host, "port": port, "reuse_address": True, "backlog": 512})
            try:
                # Implicit TLS: the transport reads through a TlsReader (gateway/tlsreader.py), as after STARTTLS.
                server = await loop.create_server(
                    lambda implicit=implicit: TlsReader(self._protocol(True)) if implicit else self._protocol(False), **where,
                    ssl=self.tls.context if implicit else None, ssl_handshake_timeout=30.0 if implicit else None,
                )
            except OSError as exc:
                await self._close_servers()
                why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
                raise StartupError(f"{name}: cannot listen on {listen}: {why}") from None
            self._servers[name] = server
            self._addresses[name] = format_address(server.sockets[0].getsockname())
        self._started()

    def _started(self) -> None:
        log.info(f"{self.name}_listening", **self._addresses, self_signed=self.tls.self_signed)

    async def _close_servers(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()

    def session_started(self, session: SubmissionSMTP) -> None:
        self.sessions.add(session)
        self._idle.clear()

    async def wait_idle(self) -> None:
        """Until no session is left (each ended: served, closed or cancelled)."""
        await self._idle.wait()

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
                log.warning(f"{self.name}_stop_forced", sessions=len(self.sessions))
                for session in list(self.sessions):
                    if session.transport is not None:
                        session.transport.abort()
        # A session cancelled mid-commit (its client hung up) leaves its commit running: let it finish.
        await self.handler.drain(max(deadline - asyncio.get_running_loop().time(), 0.01))

    def listeners(self) -> list[Listener]:
        return [Listener(name, self._addresses[name], up=name in self._servers) for name in self._endpoints]


class SubmissionServer(SmtpServer):
    name = "submission"

    def __init__(self, config: SubmissionConfig, *, handler: SubmissionHandler, tls: TlsContext, hostname: str,
                 budget: ByteBudget, metrics: Metrics | None = None):
        metrics = metrics or handler.metrics
        super().__init__(config, handler=handler, tls=tls, hostname=hostname, budget=budget, metrics=metrics,
                         refusals=metrics.submission_refusals, connections=metrics.submission_connections,
                         endpoints={"submission": (config.listen, False), "submissions": (config.listen_tls, True)})

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
            enable_SMTPUTF8=True,  # RFC 6531; the handler refuses non-ASCII addresses without SMTPUTF8 (5.6.7)
            loop=asyncio.get_running_loop(),
        )

    def _started(self) -> None:
        log.info("submission_listening", starttls=self._addresses["submission"], implicit_tls=self._addresses["submissions"],
                 self_signed=self.tls.self_signed)

    async def reload(self, config: Config) -> None:
        new = config.submission
        self.config = new
        self.counter.configure(new.max_connections, new.max_connections_per_client)
        self.handler.configure(new, config.queue.lifetime)
        self.tls.reload(new.tls_cert, new.tls_key)
        quiet_aiosmtpd()

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
