"""Operator control of the outbound queue (Postfix's vocabulary), and the queue's counts.

    queue.list  [tenant] [state] [all]   unfinished messages (all: finished too) with their recipients' states
    queue.show  queue_id                 envelope, recipients, every attempt with the remote reply
    queue.hold|release|retry|delete ids  exactly the named messages; ["ALL"] only with a tenant or yes=True
    queue.flush [tenant]                 deferred recipients due now
    queue.counts [tenant]                recipients by state

Each action is one transaction: an unknown queue id refuses the whole request and changes nothing.
``QueueMonitor`` keeps a recent snapshot of the counts for `gateway status` and /metrics, which
are read synchronously and must not wait on the database.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily

from .. import validate
from ..admin.registry import admin_method
from ..errors import InvalidArgument, NotFound
from ..lifecycle import Component
from ..metrics import Metrics
from ..store import Store
from ..store.queue import STATES

log = structlog.get_logger("queue")

QUEUE_ID = re.compile(r"^[0-9a-hjkmnp-tv-z]{16}$")
ALL = "ALL"
EVENTS = {"hold": "held", "release": "released", "retry": "retried", "delete": "deleted"}


def check_ids(ids: list[str], tenant: str | None, yes: bool) -> list[str] | None:
    """The named queue ids, or None for ALL (allowed only narrowed to a tenant or confirmed)."""
    if not ids:
        raise InvalidArgument("name at least one queue id, or ALL")
    if ALL in ids:
        if len(ids) != 1:
            raise InvalidArgument("ALL cannot be mixed with queue ids")
        if tenant is None and not yes:
            raise InvalidArgument("ALL acts on every tenant's mail: add --tenant T, or --yes to confirm")
        return None
    ids = [i.lower() for i in ids]  # ids are printed in lower case; accept them pasted in any case
    bad = [i for i in ids if not QUEUE_ID.match(i)]
    if bad:
        raise InvalidArgument(f"not a queue id: {', '.join(validate.shown(i) for i in bad[:5])}")
    return list(dict.fromkeys(ids))


class QueueService:
    def __init__(self, store: Store, *, wake: Callable[[], Any] | None = None, on_change: Callable[[], Any] | None = None):
        self.store = store
        self.wake = wake
        self.on_change = on_change

    async def _tenant_id(self, tenant: str | None) -> int | None:
        validate.optional_name(tenant, "tenant")
        return None if tenant is None else await self.store.pauses.tenant_id(tenant)

    @admin_method("queue.list")
    async def list(self, tenant: str | None = None, state: str | None = None, limit: int = 1000,
                   all: bool = False) -> list[dict[str, Any]]:  # noqa: A002 - the CLI's --all
        """What is still to do (a pending, deferred or held recipient); ``all`` adds finished messages."""
        if state is not None and state not in STATES:
            raise InvalidArgument(f"unknown state {state!r}: one of {', '.join(STATES)}")
        if not 1 <= limit <= 100_000:
            raise InvalidArgument("limit must be 1-100000")
        return await self.store.queue.list(tenant_id=await self._tenant_id(tenant), state=state, limit=limit, finished=all)

    @admin_method("queue.show")
    async def show(self, queue_id: str) -> dict[str, Any]:
        queue_id = queue_id.lower()
        if not QUEUE_ID.match(queue_id):
            raise InvalidArgument(f"not a queue id: {validate.shown(queue_id)}")
        message = await self.store.queue.show(queue_id)
        if message is None:
            raise NotFound(f"no message {queue_id} in the queue")
        return message

    @admin_method("queue.counts")
    async def counts(self, tenant: str | None = None) -> dict[str, int]:
        return await self.store.queue.counts(await self._tenant_id(tenant))

    async def _act(self, action: str, ids: list[str], tenant: str | None, yes: bool) -> dict[str, Any]:
        named = check_ids(ids, tenant, yes)
        tenant_id = await self._tenant_id(tenant)
        result = await self.store.queue.act(action, named, tenant_id=tenant_id)
        for queue_id, n in result["changed"].items():
            if n or action == "delete":
                log.info(EVENTS[action], queue_id=queue_id, recipients=n, by="operator")
        if action in ("release", "retry") and self.wake is not None:
            self.wake()
        if self.on_change is not None:
            self.on_change()
        return {"action": action, "changed": result["changed"], "messages": len(result["changed"]),
                "recipients": sum(result["changed"].values()), "in_flight": result.get("in_flight", {})}

    @admin_method("queue.hold")
    async def hold(self, ids: list[str], tenant: str | None = None, yes: bool = False) -> dict[str, Any]:
        return await self._act("hold", ids, tenant, yes)

    @admin_method("queue.release")
    async def release(self, ids: list[str], tenant: str | None = None, yes: bool = False) -> dict[str, Any]:
        return await self._act("release", ids, tenant, yes)

    @admin_method("queue.retry")
    async def retry(self, ids: list[str], tenant: str | None = None, yes: bool = False) -> dict[str, Any]:
        return await self._act("retry", ids, tenant, yes)

    @admin_method("queue.delete")
    async def delete(self, ids: list[str], tenant: str | None = None, yes: bool = False) -> dict[str, Any]:
        return await self._act("delete", ids, tenant, yes)

    @admin_method("queue.flush")
    async def flush(self, tenant: str | None = None) -> dict[str, Any]:
        n = await self.store.queue.flush(tenant_id=await self._tenant_id(tenant))
        log.info("queue_flushed", recipients=n, tenant=tenant)
        if self.wake is not None:
            self.wake()
        return {"flushed": n}


class QueueMonitor(Component):
    """Recipients by state, refreshed every ``interval`` seconds (and on demand), for status and metrics."""

    name = "queue"

    def __init__(self, store: Store, metrics: Metrics | None = None, *, interval: float = 5.0):
        self.store = store
        self.interval = interval
        self.counts: dict[str, int] = dict.fromkeys(STATES, 0)
        self._task: asyncio.Task | None = None
        self._kick = asyncio.Event()
        if metrics is not None:
            metrics.add_collector(self.families)

    async def refresh(self) -> dict[str, int]:
        self.counts = await self.store.queue.counts()
        return self.counts

    def kick(self) -> None:
        """Refresh soon (after an operator action), without waiting for the interval."""
        self._kick.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a failed count must not end the loop
                log.exception("queue_counts_failed")
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), self.interval)
            except asyncio.TimeoutError:
                pass

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="queue-monitor")

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def status(self) -> dict[str, Any]:
        return {"queue": dict(self.counts)}

    def families(self) -> list[Any]:
        gauge = GaugeMetricFamily("gateway_queue_recipients", "Queued recipients by state (refreshed every few seconds).",
                                  labels=["state"])
        for state in STATES:
            gauge.add_metric([state], self.counts.get(state, 0))
        messages = GaugeMetricFamily("gateway_queue_messages", "Messages in the queue (any state).")
        messages.add_metric([], self.counts.get("messages", 0))
        return [gauge, messages]
