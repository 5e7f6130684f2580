"""The in-flight message budget: one count of message bytes held in memory, shared by submission and delivery.

A message in flight costs a few times its size (the DATA buffer, the prepared copy, the signed copy,
the TLS write buffer), so without a ceiling a handful of large messages, or many clients at once,
can push the daemon past the memory it was given. Every stage that holds a message body takes its
size from this budget first and gives it back when the body is gone:

    submission  DATA: ``try_acquire`` (no waiting: a client past the budget gets 452 4.3.1 and retries)
    delivery    before loading and signing bodies: ``acquire`` (waits: the queue is durable, delivery can wait)

One message larger than the whole budget is still let through when nothing else is in flight, so a
budget smaller than ``submission.max_message_size`` slows large mail down instead of refusing it
forever. The daemon builds one budget and hands it to both (no globals).
"""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    """A counted budget of bytes. Not thread-safe: use it from the event loop only."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.refused = 0            # try_acquire calls that failed (a metric)
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    def configure(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _fits(self, n: int) -> bool:
        return self.in_use + n <= self.limit or self.in_use == 0

    def _take(self, n: int) -> None:
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def fits(self, n: int) -> bool:
        """``try_acquire`` would take ``n`` bytes now (nobody waits ahead and they fit)."""
        return not self._waiters and self._fits(n)

    def try_acquire(self, n: int) -> bool:
        """Take ``n`` bytes now if they fit (and nobody is waiting ahead); False otherwise."""
        if n < 0:
            raise ValueError("negative size")
        if not self.fits(n):
            self.refused += 1
            return False
        self._take(n)
        return True

    async def acquire(self, n: int) -> None:
        """Take ``n`` bytes, waiting (first come, first served) until they fit."""
        if n < 0:
            raise ValueError("negative size")
        if not self._waiters and self._fits(n):
            self._take(n)
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release(n)          # granted just as we were cancelled: give it back
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._wake()
            raise

    def release(self, n: int) -> None:
        """Give back ``n`` bytes taken earlier."""
        self.in_use = max(0, self.in_use - n)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self._take(n)
            fut.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)
