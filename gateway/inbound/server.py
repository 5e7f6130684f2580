"""The MX listener: mail from the internet for tenants' domains and the gateway's return paths.

One plain socket (``inbound.listen``; port 25 in production) that offers STARTTLS with the
submission listener's certificate and never AUTH: nobody logs in to an MX, and a client that
tries gets 502 5.5.1. Everything else a connection does is the submission listener's hardened
protocol (gateway/submission/protocol.py: line checks, bounded reads, enhanced codes on every
reply, refusal accounting, the error limit, timeouts, DATA read under the memory budget) and its
connection limits and graceful stop (submission/server.py ``SmtpServer``), with the MX's own
limits (``[inbound]``) and metrics (``gateway_inbound_*``); the hooks are in handler.py.

Source routes (``RCPT TO:<@a,@b:u@ours>``) are refused here, 550 5.7.1, before aiosmtpd's parser
drops the route and leaves an address that looks local (RFC 5321 allows ignoring the route; an MX
that never relays has no reason to take one at all).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ..budget import ByteBudget
from ..config import Config, InboundConfig
from ..errors import SMTPError
from ..metrics import Metrics
from ..submission.protocol import SubmissionSMTP
from ..submission.server import SmtpServer, quiet_aiosmtpd
from ..submission.tls import TlsContext
from . import authres
from .dnscache import DnsCache
from .handler import Authenticate, InboundHandler
from .recipients import Resolver, Rules, relaying_denied

NO_AUTH = "502 5.5.1 AUTH not available on this port"
_SOURCE_ROUTE = re.compile(r"(?i)^\s*TO:\s*<\s*@")
_BARE_POSTMASTER = re.compile(r"(?i)^\s*TO:\s*<postmaster>\s*$")


class InboundSMTP(SubmissionSMTP):
    """A submission connection without AUTH, with the MX's line limit."""

    def __init__(self, handler: Any, *, line_length_limit: int, **kwargs: Any):
        # aiosmtpd sizes its reader by line_length_limit in __init__: set before it runs.
        self.line_length_limit = line_length_limit
        super().__init__(handler, **kwargs)

    async def smtp_AUTH(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's naming
        await self.push(NO_AUTH)

    async def smtp_RCPT(self, arg: str) -> None:  # noqa: N802
        if arg and _BARE_POSTMASTER.match(arg):
            # RFC 5321 4.5.1: <Postmaster> without a domain must be accepted: ours, the gateway's own name.
            arg = f"TO:<postmaster@{self.hostname}>"
        if arg and _SOURCE_ROUTE.match(arg) and self.envelope.mail_from is not None:
            await self.push(self.event_handler._refuse(self, "RCPT", relaying_denied(f"source route in {arg[:100]!r}")))  # noqa: SLF001
            return
        await super().smtp_RCPT(arg)


class InboundServer(SmtpServer):
    name = "inbound"

    def __init__(self, config: InboundConfig, *, handler: InboundHandler, tls: TlsContext, hostname: str,
                 budget: ByteBudget, metrics: Metrics | None = None):
        metrics = metrics or handler.metrics
        super().__init__(config, handler=handler, tls=tls, hostname=hostname, budget=budget, metrics=metrics,
                         refusals=metrics.inbound_refusals, connections=metrics.inbound_connections,
                         endpoints={"inbound": (config.listen, False)})

    def _protocol(self, implicit_tls: bool) -> SubmissionSMTP:
        cfg = self.config
        return InboundSMTP(
            self.handler,
            owner=self,
            implicit_tls=False,
            hostname=self.hostname,
            ident="ESMTP ready",
            tls_context=self.tls.context,
            data_size_limit=cfg.max_message_size,
            timeout=cfg.command_timeout,
            line_length_limit=cfg.max_line_length + 1,   # + the dot a line starting with one is stuffed with
            auth_required=False,
            auth_require_tls=True,
            auth_exclude_mechanism=("LOGIN", "PLAIN"),
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )

    async def reload(self, config: Config) -> None:
        new = config.inbound
        self.config = new
        self.counter.configure(new.max_connections, new.max_connections_per_client)
        self.handler.configure(new)
        self.handler.resolver.configure(Rules.from_config(config), new.facts_ttl)
        self.tls.reload(config.submission.tls_cert, config.submission.tls_key)
        quiet_aiosmtpd()

    def status(self) -> dict[str, Any]:
        return {"inbound": {"connections": len(self.sessions), "listen": self._addresses["inbound"]}}


def dmarc_at_data(config: Config, dns: DnsCache | None = None) -> Authenticate:
    """The check the handler runs at the final dot when a recipient's tenant has ``dmarc_reject``:
    authres.authenticate over the message as received; a DMARC fail under p=reject is refused
    550 5.7.1, anything else (temperror included) is accepted with the Authentication-Results value
    kept for the stored copy (Spooled.auth_results: the processor does not evaluate it again)."""
    cache = dns or DnsCache.from_config(config.dns)
    authserv_id = config.domains.mx_hostname or config.daemon.hostname

    async def check(message: bytes, client_ip: str, helo: str, mail_from: str) -> tuple[SMTPError | None, str]:
        verdict = await authres.authenticate(message, client_ip=client_ip, helo=helo, mail_from=mail_from,
                                             resolver=cache, authserv_id=authserv_id)
        if verdict.reject_by_dmarc:
            return SMTPError(550, "5.7.1", "Message rejected: it fails the DMARC policy (p=reject) of its From domain",
                             f"DMARC fail under p=reject for {verdict.from_domain} (spf={verdict.spf},"
                             f" dkim={authres.dkim_overall(verdict.dkim)})"), verdict.header
        return None, verdict.header

    return check


def build(config: Config, *, store: Any, tls: TlsContext, budget: ByteBudget, metrics: Metrics,
          authenticate: Authenticate | None = None, on_spooled: Any = None,
          return_path: Callable[[str], Awaitable[Any]] | None = None) -> InboundServer:
    """The MX listener as the daemon runs it: the recipient rules over ``store.recipients`` (cached
    for ``inbound.facts_ttl``), rows spooled through ``store.inbound.spool``, the submission
    listener's TLS context, the daemon's memory budget, and DMARC at the final dot for tenants that
    refuse DMARC rejects (``dmarc_at_data`` unless ``authenticate`` is given). ``return_path``
    (Keyring.return_path) verifies tagged bounce addresses; without it every tagged one is refused."""
    cfg = config.inbound
    authenticate = authenticate or dmarc_at_data(config)
    resolver = Resolver(store.recipients.facts, Rules.from_config(config), ttl=cfg.facts_ttl, return_path=return_path)
    handler = InboundHandler(cfg, hostname=config.daemon.hostname, resolver=resolver, spool=store.inbound.spool,
                             metrics=metrics, authenticate=authenticate, on_spooled=on_spooled)
    return InboundServer(cfg, handler=handler, tls=tls, hostname=config.daemon.hostname, budget=budget, metrics=metrics)
