"""Reporting: the log line and metric for each recorded outcome, and the stall watch behind /health.

``report`` runs after a record committed, for the recipients it recorded (a recipient deleted or
released meanwhile is not reported). ``StallWatch`` notices delivery that stopped moving: work is
due, claimed or failing to be written, no attempt is running, and for ``after`` seconds nothing was
recorded and no attempt started. The daemon's /health turns its reason into a 503.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .. import logs
from ..metrics import Metrics
from ..store.delivery import Outcome
from .work import Work

log = logs.get_logger("delivery")   # assembled once per configuration (logs.py)


def report(metrics: Metrics, work: Work, outcomes: list[Outcome], result: dict[str, Any], now: float) -> None:
    msg = work.message
    recorded = set(result.get("recorded", ()))
    kind = work.route.kind
    for o in outcomes:
        if o.recipient_id not in recorded:
            continue
        fields = {"queue_id": msg["queue_id"], **o.event, "reply": o.reply, "remote": o.remote}
        if o.state == "delivered":
            metrics.delivered.labels(route=kind).inc()
            metrics.delivery_duration.observe(max(0.0, now - msg["created_at"]))
            log.info("delivered", **fields)
        elif o.state == "deferred":
            metrics.deferred.labels(route=kind).inc()
            log.info("deferred", next_attempt_in=round(o.next_attempt_at - now, 1), **fields)
        elif o.state == "bounced":
            metrics.bounced.labels(route=kind).inc()
            log.info("bounced", **fields)
        elif o.state == "suppressed":
            log.info("suppressed", **fields)
        else:
            metrics.held.inc()
            log.warning("held", queue_id=msg["queue_id"], rcpt=o.event.get("rcpt"), reason=o.hold_reason)
    if result.get("dsn"):
        metrics.dsns.inc()
        log.info("dsn_sent", queue_id=msg["queue_id"], dsn_queue_id=result["dsn"], to=msg["mail_from"])


class StallWatch:
    """When delivery last moved, and what last went wrong in our own path (claim, route, record, release)."""

    def __init__(self, after: float, clock: Callable[[], float] = time.monotonic):
        self.after = after
        self.clock = clock
        self.moved_at = clock()
        self.trouble = ""

    def moved(self) -> None:
        """An outcome was recorded, an attempt started, or nothing was due: not stalled."""
        self.moved_at = self.clock()
        self.trouble = ""

    def failed(self, what: str) -> None:
        self.trouble = " ".join(what.split())[:300]

    def problems(self, *, claimed: int, due: bool, sending: int) -> list[str]:
        if sending or not (claimed or due or self.trouble):
            return []
        still = self.clock() - self.moved_at
        if still < self.after:
            return []
        why = self.trouble or f"{claimed} recipients claimed, none sent or recorded"
        return [f"delivery stalled for {still:.0f}s: {why}"]
