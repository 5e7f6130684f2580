"""Lanes: per-destination queues of prepared work and the tasks that drain them.

At most ``per_destination`` lanes run to one destination (a recipient domain or a connector) and
``workers`` in all. A lane takes its destination's work in order and hands each item to
``deliver``; a destination's next lane reuses the pooled SMTP session the previous one gave back.
``deliver`` must not raise for a work item's own trouble (it records it); a lane that is cancelled
(shutdown past its deadline) stops at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .work import Work


class Lanes:
    def __init__(self, deliver: Callable[[Work], Awaitable[None]], limits: Callable[[], tuple[int, int]],
                 on_lane_done: Callable[[], None] = lambda: None):
        self.deliver = deliver
        self.limits = limits              # () -> (workers, per_destination), read live (config reloads)
        self.on_lane_done = on_lane_done
        self._queues: dict[tuple, deque[Work]] = {}
        self._lanes: dict[tuple, int] = {}
        self.tasks: set[asyncio.Task] = set()
        self.closed = False

    def add(self, work: Work) -> None:
        self._queues.setdefault(work.dest, deque()).append(work)

    @property
    def waiting(self) -> int:
        """Work items queued, not yet taken by a lane."""
        return sum(len(q) for q in self._queues.values())

    def start(self) -> None:
        workers, per_destination = self.limits()
        for dest, queue in list(self._queues.items()):
            while queue and len(self.tasks) < workers and self._lanes.get(dest, 0) < min(per_destination, len(queue)):
                self._lanes[dest] = self._lanes.get(dest, 0) + 1
                task = asyncio.get_running_loop().create_task(self._lane(dest))
                self.tasks.add(task)
                task.add_done_callback(self._done)
            if len(self.tasks) >= workers:
                return

    def take_waiting(self) -> list[Work]:
        """Remove and return every queued item (shutdown: their claims are released, not sent)."""
        out = [w for q in self._queues.values() for w in q]
        self._queues.clear()
        return out

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if self.closed:
            return
        self.start()
        self.on_lane_done()

    async def _lane(self, dest: tuple) -> None:
        try:
            while not self.closed:
                queue = self._queues.get(dest)
                if not queue:
                    break
                work = queue.popleft()
                if not queue:
                    del self._queues[dest]
                await self.deliver(work)
        finally:
            left = self._lanes.get(dest, 1) - 1
            if left:
                self._lanes[dest] = left
            else:
                self._lanes.pop(dest, None)

    async def drain(self, timeout: float) -> None:
        """Let running lanes finish their current item until ``timeout``; cancel what is left."""
        self.closed = True
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
