"""Submitting a message: the one way into the outbound queue, behind both doors.

The submission listener (SMTP, ``handler.py``) and the API's ``POST /v1/messages``
(``gateway/api/sending.py``) call the same four steps, so a rule is written once and a refusal
means the same thing on either door (the API shows the SMTP reply in its problem's ``smtp``):

    mail(usecase_id, sender, utf8, declared)  MAIL: sender syntax, the use case's context (cached),
                                              account (enabled, outbound, domain verified), sender
                                              (a sender of the use case or a channel address of it),
                                              SIZE, monthly quota, rate limit  -> a ``Draft``
    rcpt(draft, recipient)                    RCPT: syntax, duplicates collapsed, recipient limit,
                                              suppression (refused, or accepted and dropped)
    prepare(draft, data, received, client)    DATA: content checks, one From header of allowed
                                              senders, Message-ID, References from our records,
                                              channel-address edits, prepared in place -> NewMessage
    commit(draft, new)                        queue.put (durable, group commit), then delivery is
                                              woken, the quota counted, the metrics and log line

Everything raises ``SMTPError`` (or ``StorageFull`` from the put); nothing here knows which door
it came through except the labels of the log line. The rate limiter, quota counter and context
cache are shared, so SMTP and HTTP sends of one use case count against one limit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import headers, logs
from ..config import SubmissionConfig
from ..errors import SMTPError
from ..metrics import Metrics
from ..store.queue import Idempotency, NewMessage, QueueIds
from . import channel, policy, prepare
from .hooks import inspect_content
from .ratelimit import QuotaTracker, RateLimiter, TtlCache

if TYPE_CHECKING:
    from ..store.limits import Limits

log = logs.get_logger("submission")   # assembled once per configuration (logs.py)

Context = Callable[[int], Awaitable[dict[str, Any] | None]]
Put = Callable[[NewMessage], Awaitable[dict[str, Any]]]
CheckRecipient = Callable[[dict[str, Any], str], Awaitable[str]]   # '' send, 'drop', or raises SMTPError
Lineage = Callable[[int, Sequence[str]], Awaitable[list[str]]]      # store.queue.lineage
Received = Callable[[str, float, list[str]], bytes]                # (queue id, now, recipients) -> trace field

DUPLICATE = "duplicate"
DROPPED = "dropped"
ACCEPTED = "accepted"


def usecase_id_of(ctx: Mapping[str, Any]) -> int:
    return ctx["usecase_id"] if "usecase_id" in ctx else ctx["id"]


@dataclass
class Draft:
    """One message between MAIL and its commit: who sends, through which use case, to whom."""

    ctx: dict[str, Any]
    mail_from: str
    utf8: bool = False
    channel: dict[str, Any] | None = None      # the channel address record it sends from, or None
    declared: int | None = None                # SIZE= of MAIL (the API: the body's length)
    recipients: list[str] = field(default_factory=list)   # accepted, in order (dropped ones included)
    seen: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)         # accepted, not queued: suppressed under accept-and-drop


class Submitter:
    def __init__(self, config: SubmissionConfig, *, context: Context, submit: Put, monthly_count: Callable[[int], Awaitable[int]],
                 lifetime: float, metrics: Metrics | None = None, on_queued: Callable[[str], None] | None = None,
                 check_recipient: CheckRecipient | None = None, lineage: Lineage | None = None, limits: Limits | None = None):
        self.config = config
        self.contexts = TtlCache(context, config.context_ttl)
        self.submit = submit
        # With the store's ``limits`` the rate limits are every process's and node's (the quota is:
        # usage_monthly is the store's); without (tests), this process's.
        self.quota = QuotaTracker(monthly_count)
        self.rates = RateLimiter(shared=limits, scope="usecase")
        self.ids = QueueIds()
        self.lifetime = lifetime
        self.metrics = metrics or Metrics()
        self.on_queued = on_queued
        self.check_recipient = check_recipient
        self.lineage = lineage

    def configure(self, config: SubmissionConfig, lifetime: float) -> None:
        self.config = config
        self.lifetime = lifetime
        self.contexts.ttl = config.context_ttl
        self.contexts.clear()

    async def close(self) -> None:
        """The listener stops: the rate-limit tokens this process holds go back to the store."""
        await self.rates.close()

    async def context(self, usecase_id: int) -> dict[str, Any]:
        ctx = await self.contexts.get(usecase_id)
        if ctx is None:
            raise SMTPError(550, "5.7.1", "This login is no longer valid", f"use case {usecase_id} no longer exists")
        return ctx

    # ------------------------------------------------------------------ MAIL, RCPT

    async def mail(self, usecase_id: int, address: str, *, utf8: bool = False, declared: int | None = None) -> Draft:
        policy.check_sender_syntax(address, utf8=utf8)
        ctx = await self.context(usecase_id)
        policy.check_account(ctx)
        sender_channel = policy.check_sender(address, ctx)
        policy.check_size(declared, self.config.max_message_size)
        quota = ctx.get("monthly_quota") or 0
        if quota:
            policy.check_quota(await self.quota.used(ctx["tenant_id"], quota), quota)
        if not await self.rates.allow(usecase_id_of(ctx), ctx.get("rate_limit") or 0):
            raise policy.rate_limited(ctx.get("usecase") or ctx.get("name") or "?")
        return Draft(ctx=ctx, mail_from=address, utf8=utf8, channel=sender_channel, declared=declared)

    async def rcpt(self, draft: Draft, address: str) -> str:
        """ACCEPTED, DROPPED (accepted, never queued: suppressed under accept-and-drop) or DUPLICATE;
        a refused recipient raises its SMTPError."""
        policy.check_recipient_syntax(address, utf8=draft.utf8)
        key = policy.normalise(address)
        if key in draft.seen:
            return DUPLICATE
        policy.check_recipient_count(len(draft.recipients), self.config.max_recipients)
        outcome = ACCEPTED
        if self.check_recipient is not None and await self.check_recipient(draft.ctx, address) == "drop":
            draft.dropped.add(address)
            outcome = DROPPED
        draft.seen.add(key)
        draft.recipients.append(address)
        return outcome

    # ------------------------------------------------------------------ DATA

    async def prepare(self, draft: Draft, data: bytearray, *, received: Received, client: str,
                      event_data: Mapping[str, Any] | None = None, idempotency: Idempotency | None = None) -> NewMessage | None:
        """The message as it will be queued, from ``data`` as received (prepared in place: the only
        copy); None when every recipient was dropped (nothing to queue)."""
        cfg = self.config
        found = inspect_content(data, max_size=cfg.max_message_size, max_header_bytes=cfg.max_header_bytes,
                                max_received=cfg.max_received_headers)
        headers.check_single(found.parsed.fields)
        if found.from_fields != 1:
            raise SMTPError(550, "5.6.0", "Message must have exactly one From header", f"{found.from_fields} From headers")
        ctx = draft.ctx
        sent_from = policy.check_from(found.from_addresses, ctx) or draft.channel
        recipients = [r for r in draft.recipients if r not in draft.dropped]
        if not recipients:
            return None
        now = time.time()
        queue_id = self.ids.new(now)
        message_id = found.message_id or f"{queue_id}@{ctx['domain']}"
        trace = received(queue_id, now, draft.recipients)
        chain = []
        if self.lineage is not None and (found.in_reply_to or (sent_from and sent_from["vcard"] and found.parents)):
            chain = await self.lineage(ctx["tenant_id"], found.parents)
        edits, copy = await channel.edits(found, sent_from, chain)
        if copy and policy.normalise(copy) not in {policy.normalise(r) for r in recipients}:
            recipients.append(copy)   # the reply copy: an envelope recipient, never a header the recipients see
        # Prepared inside the received buffer: the message is held once, not twice (data.py), unless
        # the channel address changes its body.
        body = prepare.prepare_in_place(found, data, received=trace, message_id=message_id,
                                        add_message_id=found.message_id is None, now=now, edits=edits)
        if len(body) > cfg.max_message_size:
            raise policy.message_too_big(cfg.max_message_size)
        return NewMessage(queue_id=queue_id, tenant_id=ctx["tenant_id"], usecase_id=usecase_id_of(ctx), mail_from=draft.mail_from,
                          message_id=message_id, body=body, recipients=recipients, parents=found.parents, client=client,
                          lifetime=self.lifetime, now=now, event_data=event_data, idempotency=idempotency)

    async def commit(self, draft: Draft, new: NewMessage, *, started: float, client: str, source: str = "smtp") -> dict[str, Any]:
        """queue.put, then the bookkeeping: once the put returns, the message is ours and nothing
        after it may fail the caller (a refusal now would make the client send it again)."""
        result = await self.submit(new)
        if result.get("replayed") is not None:
            return result   # another request with the same Idempotency-Key committed first: nothing new was queued
        self._after_commit(draft, new, result, started, client, source)
        return result

    def _after_commit(self, draft: Draft, new: NewMessage, result: dict[str, Any], started: float, client: str, source: str) -> None:
        """Delivery is told first; each part fails on its own."""
        if self.on_queued is not None:
            try:
                self.on_queued(new.queue_id)
            except Exception as exc:  # noqa: BLE001 - the message is queued; the scheduler's own poll finds it
                log.error("submission_after_commit_failed", part="notify", queue_id=new.queue_id, error_type=type(exc).__name__,
                          exc_info=exc)
        ctx = draft.ctx
        try:
            self.quota.accepted(ctx["tenant_id"])
            elapsed = time.perf_counter() - started
            self.metrics.messages_received.inc()
            self.metrics.submission_accept_seconds.observe(elapsed)
            self.metrics.message_size.observe(len(new.body))
            log.info("queued", queue_id=new.queue_id, tenant=ctx.get("tenant"), usecase=ctx.get("usecase") or ctx.get("name"),
                     mail_from=draft.mail_from, recipients=len(draft.recipients), size=len(new.body), message_id=new.message_id,
                     client=client, source=source, held=result.get("hold_reason") or None, delay=round(elapsed, 4))
            if result.get("hold_reason"):
                log.info("held", queue_id=new.queue_id, reason=result["hold_reason"], recipients=len(draft.recipients))
        except Exception as exc:  # noqa: BLE001 - counting and logging must not turn a queued message into a refusal
            log.error("submission_after_commit_failed", part="metrics", queue_id=new.queue_id, error_type=type(exc).__name__,
                      exc_info=exc)
