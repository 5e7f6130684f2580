"""The submission handler: aiosmtpd's hooks for one listener (AUTH, MAIL, RCPT, DATA).

    AUTH  PLAIN | LOGIN, after TLS only (aiosmtpd answers 538 before); each attempt is counted
          against its address and (address, username) *before* its password is checked (a success
          gives the slot back; while every slot is being checked the next attempt waits), so
          parallel sessions get no more guesses than the limit; a login or an address over its
          limit gets 454 4.7.0 for the cool-down without its password being looked at.
    EHLO  aiosmtpd's extensions plus PIPELINING and ENHANCEDSTATUSCODES
    MAIL  syntax (UTF-8 only with SMTPUTF8), account (use case, tenant, domain), envelope sender,
          SIZE, quota, rate limit
    RCPT  syntax, recipient limit (452 for the excess), duplicates collapsed, suppression list
          (``check_recipient``: 550 5.7.1, or accepted and dropped at DATA when the use case says so)
    DATA  bare CR/LF and NUL, header size, Received count, fields RFC 5322 allows once, From
          header, prepare, queue.put (committed, group commit) and only then 250, whatever the
          bookkeeping after the commit does

Every refusal is an ``SMTPError``: the client gets its public text, the log its reason (``_refuse``
logs and counts it; the protocol accounts for the refusals aiosmtpd makes itself). Anything
unexpected before the commit is logged with its traceback and answered 451 4.3.0: exception text
never reaches a client.
"""

from __future__ import annotations

import binascii
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiosmtpd.smtp import MISSING, AuthResult

from .. import headers
from ..config import SubmissionConfig
from ..errors import SMTPError
from ..metrics import Metrics
from ..store.queue import NewMessage, QueueIds
from . import policy, prepare
from .hooks import INTERNAL_ERROR, STORAGE_FULL, SmtpHandler, client_ip, inspect_content
from .ratelimit import AuthCooldown, QuotaTracker, RateLimiter, TtlCache

log = structlog.get_logger("submission")

__all__ = ["INTERNAL_ERROR", "STORAGE_FULL", "SubmissionHandler", "client_ip"]
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_COOLDOWN = "454 4.7.0 Too many failed authentication attempts, try again later"
AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
MAX_USERNAME = 256
MAX_PASSWORD = 1024

Authenticate = Callable[[str, str], Awaitable[dict[str, Any] | None]]
Context = Callable[[int], Awaitable[dict[str, Any] | None]]
Submit = Callable[[NewMessage], Awaitable[dict[str, Any]]]
CheckRecipient = Callable[[dict[str, Any], str], Awaitable[str]]   # '' send, 'drop', or raises SMTPError


def _usecase_id(auth: dict[str, Any]) -> int:
    return auth["usecase_id"] if "usecase_id" in auth else auth["id"]


class SubmissionHandler(SmtpHandler):
    listener = "submission"

    def __init__(self, config: SubmissionConfig, *, hostname: str, authenticate: Authenticate, context: Context,
                 submit: Submit, monthly_count: Callable[[int], Awaitable[int]], lifetime: float,
                 metrics: Metrics | None = None, on_queued: Callable[[str], None] | None = None,
                 check_recipient: CheckRecipient | None = None):
        metrics = metrics or Metrics()
        super().__init__(hostname=hostname, metrics=metrics, refusals=metrics.submission_refusals)
        self.config = config
        self.authenticate = authenticate
        self.contexts = TtlCache(context, config.context_ttl)
        self.submit = submit
        self.quota = QuotaTracker(monthly_count, ttl=max(config.context_ttl, 1.0) * 6)
        self.rates = RateLimiter()
        self.cooldown = AuthCooldown(config.auth_failures_limit, config.auth_cooldown, config.auth_address_failures_limit)
        self.ids = QueueIds()
        self.lifetime = lifetime
        self.on_queued = on_queued
        self.check_recipient = check_recipient

    def configure(self, config: SubmissionConfig, lifetime: float) -> None:
        self.config = config
        self.lifetime = lifetime
        self.contexts.ttl = config.context_ttl
        self.contexts.clear()
        self.cooldown.configure(config.auth_failures_limit, config.auth_cooldown, config.auth_address_failures_limit)

    # ------------------------------------------------------------------ helpers

    def _log_context(self, server: Any) -> dict[str, Any]:
        auth = server.session.auth_data if server.session else None
        return {"usecase": (auth or {}).get("usecase") or (auth or {}).get("name")}

    async def _context(self, server: Any) -> dict[str, Any]:
        auth = server.session.auth_data
        ctx = await self.contexts.get(_usecase_id(auth))
        if ctx is None:
            raise SMTPError(550, "5.7.1", "This login is no longer valid", f"use case {_usecase_id(auth)} no longer exists")
        return ctx

    # ------------------------------------------------------------------ AUTH

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's naming
        ip = client_ip(server)
        if self.cooldown.blocked(ip):
            return self._cooling(ip, "PLAIN")
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Malformed PLAIN response")
            return AuthResult(success=False, handled=True)
        # An authzid other than the login asks to act as someone else (RFC 4616 2), which no login
        # may: a failed attempt like a wrong password (535, counted), the password never checked.
        proxy = bool(parts[0]) and parts[0] != parts[1]
        return await self._verify(server, ip, "PLAIN", parts[1], parts[2], proxy=proxy)

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:  # noqa: N802
        ip = client_ip(server)
        if self.cooldown.blocked(ip):
            return self._cooling(ip, "LOGIN")
        if len(args) == 1:
            username = await server.challenge_auth("Username:")
            if username is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                username = b64decode(args[1], validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        password = await server.challenge_auth("Password:")
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._verify(server, ip, "LOGIN", username, password)

    def _cooling(self, ip: str, mechanism: str, username: str | None = None) -> AuthResult:
        self.metrics.submission_auth.labels(outcome="cooldown").inc()
        log.warning("auth_refused_cooldown", client=ip, mechanism=mechanism, username=username)
        return AuthResult(success=False, handled=False, message=AUTH_COOLDOWN)

    async def _verify(self, server: Any, ip: str, mechanism: str, username_b: bytes, password_b: bytes, *,
                      proxy: bool = False) -> AuthResult:
        try:
            username = username_b.decode("utf-8")
            password = password_b.decode("utf-8")
        except UnicodeDecodeError:
            username, password = "", ""
        username = username[:MAX_USERNAME + 1]
        # Counted before the password is looked at: a burst of parallel sessions takes the slots one by one.
        attempt = await self.cooldown.begin(ip, username)
        if attempt is None:
            return self._cooling(ip, mechanism, username[:MAX_USERNAME])
        result = None
        if username and password and len(username) <= MAX_USERNAME and len(password) <= MAX_PASSWORD and not proxy:
            try:
                result = await self.authenticate(username, password)
            except Exception as exc:  # noqa: BLE001 - the store or hasher failed: temporary, never the text
                self.cooldown.succeeded(attempt)  # our failure, not a wrong guess
                self.metrics.submission_auth.labels(outcome="error").inc()
                log.error("auth_error", client=ip, username=username, error_type=type(exc).__name__, exc_info=exc)
                return AuthResult(success=False, handled=False, message=AUTH_TEMPFAIL)
            except BaseException:  # the client hung up mid-check: an abandoned guess still counts
                self.cooldown.failed(attempt)
                raise
        if result is None:
            blocked = self.cooldown.failed(attempt)
            self.metrics.submission_auth.labels(outcome="failed").inc()
            log.warning("auth_failed", client=ip, mechanism=mechanism, username=username[:MAX_USERNAME], now_blocked=blocked,
                        **({"reason": "authzid differs from the login"} if proxy else {}))
            return AuthResult(success=False, handled=False, message=AUTH_INVALID)
        self.cooldown.succeeded(attempt)
        self.metrics.submission_auth.labels(outcome="ok").inc()
        log.info("auth_ok", client=ip, mechanism=mechanism, username=username, usecase=result.get("usecase") or result.get("name"),
                 tenant=result.get("tenant"))
        return AuthResult(success=True, auth_data=result, message=AUTH_OK)

    # ------------------------------------------------------------------ EHLO, MAIL, RCPT

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:  # noqa: N802
        try:
            policy.check_sender_syntax(address, utf8=envelope.smtp_utf8)
            ctx = await self._context(server)
            policy.check_account(ctx)
            policy.check_envelope_sender(address, ctx.get("senders") or ())
            declared = policy.size_param(mail_options)
            policy.check_size(declared, self.config.max_message_size)
            quota = ctx.get("monthly_quota") or 0
            if quota:
                policy.check_quota(await self.quota.used(ctx["tenant_id"]), quota)
            if not self.rates.allow(_usecase_id(ctx), ctx.get("rate_limit") or 0):
                raise policy.rate_limited(ctx.get("usecase") or ctx.get("name") or "?")
        except SMTPError as err:
            return self._refuse(server, "MAIL", err)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.ctx = ctx
        envelope.seen = set()
        envelope.dropped = set()   # accepted at RCPT, not queued: suppressed under accept-and-drop
        envelope.declared_size = declared   # SIZE= of MAIL, read once: DATA reserves the budget by it
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:  # noqa: N802
        try:
            policy.check_recipient_syntax(address, utf8=envelope.smtp_utf8)
            key = policy.normalise(address)
            if key in envelope.seen:
                return "250 2.1.5 Recipient OK (duplicate)"
            policy.check_recipient_count(len(envelope.rcpt_tos), self.config.max_recipients)
            if self.check_recipient is not None and await self.check_recipient(envelope.ctx, address) == "drop":
                envelope.dropped.add(address)
        except SMTPError as err:
            return self._refuse(server, "RCPT", err)
        envelope.seen.add(key)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    # ------------------------------------------------------------------ DATA

    async def _accept(self, server: Any, envelope: Any, started: float) -> str:
        cfg = self.config
        data: bytearray = envelope.original_content   # as received (data.py): the only copy so far
        found = inspect_content(data, max_size=cfg.max_message_size, max_header_bytes=cfg.max_header_bytes,
                                max_received=cfg.max_received_headers)
        headers.check_single(found.parsed.fields)
        if found.from_fields != 1:
            raise SMTPError(550, "5.6.0", "Message must have exactly one From header", f"{found.from_fields} From headers")
        ctx = envelope.ctx
        policy.check_header_senders(found.from_addresses, ctx.get("senders") or ())
        now = time.time()
        queue_id = self.ids.new(now)
        message_id = found.message_id or f"{queue_id}@{ctx['domain']}"
        ip = client_ip(server)
        received = prepare.received_header(helo=server.session.host_name, client_ip=ip, hostname=self.hostname, queue_id=queue_id,
                                           tls=server.tls_description(), recipients=envelope.rcpt_tos, now=now)
        recipients = [r for r in envelope.rcpt_tos if r not in envelope.dropped]
        if not recipients:   # every recipient suppressed, accept-and-drop: nothing to queue
            return "250 2.0.0 Ok: accepted, nothing to send (suppressed recipients)"
        # Prepared inside the received buffer: the message is held once, not twice (data.py).
        body = prepare.prepare_in_place(found, data, received=received, message_id=message_id,
                                        add_message_id=found.message_id is None, now=now)
        parents = found.parents
        envelope.original_content = envelope.content = None
        del data, found
        new = NewMessage(
            queue_id=queue_id, tenant_id=ctx["tenant_id"], usecase_id=_usecase_id(ctx), mail_from=envelope.mail_from,
            message_id=message_id, body=body, recipients=recipients, parents=parents, client=ip,
            lifetime=self.lifetime, now=now,
        )
        del body
        # Once the put has started, it and the bookkeeping after it run to the end even when the
        # session is cancelled meanwhile (the client hung up at the final dot).
        return await self._commit_shielded(server, lambda: self._commit(server, envelope, ctx, new, started))

    async def _commit(self, server: Any, envelope: Any, ctx: dict[str, Any], new: NewMessage, started: float) -> str:
        result = await self.submit(new)
        # Committed: from here on the message is ours, and the answer is 250 whatever fails below
        # (a 451 now would make the client send it again: a duplicate).
        self._after_commit(server, envelope, ctx, new.queue_id, new.message_id, new.body, result, started)
        return f"250 2.0.0 Ok: queued as {new.queue_id}"


    def _after_commit(self, server: Any, envelope: Any, ctx: dict[str, Any], queue_id: str, message_id: str, body: bytes,
                      result: dict[str, Any], started: float) -> None:
        """Bookkeeping for a committed message. Delivery is told first; each part fails on its own."""
        if self.on_queued is not None:
            try:
                self.on_queued(queue_id)
            except Exception as exc:  # noqa: BLE001 - the message is queued; the scheduler's own poll finds it
                log.error("submission_after_commit_failed", part="notify", queue_id=queue_id, error_type=type(exc).__name__,
                          exc_info=exc)
        try:
            self.quota.accepted(ctx["tenant_id"])
            elapsed = time.perf_counter() - started
            self.metrics.messages_received.inc()
            self.metrics.submission_accept_seconds.observe(elapsed)
            self.metrics.message_size.observe(len(body))
            log.info("queued", queue_id=queue_id, tenant=ctx.get("tenant"), usecase=ctx.get("usecase") or ctx.get("name"),
                     mail_from=envelope.mail_from, recipients=len(envelope.rcpt_tos), size=len(body), message_id=message_id,
                     client=client_ip(server), held=result.get("hold_reason") or None, delay=round(elapsed, 4))
            if result.get("hold_reason"):
                log.info("held", queue_id=queue_id, reason=result["hold_reason"], recipients=len(envelope.rcpt_tos))
        except Exception as exc:  # noqa: BLE001 - counting and logging must not turn a queued message into a 451
            log.error("submission_after_commit_failed", part="metrics", queue_id=queue_id, error_type=type(exc).__name__,
                      exc_info=exc)
