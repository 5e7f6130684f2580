"""The re-verifier: a daemon component that checks verified and failing domains again on an interval.

A verified domain whose required record disappeared turns ``failing`` (event ``domain_failing`` and
a warning log line, written by the service); submissions then see ``domain_state`` "failing" in
their use case context and refuse. A failing domain that is fixed turns ``verified`` again.
Each round verifies the due domains with at most ``verify_concurrency`` in flight.

It knows nothing of the layers above: the daemon hands it ``reverify``, the function that runs one
round (the domain service's), and gives that service its new configuration on SIGHUP itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from ..lifecycle import Component

if TYPE_CHECKING:
    from ..config import Config

# One round: verify the domains last checked more than ``older_than`` seconds ago, at most
# ``concurrency`` at once; returns a summary ({"checked": n, "states": {...}, "seconds": s}).
Reverify = Callable[..., Awaitable[dict[str, Any]]]

log = structlog.get_logger("domains")


class Reverifier(Component):
    name = "domain-reverifier"

    def __init__(self, reverify: Reverify, *, interval: float, concurrency: int):
        self.reverify = reverify
        self.interval = interval
        self.concurrency = concurrency
        self.rounds = 0
        self.last_round: dict[str, Any] = {}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._round_done = asyncio.Condition()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="domain-reverifier")

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self, config: "Config") -> None:
        self.interval = config.domains.reverify_interval
        self.concurrency = config.domains.verify_concurrency
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {"domain_reverifier": {"interval": self.interval, "rounds": self.rounds, "last_round": self.last_round}}

    async def next_round(self) -> dict[str, Any]:
        """Wait for the next round to finish (tests, and `domain reverify --wait`)."""
        async with self._round_done:
            target = self.rounds + 1
            await self._round_done.wait_for(lambda: self.rounds >= target)
            return self.last_round

    async def _run(self) -> None:
        while True:
            if self.interval <= 0:
                await self._wait(None)  # disabled until a reload sets an interval
                continue
            await self._wait(self.interval)
            if self.interval <= 0:
                continue
            try:
                summary = await self.reverify(older_than=self.interval * 0.9, concurrency=self.concurrency)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("domain_reverify_round_failed")
                summary = {"error": True}
            summary["finished_at"] = time.time()
            if summary.get("checked"):
                log.info("domain_reverify_round", **summary)
            async with self._round_done:
                self.rounds += 1
                self.last_round = summary
                self._round_done.notify_all()

    async def _wait(self, timeout: float | None) -> None:
        """Sleep until the interval passes or a reload wakes us (then the new interval applies)."""
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
