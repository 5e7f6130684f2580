"""Outcomes: what each recipient's answer means for its state, and the DSN for those that failed.

Plain functions on values (the work item, the replies, the clock, the retry settings):

    classify    a reply per recipient -> Outcome (delivered, deferred with its next attempt, bounced;
                a deferral past the message's lifetime bounces) and the FailedRecipients for a DSN; a
                failed one carries its bounce class (gateway/feedback/classify.py) and what it does to
                the suppression list (gateway/suppression.py feedback)
    conclude    the outcomes of the recipients not yet recorded when an attempt ends: what the remote
                said where it said something; for the rest, held (our own failure) or deferred
                (the time budget ran out, or a shutdown interrupted it)
    make_dsn    the DSN message covering the failed recipients, as the store queues it
    without_dsn when building the DSN failed: the bounced recipients are held instead (with the
                reason), so the sender is not left untold, and nobody else is touched
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from .. import suppression
from ..config import DeliveryConfig
from ..feedback.classify import classify as classify_reply
from ..store.delivery import Dsn, Outcome
from ..store.queue import NewMessage, QueueIds
from .backoff import next_attempt
from .dsn import FailedRecipient, build_dsn, failure_status
from .reply import Reply
from .work import Work

NO_REPLY = Reply.temporary("no reply recorded for this recipient", "4.0.0")


def classify(work: Work, rows: Iterable[dict[str, Any]], results: dict[str, Reply], *, now: float, duration: float,
             config: DeliveryConfig, rand: Callable[[], float], missing: Reply = NO_REPLY) -> tuple[list[Outcome], list[FailedRecipient]]:
    msg = work.message
    outcomes, failed = [], []
    for r in rows:
        reply = results.get(r["rcpt"]) or missing
        state = reply.outcome
        expired = state == "deferred" and now >= msg["expires_at"]
        next_at = 0.0
        if expired:
            state = "bounced"
        elif state == "deferred":
            next_at = next_attempt(now, r["attempts"] + 1, msg["expires_at"], base=config.backoff_base,
                                   maximum=config.backoff_max, jitter=config.backoff_jitter, rand=rand)
        event = {"rcpt": r["rcpt"], "delay": round(now - msg["created_at"], 3), "attempts": r["attempts"] + 1,
                 "route": work.route.kind}
        if expired:
            event["expired"] = True
        verdict = classify_reply(reply.code, reply.enhanced, reply.text) if state != "delivered" else None
        kind = verdict.kind if verdict else ""
        if expired and kind == "hard":
            kind = "soft"   # a deferral that ran out of time never proved the address wrong
        outcomes.append(Outcome(recipient_id=r["id"], state=state, code=reply.code or None, enhanced=reply.enhanced,
                                reply=reply.line, remote=reply.remote, duration=duration, next_attempt_at=next_at, event=event,
                                bounce_class=kind, class_reason=verdict.reason if verdict else "",
                                feedback=None if not msg["mail_from"] else   # our own DSNs never feed the tenant's list
                                suppression.feedback(state, kind, r["rcpt"], msg["queue_id"], soft_limit=config.soft_bounce_limit,
                                                     soft_window=config.soft_bounce_window, soft_for=config.soft_bounce_suppress_for)))
        if state == "bounced":
            failed.append(FailedRecipient(r["rcpt"], failure_status(reply.status, expired),
                                          reply.line + (" (gave up: message lifetime ran out)" if expired else ""),
                                          reply.remote.split("[")[0] if reply.remote else "", expired))
    return outcomes, failed


def suppressed(rows: Iterable[dict[str, Any]], entries: dict[int, dict[str, Any]]) -> list[Outcome]:
    """Recipients put on the suppression list while their message was queued: final, nothing sent, no DSN."""
    return [Outcome(recipient_id=r["id"], state="suppressed", attempted=False, reply=f"suppressed: {suppression.words(entries[r['id']])}",
                    event={"rcpt": r["rcpt"], "reason": entries[r["id"]]["reason"], "scope": entries[r["id"]]["scope"],
                           "source": entries[r["id"]]["source"], "checked": "delivery"})
            for r in rows if r["id"] in entries]


def held(rows: Iterable[dict[str, Any]], reason: str) -> list[Outcome]:
    """Our own failure before anything was sent to these recipients: held, no attempt counted."""
    return [Outcome(recipient_id=r["id"], state="held", hold_reason=reason, attempted=False, event={"rcpt": r["rcpt"]})
            for r in rows]


def conclude(work: Work, *, now: float, duration: float, config: DeliveryConfig, rand: Callable[[], float],
             failure: str = "", interrupted: str = "") -> tuple[list[Outcome], list[FailedRecipient]]:
    """Outcomes of every recipient not yet recorded, from ``work.results`` (what the remote said).

    Without a reply: held with ``failure`` (our own code failed), else deferred with ``interrupted``
    (time budget, shutdown), else deferred as unanswered.
    """
    rows = work.rows_left()
    answered = [r for r in rows if r["rcpt"] in work.results]
    unanswered = [r for r in rows if r["rcpt"] not in work.results]
    outcomes, failed = classify(work, answered, work.results, now=now, duration=duration, config=config, rand=rand)
    if failure:
        outcomes += held(unanswered, failure)
    else:
        missing = Reply.temporary(interrupted, "4.4.2") if interrupted else NO_REPLY
        more, more_failed = classify(work, unanswered, {}, now=now, duration=duration, config=config, rand=rand, missing=missing)
        outcomes += more
        failed += more_failed
    return outcomes, failed


def make_dsn(work: Work, failed: list[FailedRecipient], *, now: float, hostname: str, sender: str, ids: QueueIds) -> Dsn:
    msg = work.message
    body, message_id = build_dsn(original=work.data or b"", queue_id=msg["queue_id"], arrival=msg["created_at"],
                                 envelope_from=msg["mail_from"], failed=failed, reporting_mta=hostname, sender=sender, now=now)
    by_rcpt = {r["rcpt"]: r["id"] for r in work.rcpts}
    new = NewMessage(queue_id=ids.new(now), tenant_id=msg["tenant_id"], usecase_id=msg["usecase_id"], mail_from="",
                     message_id=message_id, body=body, recipients=[msg["mail_from"]], now=now, counts_to_quota=False)
    return Dsn(message=new, recipient_ids=[by_rcpt[f.rcpt] for f in failed], original_queue_id=msg["queue_id"],
               tenant_id=msg["tenant_id"])


def without_dsn(outcomes: list[Outcome], error: BaseException) -> list[Outcome]:
    """The DSN could not be built: hold the bounced recipients (an operator's `queue release` tries
    them again and the DSN with them); delivered and deferred ones are recorded as they are."""
    reason = f"internal error building the DSN: {type(error).__name__}: {error}"
    # Not suppressed either: released, the recipient must bounce again with its DSN, not end
    # 'suppressed' at the check before delivery with the sender never told.
    return [dataclasses.replace(o, state="held", hold_reason=f"bounced ({o.reply}); {reason}", feedback=None) if o.state == "bounced" else o
            for o in outcomes]
