"""Wakes coalesced: ``wake()`` as often as you like, the callback runs once per gathering window.

A pipeline worker tells the daemon by a line on its control socket (gateway/pipeline.py) that its
MX spooled mail (the daemon's processor) or that it queued mail (the delivery processes). One line
per message cost the worker a write and the daemon a read, a JSON parse and a wake each (about 5% of
the worker's CPU at 1,000 msg/s: py-spy on scripts/bench_mx.py --workers 2); one group commit
resolves the spools of many sessions in one loop turn, so one line per turn (``delay`` 0) or per few
milliseconds says the same. A wake after the line went gets a line of its own: never none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class Coalesced:
    """``callback()`` once at the end of the current loop turn (``delay`` 0), or ``delay`` seconds
    after the first of the wakes that came since it last ran."""

    def __init__(self, callback: Callable[[], object], delay: float = 0.0):
        self._callback = callback
        self._delay = delay
        self._pending = False

    def __call__(self, *_: Any) -> None:
        if self._pending:
            return
        self._pending = True
        loop = asyncio.get_running_loop()
        if self._delay:
            loop.call_later(self._delay, self._fire)
        else:
            loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._pending = False
        self._callback()
