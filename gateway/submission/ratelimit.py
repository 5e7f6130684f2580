"""In-memory counters of the submission listener: rate limits, AUTH cool-down, connection counts,
monthly quota usage. One daemon owns its queue, so these live in the process (no globals: the
listener creates them); each is bounded so a flood of distinct keys cannot grow memory forever.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_KEYS = 100_000


def _bounded_set(table: OrderedDict, key, value) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_KEYS:
        table.popitem(last=False)


class RateLimiter:
    """Token bucket per key: ``per_minute`` messages a minute, bursts up to ``per_minute``; or, with
    ``wait``, any rate per second and depth (the HTTP API's keys)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def allow(self, key: object, per_minute: int) -> bool:
        """Take one token; False when the bucket is empty. ``per_minute`` 0 means unlimited."""
        if per_minute <= 0:
            return True
        return self.wait(key, per_minute / 60.0, float(per_minute)) == 0.0

    def wait(self, key: object, per_second: float, depth: float) -> float:
        """Take one token and return 0.0, or return the seconds until one will be there (nothing taken)."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (depth, now))
        tokens = min(depth, tokens + (now - last) * per_second)
        if tokens < 1.0:
            _bounded_set(self._buckets, key, (tokens, now))
            return (1.0 - tokens) / per_second
        _bounded_set(self._buckets, key, (tokens - 1.0, now))
        return 0.0


@dataclass(eq=False)
class Attempt:
    """One AUTH attempt, counted against its address and (address, username) before its password is
    checked: ``pending`` until it fails (then it stays, as a failure) or succeeds (then it is removed)."""

    ip: str
    username: str
    at: float
    pending: bool = True


BUSY = object()  # every slot is taken by attempts still being checked: wait for one to finish


class AuthCooldown:
    """Failed AUTH attempts, counted *before* the password is looked at.

    An attempt takes a slot (``begin``) before its password is checked; a success gives the slot
    back, a failure keeps it. Parallel sessions therefore cannot get more passwords checked than the
    limit: when every slot is held by attempts still being checked, the next one waits for one of
    them to finish (a success frees a slot, so a pool of workers logging in at once all get in); when
    the slots are held by failures, it is refused.

    Two limits over the same ``cooldown`` window: ``limit`` per (address, username), so one worker
    with a stale password cools down only its own login and the other apps behind the same NAT
    address keep working; and the looser ``address_limit`` per address, all usernames together, so
    one address cannot spray many usernames. Reaching either blocks that key for ``cooldown``
    seconds from the failure that reached it.
    """

    def __init__(self, limit: int, cooldown: float, address_limit: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.address_limit = address_limit if address_limit is not None else limit
        self.cooldown = cooldown
        self.clock = clock
        self._tries: OrderedDict[tuple, list[Attempt]] = OrderedDict()   # key -> attempts counted (pending or failed)
        self._until: OrderedDict[tuple, float] = OrderedDict()           # key -> blocked until
        self._changed: asyncio.Event | None = None                        # set when a pending attempt finishes

    def _keys(self, ip: str, username: str) -> tuple[tuple[tuple, int], tuple[tuple, int]]:
        return ((ip,), self.address_limit), ((ip, username), self.limit)

    def _recent(self, key: tuple, now: float) -> list[Attempt]:
        tries = self._tries.get(key)
        if not tries:
            return []
        recent = [a for a in tries if now - a.at < self.cooldown]  # a pending one that old was abandoned
        if len(recent) != len(tries):
            if recent:
                self._tries[key] = recent
            else:
                del self._tries[key]
        return recent

    def _state(self, key: tuple, limit: int, now: float) -> object:
        """None (a slot is free), BUSY (full, some still pending) or False (blocked by failures)."""
        until = self._until.get(key)
        if until is not None:
            if until > now:
                return False
            del self._until[key]
        recent = self._recent(key, now)
        if len(recent) < limit:
            return None
        return False if sum(not a.pending for a in recent) >= limit else BUSY

    def blocked(self, ip: str, username: str | None = None) -> bool:
        """Whether the address (or, with ``username``, that login from the address) is refused now."""
        now = self.clock()
        keys = [((ip,), self.address_limit)] if username is None else self._keys(ip, username)
        return any(self._state(key, limit, now) is False for key, limit in keys)

    def reserve(self, ip: str, username: str) -> Attempt | object | None:
        """Count one attempt now: the Attempt; None when refused (cooling down); BUSY when every slot
        is held by attempts still being checked (nothing counted: try again when one finishes)."""
        now = self.clock()
        keys = self._keys(ip, username)
        states = [self._state(key, limit, now) for key, limit in keys]
        if False in states:
            return None
        if BUSY in states:
            return BUSY
        attempt = Attempt(ip, username, now)
        for key, _ in keys:
            _bounded_set(self._tries, key, [*self._tries.get(key, ()), attempt])
        return attempt

    async def begin(self, ip: str, username: str) -> Attempt | None:
        """``reserve``, waiting while the slots are busy; None when refused."""
        while True:
            attempt = self.reserve(ip, username)
            if attempt is not BUSY:
                return attempt
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def _finished(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def failed(self, attempt: Attempt) -> bool:
        """The attempt failed: its slot stays counted. True when the login or the address is now blocked."""
        attempt.pending = False
        now = self.clock()
        blocked = False
        for key, limit in self._keys(attempt.ip, attempt.username):
            if sum(not a.pending for a in self._recent(key, now)) >= limit:
                _bounded_set(self._until, key, now + self.cooldown)
                blocked = True
        self._finished()
        return blocked

    def succeeded(self, attempt: Attempt) -> None:
        """The attempt succeeded (or could not be checked): give its slot back."""
        for key, _ in self._keys(attempt.ip, attempt.username):
            tries = self._tries.get(key)
            if tries and attempt in tries:
                tries.remove(attempt)
        self._finished()

    def configure(self, limit: int, cooldown: float, address_limit: int | None = None) -> None:
        self.limit, self.cooldown = limit, cooldown
        self.address_limit = address_limit if address_limit is not None else limit


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
