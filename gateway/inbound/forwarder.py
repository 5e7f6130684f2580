"""The forwarder: received mail of a use case or channel address with a forwarding rule, sent on
over SMTP through the outbound queue.

    in:   inbound_forward_outbox rows (store/forwards.py), written with the ``received`` event
    out:  one queued outbound message per received message, to every distinct address the rules
          of its use case and address name, with a ``forwarded`` event; the outbox row goes in the
          same write (forwarded once, whatever crashes)

What is sent: the stored copy as received (with our Authentication-Results header on top, when the
processor added it) under one new Received header (trace, and the hop count that stops a forward
that loops back to one of our addresses at the MX's Received limit). Nothing else changes, so the
original sender's DKIM signature still verifies; delivery adds ours (the use case's domain).
Envelope: MAIL FROM is the use case's VERP return path (delivery makes it from the queued
mail_from, here the channel address the mail reached), so bounces of a forward come back to the
gateway and never to the original sender (no backscatter). A forward does not count against the
tenant's monthly quota (it is mail the tenant received, like a DSN is mail the gateway wrote).
Only kinds ``message`` and ``reply`` are forwarded; DSNs, complaints, auto-replies and unsubscribe
requests are the gateway's own business (forwarding auto-replies invites loops): their outbox rows
are skipped with a ``forward_skipped`` event. So is a message that already carries a forward trace
of this gateway: a message is forwarded by us once, so a rule whose mailbox forwards back never loops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import structlog

from ..config import Config
from ..errors import StorageFull
from ..lifecycle import Component
from ..store import Store
from ..store.queue import NewMessage, QueueIds

log = structlog.get_logger("inbound")

FORWARDED_KINDS = ("message", "reply")
BATCH = 50


def forward_received(*, hostname: str, queue_id: str, inbound_id: str, recipients: list[str], now: float) -> bytes:
    """The trace field a forward gets on top of the stored copy (RFC 5321 4.4)."""
    lines = [f"Received: by {hostname} (gateway) with forward id {queue_id}", f"\t(inbound {inbound_id})"]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>")
    lines[-1] += f"; {formatdate(now, localtime=True)}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def forwarded_here(raw: bytes, hostname: str) -> bool:
    """Whether the header section carries a trace field ``forward_received`` wrote on this gateway."""
    end = min((i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0), default=len(raw))
    mark = f"\nreceived: by {hostname} (gateway) with forward id ".lower().encode("utf-8", "surrogateescape")
    return mark in b"\n" + raw[:end].lower()


class Forwarder(Component):
    name = "forwarder"

    def __init__(self, store: Store, config: Callable[[], Config], *, on_queued: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time):
        self.store, self.config, self.on_queued, self.clock = store, config, on_queued, clock
        self.ids = QueueIds()
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self.forwarded = 0
        self.skipped = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="forwarder")

    async def stop(self, deadline: float) -> None:
        # A forward cut off here wrote nothing (its write is one transaction): it goes after the restart.
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {"forwarder": {"forwarded": self.forwarded, "skipped": self.skipped}}

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                done = await self.run_once()
            except StorageFull:
                done = 0   # no room to queue: the rows wait in the outbox
            except Exception:  # noqa: BLE001 - the next round tries again; nothing is lost
                log.exception("forwarder_round_failed")
                done = 0
            if done:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.config().inbox.forward_interval)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Forward (or skip) what waits in the outbox; the number of rows handled."""
        handled = 0
        for outbox_id in await self.store.forwards.pending(limit=BATCH):
            try:
                await self.forward(outbox_id)
            except StorageFull:
                raise
            except Exception:  # noqa: BLE001 - this row stays in the outbox and is tried next round; the others go on
                log.exception("forward_failed", outbox_id=outbox_id)
                continue
            handled += 1
        return handled

    async def forward(self, outbox_id: int) -> dict[str, Any] | None:
        plan = await self.store.forwards.plan(outbox_id)
        if plan is None:
            return None
        msg, tenant_id, inbound_id = plan["message"], plan["tenant_id"], plan["inbound_id"]
        reason = ("the message is gone" if msg is None else
                  f"kind {msg['kind']} is not forwarded" if msg["kind"] not in FORWARDED_KINDS else
                  "no forwarding rule left" if not plan["to"] else
                  "no use case to send it under" if msg["usecase_id"] is None else "")
        if reason:
            await self.store.forwards.skip(outbox_id, tenant_id, inbound_id, reason)
            self.skipped += 1
            return None
        cfg = self.config()
        now = self.clock()
        queue_id = self.ids.new(now)
        raw = await self.store.inbound.raw(msg["id"])
        if forwarded_here(raw, cfg.daemon.hostname):
            # Our own forward come back (a mailbox it went to forwards to one of our addresses): sent
            # on again it loops until the MX's Received limit, multiplied by every rule's fan-out.
            await self.store.forwards.skip(outbox_id, tenant_id, inbound_id, "already forwarded by this gateway (a forwarding loop)")
            self.skipped += 1
            return None
        body = forward_received(hostname=cfg.daemon.hostname, queue_id=queue_id, inbound_id=inbound_id,
                                recipients=plan["to"], now=now) + raw
        del raw
        sender = msg["address"] or (msg["recipients"][0] if msg["recipients"] else "")
        new = NewMessage(queue_id=queue_id, tenant_id=tenant_id, usecase_id=msg["usecase_id"], mail_from=sender,
                         message_id=msg["header_message_id"] or f"{queue_id}@{cfg.daemon.hostname}", body=body,
                         recipients=list(plan["to"]), thread_id=msg["thread_id"], lifetime=cfg.queue.lifetime,
                         counts_to_quota=False, now=now)
        result = await self.store.forwards.queued(outbox_id, new, inbound_id)
        if result is None:
            return None
        self.forwarded += 1
        log.info("inbound_forwarded", tenant_id=tenant_id, inbound_id=inbound_id, queue_id=queue_id, to=len(plan["to"]))
        if self.on_queued is not None:
            self.on_queued()
        return result
