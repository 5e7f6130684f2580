"""In-memory counters of the submission listener: rate limits, AUTH cool-down, connection counts,
monthly quota usage. One daemon owns its queue, so these live in the process (no globals: the
listener creates them); each is bounded so a flood of distinct keys cannot grow memory forever.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

MAX_KEYS = 100_000


def _bounded_set(table: OrderedDict, key, value) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_KEYS:
        table.popitem(last=False)


class RateLimiter:
    """Token bucket per key: ``per_minute`` messages a minute, bursts up to ``per_minute``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def allow(self, key: object, per_minute: int) -> bool:
        """Take one token; False when the bucket is empty. ``per_minute`` 0 means unlimited."""
        if per_minute <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - last) * per_minute / 60.0)
        if tokens < 1.0:
            _bounded_set(self._buckets, key, (tokens, now))
            return False
        _bounded_set(self._buckets, key, (tokens - 1.0, now))
        return True


class AuthCooldown:
    """Failed AUTH attempts per client address; ``limit`` failures within ``cooldown`` seconds block
    that address for ``cooldown`` seconds from the last failure."""

    def __init__(self, limit: int, cooldown: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.cooldown = cooldown
        self.clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def _recent(self, ip: str, now: float) -> list[float]:
        return [t for t in self._failures.get(ip, ()) if now - t < self.cooldown]

    def blocked(self, ip: str) -> bool:
        return len(self._recent(ip, self.clock())) >= self.limit

    def failed(self, ip: str) -> bool:
        """Record one failure; True when the address is now blocked."""
        now = self.clock()
        recent = self._recent(ip, now)[-(self.limit - 1):] if self.limit > 1 else []
        recent.append(now)
        _bounded_set(self._failures, ip, recent)
        return len(recent) >= self.limit

    def configure(self, limit: int, cooldown: float) -> None:
        self.limit, self.cooldown = limit, cooldown


class ConnectionCounter:
    """Open connections, in total and per client address."""

    def __init__(self, total: int, per_client: int):
        self.total_limit = total
        self.per_client_limit = per_client
        self.total = 0
        self._per: dict[str, int] = {}

    def admit(self, ip: str) -> str | None:
        """Count one more connection; or why it is refused ('total' or 'client'), counting nothing."""
        if self.total >= self.total_limit:
            return "total"
        if self._per.get(ip, 0) >= self.per_client_limit:
            return "client"
        self.total += 1
        self._per[ip] = self._per.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self._per.get(ip, 1) - 1
        if left > 0:
            self._per[ip] = left
        else:
            self._per.pop(ip, None)

    def configure(self, total: int, per_client: int) -> None:
        self.total_limit, self.per_client_limit = total, per_client


class QuotaTracker:
    """Messages accepted this month per tenant: read from the store at most every ``ttl`` seconds,
    counted up locally in between (this process is the only one accepting mail)."""

    def __init__(self, load: Callable[[int], Awaitable[int]], ttl: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.load = load
        self.ttl = ttl
        self.clock = clock
        self._seen: dict[int, tuple[str, int, float]] = {}

    @staticmethod
    def _month() -> str:
        return time.strftime("%Y-%m", time.gmtime())

    async def used(self, tenant_id: int) -> int:
        month, now = self._month(), self.clock()
        entry = self._seen.get(tenant_id)
        if entry is None or entry[0] != month or now - entry[2] > self.ttl:
            count = await self.load(tenant_id)
            entry = (month, count, now)
            self._seen[tenant_id] = entry
        return entry[1]

    def accepted(self, tenant_id: int) -> None:
        entry = self._seen.get(tenant_id)
        if entry is not None:
            self._seen[tenant_id] = (entry[0], entry[1] + 1, entry[2])


class TtlCache:
    """A use case's policy view, fetched at most every ``ttl`` seconds per key."""

    def __init__(self, load: Callable[[int], Awaitable[dict | None]], ttl: float, clock: Callable[[], float] = time.monotonic):
        self.load = load
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[int, tuple[float, dict | None]] = OrderedDict()

    async def get(self, key: int) -> dict | None:
        now = self.clock()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] <= self.ttl:
            return hit[1]
        value = await self.load(key)
        _bounded_set(self._entries, key, (now, value))
        return value

    def clear(self) -> None:
        self._entries.clear()
