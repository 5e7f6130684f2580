"""The MX listener's aiosmtpd hooks: who may send here is anyone, who may receive is the
recipient rules' (recipients.py) decision, and nothing is answered 250 before it is on disk.

    EHLO  aiosmtpd's extensions plus PIPELINING and ENHANCEDSTATUSCODES; never AUTH (server.py)
    MAIL  syntax (the null sender <> is fine: bounces come from it), SIZE against the limit
    RCPT  syntax, recipient limit (452 4.5.3 for the excess), duplicates collapsed, then
          ``Resolver.resolve``: a Target, or its refusal (550 5.7.1 relaying denied, 550 5.1.1, 550 5.2.1);
          after ``max_refused_recipients`` refusals the connection is closed (421 4.7.0)
    DATA  bare CR/LF and NUL, size, header size, Received count (shared with submission: hooks.py);
          DMARC at the final dot when a recipient's tenant asked for it (``authenticate``); our
          Received field prepended; one Spooled row per tenant the envelope reaches (the gateway's
          own addresses in a row with tenant None), committed together (store.inbound.spool), and
          only then 250. StorageFull is 452 4.3.1, anything unexpected 451 4.3.0 (hooks.py).

Nothing is ever accepted and then bounced: every refusal happens in the session.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from ..config import InboundConfig
from ..errors import SMTPError
from ..metrics import Metrics
from ..store.inbound import Spooled
from ..store.queue import QueueIds
from ..submission import policy, prepare
from ..submission.hooks import SmtpHandler, client_ip, inspect_content
from .recipients import Resolver, Target

log = structlog.get_logger("inbound")

TOO_MANY_REFUSED = b"421 4.7.0 Too many refused recipients, closing connection"

Spool = Callable[[Sequence[Spooled]], Awaitable[list[int]]]
# (message, client_ip, helo, mail_from) -> (refusal or None, the Authentication-Results value)
Authenticate = Callable[[bytes, str, str, str], Awaitable[tuple[SMTPError | None, str]]]


def rows(targets: Sequence[Target], new_id: Callable[[], str], **common: Any) -> list[Spooled]:
    """One Spooled row per tenant the recipients reach, each with only its own recipients, in the
    order they were given; the gateway's own addresses (Target.spool_tenant None) share one row."""
    groups: dict[int | None, list[str]] = {}
    for t in targets:
        groups.setdefault(t.spool_tenant, []).append(t.address)
    return [Spooled(inbound_id=new_id(), source="mx", tenant_id=tenant, recipients=tuple(addresses), **common)
            for tenant, addresses in groups.items()]


class InboundHandler(SmtpHandler):
    listener = "inbound"

    def __init__(self, config: InboundConfig, *, hostname: str, resolver: Resolver, spool: Spool,
                 metrics: Metrics | None = None, authenticate: Authenticate | None = None,
                 on_spooled: Callable[[list[int]], Any] | None = None):
        metrics = metrics or Metrics()
        super().__init__(hostname=hostname, metrics=metrics, refusals=metrics.inbound_refusals)
        self.config = config
        self.resolver = resolver
        self.spool = spool
        self.authenticate = authenticate
        self.on_spooled = on_spooled
        self.ids = QueueIds()
        # The accept line of every message, through a logger bound once: structlog's lazy proxy
        # binds a new one per call (a fifth of the line's cost). Bound again on reload, which
        # the daemon does after logs.configure, so a new level or format applies.
        self._accepted = log.bind()

    def configure(self, config: InboundConfig) -> None:
        self.config = config
        self._accepted = log.bind()

    # ------------------------------------------------------------------ EHLO, MAIL, RCPT

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:  # noqa: N802
        """No AUTH on an MX (aiosmtpd would list an empty one once TLS is up)."""
        responses = [r for r in responses if not r[4:].upper().startswith("AUTH")]
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:  # noqa: N802
        try:
            # "<>" is the null reverse-path of bounces and auto-replies (RFC 5321 4.5.5); aiosmtpd keeps
            # it so (its RCPT wants a true mail_from), the spool gets "" (_sender).
            if address != "<>":
                policy.check_sender_syntax(address, utf8=envelope.smtp_utf8)
            declared = policy.size_param(mail_options)
            policy.check_size(declared, self.config.max_message_size)
        except SMTPError as err:
            return self._refuse(server, "MAIL", err)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.targets = {}       # normalised address -> Target, in RCPT order
        envelope.declared_size = declared   # SIZE= of MAIL: DATA reserves the memory budget by it
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:  # noqa: N802
        try:
            policy.check_recipient_syntax(address, utf8=envelope.smtp_utf8)
            target = await self.resolver.resolve(address)
            if target.address in envelope.targets:
                return "250 2.1.5 Recipient OK (duplicate)"
            policy.check_recipient_count(len(envelope.targets), self.config.max_recipients)
        except SMTPError as err:
            if err.permanent:
                # Guessing addresses (a directory harvest) ends the connection after the limit,
                # once this refusal has been sent (protocol.push closes after the reply).
                server.refused_recipients = getattr(server, "refused_recipients", 0) + 1
                if server.refused_recipients >= self.config.max_refused_recipients:
                    log.info("inbound_too_many_refused_recipients", client=client_ip(server), refused=server.refused_recipients)
                    server._close_reply = TOO_MANY_REFUSED  # noqa: SLF001
            return self._refuse(server, "RCPT", err)
        envelope.targets[target.address] = target
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    # ------------------------------------------------------------------ DATA

    async def _accept(self, server: Any, envelope: Any, started: float) -> str:
        cfg = self.config
        data: bytearray = envelope.original_content   # as received (submission/data.py): the only copy
        found = inspect_content(data, max_size=cfg.max_message_size, max_header_bytes=cfg.max_header_bytes,
                                max_received=cfg.max_received_headers, lenient=True, addresses=False)
        targets: list[Target] = list(envelope.targets.values())
        ip, helo = client_ip(server), server.session.host_name or ""
        auth_results = ""
        if self.authenticate is not None and any(t.dmarc_reject for t in targets):
            refusal, auth_results = await self.authenticate(bytes(data), ip, helo, _sender(envelope))
            if refusal is not None:
                raise refusal
        now = time.time()
        first_id = self.ids.new(now)
        received = prepare.received_header(helo=helo, client_ip=ip, hostname=self.hostname, queue_id=first_id,
                                           tls=server.tls_description(), recipients=[t.address for t in targets], now=now,
                                           authenticated=False)
        message_id = (found.message_id or "")[:998]
        if isinstance(found.parsed.body, memoryview):
            found.parsed.body.release()   # a bytearray with a view on it cannot grow
        del found
        data[:0] = received      # prepended in place: the message is not copied
        envelope.original_content = envelope.content = None
        # The first row's id is the one the Received field and the 250 name.
        ids = iter([first_id])
        spooled = rows(targets, lambda: next(ids, None) or self.ids.new(now), now=now, raw=data,
                       mail_from=_sender(envelope), client=ip, helo=helo[:255], header_message_id=message_id,
                       auth_results=auth_results)
        del data
        return await self._commit_shielded(server, lambda: self._commit(server, envelope, spooled, started))

    async def _commit(self, server: Any, envelope: Any, spooled: list[Spooled], started: float) -> str:
        row_ids = await self.spool(spooled)
        # On disk: from here on the message is ours, and the answer is 250 whatever fails below.
        try:
            if self.on_spooled is not None:
                self.on_spooled(row_ids)
            elapsed = time.perf_counter() - started
            self.metrics.inbound_received.inc()
            self.metrics.inbound_accept_seconds.observe(elapsed)
            self._accepted.info("inbound_spooled", inbound_ids=[s.inbound_id for s in spooled], mail_from=_sender(envelope),
                     recipients=len(envelope.targets), size=len(spooled[0].raw), client=client_ip(server),
                     message_id=spooled[0].header_message_id, delay=round(elapsed, 4))
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not turn a spooled message into a 451
            log.error("inbound_after_commit_failed", error_type=type(exc).__name__, exc_info=exc)
        return f"250 2.0.0 Ok: queued as {spooled[0].inbound_id}"


def _sender(envelope: Any) -> str:
    return "" if envelope.mail_from in (None, "<>") else envelope.mail_from
