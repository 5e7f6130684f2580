"""When a deferred recipient is tried again: exponential backoff with jitter, bounded by the lifetime."""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay(attempts: int, *, base: float, maximum: float, jitter: float,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
    delay = min(maximum, base * (2 ** max(0, min(attempts - 1, 30))))
    return min(maximum, delay * (1.0 + jitter * rand())) if maximum > 0 else 0.0


def next_attempt(now: float, attempts: int, expires_at: float, *, base: float, maximum: float, jitter: float,
                 rand: Callable[[], float] = random.random) -> float:
    """The next attempt time; never after the expiry, so the last try happens when the lifetime ends."""
    return min(now + retry_delay(attempts, base=base, maximum=maximum, jitter=jitter, rand=rand), max(expires_at, now))
