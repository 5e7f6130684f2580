"""The submission handler: aiosmtpd's hooks for one listener (AUTH, MAIL, RCPT, DATA).

    AUTH  PLAIN | LOGIN, after TLS only (aiosmtpd answers 538 before); each attempt is counted
          against its address and (address, username) *before* its password is checked (a success
          gives the slot back; while every slot is being checked the next attempt waits), so
          parallel sessions get no more guesses than the limit; a login or an address over its
          limit gets 454 4.7.0 for the cool-down without its password being looked at.
    EHLO  aiosmtpd's extensions plus PIPELINING and ENHANCEDSTATUSCODES
    MAIL  syntax (UTF-8 only with SMTPUTF8), account (use case, tenant, domain), envelope sender
          (a sender of the use case or an enabled, sending channel address of it), SIZE, quota,
          rate limit
    RCPT  syntax, recipient limit (452 for the excess), duplicates collapsed, suppression list
          (``check_recipient``: 550 5.7.1, or accepted and dropped at DATA when the use case says so)
    DATA  bare CR/LF and NUL, header size, Received count, fields RFC 5322 allows once, From
          header, prepare (References rebuilt from our records; from a channel address: reply
          copy, header/footer, vCard, see ``channel.py``), queue.put (committed, group commit)
          and only then 250, whatever the bookkeeping after the commit does

The rules of MAIL, RCPT and DATA are ``submit.Submitter``'s, which the API's send calls too; this
module is what is SMTP's own: AUTH, the reply lines, the Received field's session facts, the commit
shielded from a hang-up. Every refusal is an ``SMTPError``: the client gets its public text, the log its reason (``_refuse``
logs and counts it; the protocol accounts for the refusals aiosmtpd makes itself). Anything
unexpected before the commit is logged with its traceback and answered 451 4.3.0: exception text
never reaches a client.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import MISSING, AuthResult

from .. import logs
from ..config import SubmissionConfig
from ..errors import SMTPError
from ..metrics import Metrics
from ..store.queue import NewMessage
from . import policy, prepare, submit
from .hooks import INTERNAL_ERROR, STORAGE_FULL, SmtpHandler, client_ip
from .ratelimit import AuthCooldown
from .submit import CheckRecipient, Context, Lineage, Submitter

if TYPE_CHECKING:
    from ..store.limits import Limits

log = logs.get_logger("submission")   # assembled once per configuration (logs.py)

__all__ = ["INTERNAL_ERROR", "STORAGE_FULL", "SubmissionHandler", "client_ip"]
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_COOLDOWN = "454 4.7.0 Too many failed authentication attempts, try again later"
AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure"
MAX_USERNAME = 256
MAX_PASSWORD = 1024

Authenticate = Callable[[str, str], Awaitable[dict[str, Any] | None]]
Submit = Callable[[NewMessage], Awaitable[dict[str, Any]]]
_usecase_id = submit.usecase_id_of


class SubmissionHandler(SmtpHandler):
    listener = "submission"

    def __init__(self, config: SubmissionConfig, *, hostname: str, authenticate: Authenticate, context: Context,
                 submit: Submit, monthly_count: Callable[[int], Awaitable[int]], lifetime: float,
                 metrics: Metrics | None = None, on_queued: Callable[[str], None] | None = None,
                 check_recipient: CheckRecipient | None = None, lineage: Lineage | None = None, limits: Limits | None = None):
        metrics = metrics or Metrics()
        super().__init__(hostname=hostname, metrics=metrics, refusals=metrics.submission_refusals)
        self.config = config
        self.authenticate = authenticate
        # The rules of MAIL, RCPT and DATA, shared with the API's send (gateway/api/sending.py).
        self.submitter = Submitter(config, context=context, submit=submit, monthly_count=monthly_count, lifetime=lifetime,
                                   metrics=metrics, on_queued=on_queued, check_recipient=check_recipient, lineage=lineage,
                                   limits=limits)
        # With the store's ``limits``, failures count for every process and node (ratelimit.py).
        self.cooldown = AuthCooldown(config.auth_failures_limit, config.auth_cooldown, config.auth_address_failures_limit,
                                     shared=limits)

    def configure(self, config: SubmissionConfig, lifetime: float) -> None:
        self.config = config
        self.submitter.configure(config, lifetime)
        self.cooldown.configure(config.auth_failures_limit, config.auth_cooldown, config.auth_address_failures_limit)

    async def drain(self, timeout: float | None = None) -> None:
        await super().drain(timeout)
        await self.submitter.close()

    # ------------------------------------------------------------------ helpers

    def _log_context(self, server: Any) -> dict[str, Any]:
        auth = server.session.auth_data if server.session else None
        return {"usecase": (auth or {}).get("usecase") or (auth or {}).get("name")}

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
            declared = policy.size_param(mail_options)
            draft = await self.submitter.mail(_usecase_id(server.session.auth_data), address, utf8=envelope.smtp_utf8,
                                              declared=declared)
        except SMTPError as err:
            return self._refuse(server, "MAIL", err)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.draft = draft
        envelope.declared_size = declared   # SIZE= of MAIL, read once: DATA reserves the budget by it
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:  # noqa: N802
        try:
            outcome = await self.submitter.rcpt(envelope.draft, address)
        except SMTPError as err:
            return self._refuse(server, "RCPT", err)
        if outcome == submit.DUPLICATE:
            return "250 2.1.5 Recipient OK (duplicate)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    # ------------------------------------------------------------------ DATA

    async def _accept(self, server: Any, envelope: Any, started: float) -> str:
        data: bytearray = envelope.original_content   # as received (data.py): the only copy so far
        envelope.original_content = envelope.content = None
        ip = client_ip(server)

        def received(queue_id: str, now: float, recipients: list[str]) -> bytes:
            return prepare.received_header(helo=server.session.host_name, client_ip=ip, hostname=self.hostname, queue_id=queue_id,
                                           tls=server.tls_description(), recipients=recipients, now=now)

        draft = envelope.draft
        new = await self.submitter.prepare(draft, data, received=received, client=ip)
        del data
        if new is None:   # every recipient suppressed, accept-and-drop: nothing to queue
            return "250 2.0.0 Ok: accepted, nothing to send (suppressed recipients)"
        # Once the put has started, it and the bookkeeping after it run to the end even when the
        # session is cancelled meanwhile (the client hung up at the final dot).
        return await self._commit_shielded(server, lambda: self._commit(draft, new, started, ip))

    async def _commit(self, draft: submit.Draft, new: NewMessage, started: float, ip: str) -> str:
        # Committed once this returns: the answer is 250 whatever the bookkeeping after it does.
        await self.submitter.commit(draft, new, started=started, client=ip)
        return f"250 2.0.0 Ok: queued as {new.queue_id}"
