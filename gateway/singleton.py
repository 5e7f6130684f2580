"""A job that runs on one node at a time: a component started only while this process holds its lease.

    start:    try the lease (store.leases.acquire); held -> start the job. Then every third of the
              lease: renew it while the job runs, or try to take it while another holds it (as soon
              as that one's lease runs out)
    lost:     a renewal another node refused (our lease ran out and it took the job) -> stop the job;
              renewals that fail (the store) until a third of the lease is left -> stop the job too,
              before another node may start it; try to take the lease again later
    stop:     stop the job, give the lease back (another node takes the job at its next try)

The lease lasts ``daemon.job_lease`` seconds. A dead node's job moves to another within that plus a
third of it; two nodes never run it at once as long as their clocks agree to well within it and a
live holder's renewal is never held up past two thirds of it. The job itself does not know: the same
component runs under a lease on several nodes, and alone in tests that build it directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from .lifecycle import Component, Listener

if TYPE_CHECKING:
    from aiohttp import web

    from .config import Config
    from .metrics import Metrics
    from .store.leases import Leases

log = structlog.get_logger("singleton")


class Singleton(Component):
    def __init__(self, job: Component, leases: "Leases", lease: str, holder: str, duration: Callable[[], float], *,
                 metrics: "Metrics | None" = None, clock: Callable[[], float] = time.time):
        self.job = job
        self.name = job.name
        self.leases = leases
        self.lease = lease          # the job's row in the leases table
        self.holder = holder        # this process's token (gateway/node.py)
        self.duration = duration    # () -> seconds (daemon.job_lease; SIGHUP may change it)
        self.metrics = metrics
        self.clock = clock
        self.running = False
        self.takeovers = 0          # times this process took the job up
        self._valid_until = 0.0     # our clock: the lease is surely ours until then
        self._task: asyncio.Task | None = None
        self._config: "Config | None" = None

    async def start(self) -> None:
        # The first try is awaited, so a single node runs its jobs as soon as it has started.
        wait = await self._step()
        self._task = asyncio.get_running_loop().create_task(self._run(wait), name=f"lease:{self.lease}")

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.running:
            await self._stop_job(deadline, why="stopping")
            try:
                await self.leases.release(self.lease, self.holder)
            except Exception:  # noqa: BLE001 - it runs out by itself within the lease
                log.exception("job_lease_release_failed", job=self.lease)

    async def reload(self, config: "Config") -> None:
        self._config = config
        if self.running:
            await self.job.reload(config)

    def status(self) -> dict[str, Any]:
        return self.job.status()

    def problems(self) -> list[str]:
        return self.job.problems() if self.running else []

    def listeners(self) -> list[Listener]:
        return self.job.listeners()

    def web_routes(self) -> list["web.RouteDef"]:
        return self.job.web_routes()

    # ------------------------------------------------------------------ the lease

    async def _run(self, wait: float) -> None:
        while True:
            await asyncio.sleep(wait)
            try:
                wait = await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the job's own start failed: keep the loop, try again later
                log.exception("job_start_failed", job=self.lease)
                wait = self.duration() / 3

    async def _step(self) -> float:
        """One try: renew (running) or acquire (not); start or stop the job; how long to wait."""
        duration = self.duration()
        now = self.clock()
        until = now + duration
        try:
            if self.running:
                ours, other_until = await self.leases.renew(self.lease, self.holder, until), None
            else:
                other_until = await self.leases.acquire(self.lease, self.holder, now=now, until=until)
                ours = other_until is None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the store failed: keep what we have while it is surely ours
            log.warning("job_lease_failed", job=self.lease, error=f"{type(exc).__name__}: {exc}")
            if self.running and self.clock() >= self._valid_until - duration / 3:
                await self._stop_job(asyncio.get_running_loop().time() + duration / 3, why="cannot renew its lease")
            return duration / 3
        if ours:
            self._valid_until = until   # from the clock read before the write: never later than the store's
            if not self.running:
                await self._start_job()
            return duration / 3
        if self.running:
            await self._stop_job(asyncio.get_running_loop().time() + duration / 3, why="its lease was taken over")
        # Another holds it: try again as soon as its lease would run out (a dead holder never renews).
        assert other_until is not None
        return min(max(other_until - self.clock() + 0.01, 0.01), duration / 3)

    async def _start_job(self) -> None:
        if self._config is not None:
            await self.job.reload(self._config)  # a reload while it did not run: the job starts with it
        await self.job.start()
        self.running = True
        self.takeovers += 1
        if self.metrics is not None:
            self.metrics.jobs_held.labels(self.lease).set(1)
        log.info("job_lease_taken", job=self.lease, holder=self.holder)

    async def _stop_job(self, deadline: float, *, why: str) -> None:
        self.running = False
        if self.metrics is not None:
            self.metrics.jobs_held.labels(self.lease).set(0)
        (log.info if why == "stopping" else log.warning)("job_stopped", job=self.lease, why=why)
        try:
            await self.job.stop(deadline)
        except Exception:  # noqa: BLE001 - the job is gone either way
            log.exception("job_stop_failed", job=self.lease)
