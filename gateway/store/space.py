"""Free space on the filesystem that holds the database, measured cheaply.

``statvfs`` costs a few microseconds, but new mail asks before every queued message: one measurement
serves every caller for ``interval`` seconds, and the writer measures again after each commit (the
moment the free space changes), so the value follows the writes without a call per message.

Free means what an unprivileged writer may use (``f_bavail``): the daemon runs as its own user, and
the blocks reserved for root are not ours to count on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


class DiskSpace:
    def __init__(self, path: Path, *, min_free: int = 0, interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.min_free = min_free
        self.interval = interval
        self.clock = clock
        self._free = -1
        self._measured_at = float("-inf")

    def measure(self) -> int:
        """Free bytes now; -1 when the filesystem cannot be asked (then no reserve is enforced)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            free = -1
        else:
            free = st.f_bavail * st.f_frsize
        self._free, self._measured_at = free, self.clock()
        return free

    def free(self) -> int:
        """Free bytes, measured at most ``interval`` seconds ago."""
        if self.clock() - self._measured_at >= self.interval:
            return self.measure()
        return self._free

    def below_reserve(self) -> bool:
        """True when a reserve is set and the free space is under it."""
        free = self.free()
        return self.min_free > 0 and 0 <= free < self.min_free
