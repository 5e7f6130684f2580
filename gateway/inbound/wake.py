"""Wakes coalesced to one per event-loop turn.

A pipeline worker's MX tells the daemon's processor about every spool commit (a line on the control
socket: gateway/pipeline.py). One line per message cost the worker a write and the daemon a read, a
JSON parse and a wake each (about 5% of the worker's CPU at 1,000 msg/s: py-spy on
scripts/bench_mx.py --workers 2); one group commit resolves the spools of many sessions in one loop
turn, so one line per turn says the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Coalesced:
    """``wake()`` as often as you like: ``callback()`` runs once, at the end of the current loop turn."""

    def __init__(self, callback: Callable[[], object]):
        self._callback = callback
        self._pending = False

    def __call__(self) -> None:
        if self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(self._fire)

    def _fire(self) -> None:
        self._pending = False
        self._callback()
