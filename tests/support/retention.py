"""A large store, made fast through the store's own write functions: finished and open messages for
the sweeper's tests and benchmark.

    ids = await fill_store(store, ctx, finished=50_000, pending=10, deferred=10, held=10)

Each chunk of messages is one write: ``_put`` as submission queues them, then ``_claim`` and
``_record`` as delivery records a 250 (or a deferral), so the finished-message bookkeeping
(migration 0008's trigger) runs exactly as in service. Only the batching differs from a live daemon.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.store import Store
from gateway.store.delivery import Outcome, _claim, _record, _release
from gateway.store.queue import NewMessage, QueueIds, _put

_ids = QueueIds()
CHUNK = 500


def _messages(ctx: dict[str, Any], n: int, body: bytes, now: float, hold_reason: str = "") -> list[NewMessage]:
    out = []
    for i in range(n):
        qid = _ids.new(now)
        out.append(NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["usecase_id"], mail_from="app@example.com",
                              message_id=f"{qid}@example.com", body=body, recipients=[f"r{i}@example.org"],
                              hold_reason=hold_reason, now=now))
    return out


def _queue_and_record(conn, messages: list[NewMessage], state: str, now: float) -> list[str]:
    for m in messages:
        _put(conn, m)
    if state in ("delivered", "bounced", "deferred"):
        token = f"fill:{now}"
        mine = {m.queue_id for m in messages}
        claimed = _claim(conn, token, now + 1, 1_000_000)
        # Mail queued by an earlier call is due too: hand it back untouched.
        _release(conn, token, [row["id"] for row in claimed if row["message"]["queue_id"] not in mine])
        code = {"delivered": 250, "bounced": 550, "deferred": 450}[state]
        for row in claimed:
            msg = row["message"]
            if msg["queue_id"] not in mine:
                continue
            outcome = Outcome(recipient_id=row["id"], state=state, code=code, reply=f"{code} test", remote="mx.example.org",
                              next_attempt_at=now + 86400 * 365)
            _record(conn, token, msg["tenant_id"], msg["queue_id"], [outcome], None, now)
    return [m.queue_id for m in messages]


async def fill_store(store: Store, ctx: dict[str, Any], *, finished: int = 0, pending: int = 0, deferred: int = 0,
                     held: int = 0, body_size: int = 1024, now: float | None = None) -> dict[str, list[str]]:
    """Queue messages of one recipient each; returns their queue ids by kind."""
    now = time.time() if now is None else now
    body = b"From: app@example.com\r\nSubject: fill\r\n\r\n" + b"x" * body_size + b"\r\n"
    out: dict[str, list[str]] = {}
    for kind, n, state, hold in (("finished", finished, "delivered", ""), ("pending", pending, "pending", ""),
                                 ("deferred", deferred, "deferred", ""), ("held", held, "held", "operator")):
        ids: list[str] = []
        for start in range(0, n, CHUNK):
            chunk = _messages(ctx, min(CHUNK, n - start), body, now, hold)
            ids += await store.db.write(_queue_and_record, chunk, state, now)
        out[kind] = ids
    return out
