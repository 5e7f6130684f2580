"""Counters of the submission listener and the API: rate limits, AUTH cool-down, connection counts,
monthly quota usage. No globals: the listener creates them; each is bounded so a flood of distinct
keys cannot grow memory forever.

What several processes or nodes must agree on lives in the store (``gateway/store/limits.py``,
``usage_monthly``) when a ``shared`` store is given; each limiter keeps in memory only what it can
without breaking the limit across processes, so the hot path writes once per chunk, not per message:

    RateLimiter    token bucket per key in the store; a process takes a chunk of tokens in one
                   write and spends it locally (tolerance: one chunk per process, see its docstring)
    AuthCooldown   failures and blocks in the store (a failure is rare: one write each, not waited
                   for); the slots of attempts still being checked are per process
    QuotaTracker   the store's usage_monthly (every process's puts count there), read every second
                   and at every check near the quota
    ConnectionCounter  per process: a connection belongs to the process that accepted it

Without ``shared`` (unit tests, a single process by design) everything stays in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import logs

if TYPE_CHECKING:
    from ..store.limits import Limits

log = logs.get_logger("submission")   # assembled once per configuration (logs.py)

MAX_KEYS = 100_000
# A chunk of a shared bucket: a tenth of a minute's tokens, at most half the depth, at least one.
CHUNK_OF_MINUTE = 0.1
CHUNK_OF_DEPTH = 0.5
# Seconds a key is limited by the process's own bucket after the store failed to give tokens.
STORE_RETRY = 1.0


def _bounded_set(table: OrderedDict, key, value) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_KEYS:
        table.popitem(last=False)


def chunk_size(per_second: float, depth: float) -> int:
    """Tokens a process takes from a shared bucket in one write."""
    return max(1, int(min(per_second * 60.0 * CHUNK_OF_MINUTE, depth * CHUNK_OF_DEPTH)))


def least_take(chunk: int) -> int:
    """The fewest tokens worth a write: a bucket spent as fast as it refills (the limit reached) is
    taken from a tenth of a chunk at a time, not a write per token."""
    return max(1, chunk // 10)


@dataclass(eq=False)
class _Held:
    """The tokens this process took from one shared bucket and has not spent yet."""

    per_second: float
    depth: float
    tokens: int = 0
    empty_until: float = 0.0                 # the store had none: not asked again before then (clock)
    local_until: float = 0.0                 # the store failed: this process's own bucket until then (clock)
    taking: asyncio.Future | None = None     # the take in flight, which later callers wait for too


class RateLimiter:
    """Token bucket per key: ``per_minute`` messages a minute, bursts up to ``per_minute``; or, with
    ``wait``, any rate per second and depth (the HTTP API's keys).

    With ``shared`` (the store's ``Limits``) the bucket of a key is one row for every process and
    node on the store (named ``scope`` and the key). A process takes a *chunk* of tokens in one
    write (``chunk_size``: a tenth of a minute's rate, at most half the depth, at least one; or what
    is left) and spends it locally; when half of it is spent the next chunk is taken in the
    background, so a caller waits for a write only when its process had none left. Tolerance: each
    process holds at most one chunk of a key, so over any period a key gets at most its rate x the
    period + its depth + one chunk per process (a process that stops gives back what it holds,
    ``close``; one that dies loses it, which errs on the strict side). With ``exact`` the chunk is
    one token: a write per token, for rare events (bad API keys). An empty bucket is not asked
    again before the store said tokens will be there, so refusals cost no write each; and a key at
    its limit (its bucket spent as fast as it refills) is taken from a tenth of a chunk at a time
    (``least_take``), so it costs about rate / (chunk / 10) writes a second, not one a message. A store that
    cannot be written (a full disk) does not refuse mail by itself: for ``STORE_RETRY`` seconds the
    key is limited by this process's own bucket, as before the limits were shared.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, shared: Limits | None = None, scope: str = "",
                 exact: bool = False):
        self.clock = clock
        self.shared = shared
        self.scope = scope
        self.exact = exact
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()
        self._held: OrderedDict[object, _Held] = OrderedDict()

    async def allow(self, key: object, per_minute: int) -> bool:
        """Take one token; False when the bucket is empty. ``per_minute`` 0 means unlimited."""
        if per_minute <= 0:
            return True
        return await self.wait(key, per_minute / 60.0, float(per_minute)) == 0.0

    async def wait(self, key: object, per_second: float, depth: float) -> float:
        """Take one token and return 0.0, or return the seconds until one will be there (nothing taken)."""
        if self.shared is None:
            return self._wait_here(key, per_second, depth)
        held = self._held.get(key)
        if held is None:
            held = _Held(per_second, depth)
        _bounded_set(self._held, key, held)
        held.per_second, held.depth = per_second, depth
        while True:
            if held.tokens >= 1:
                held.tokens -= 1
                self._top_up(key, held)
                return 0.0
            now = self.clock()
            if held.empty_until > now:
                return held.empty_until - now
            if held.local_until > now:
                return self._wait_here(key, per_second, depth)
            if held.taking is None:
                held.taking = asyncio.ensure_future(self._take(key, held, self._chunk(held) - held.tokens))
            try:
                await asyncio.shield(held.taking)
            except Exception as exc:  # noqa: BLE001 - the store failed (full disk, closed): limited here for a while
                if held.local_until <= self.clock():
                    log.warning("rate_limit_store_failed", scope=self.scope, error_type=type(exc).__name__, retry_in=STORE_RETRY)
                held.local_until = self.clock() + STORE_RETRY

    def _wait_here(self, key: object, per_second: float, depth: float) -> float:
        now = self.clock()
        tokens, last = self._buckets.get(key, (depth, now))
        tokens = min(depth, tokens + (now - last) * per_second)
        if tokens < 1.0:
            _bounded_set(self._buckets, key, (tokens, now))
            return (1.0 - tokens) / per_second
        _bounded_set(self._buckets, key, (tokens - 1.0, now))
        return 0.0

    def _chunk(self, held: _Held) -> int:
        return 1 if self.exact else chunk_size(held.per_second, held.depth)

    def _name(self, key: object) -> str:
        return f"{self.scope} {key}"

    async def _take(self, key: object, held: _Held, want: int) -> None:
        try:
            taken, wait = await self.shared.take(self._name(key), want, held.per_second, held.depth,
                                                 least_take(self._chunk(held)))
        finally:
            held.taking = None
        held.tokens += taken
        if not taken:
            held.empty_until = self.clock() + wait

    def _top_up(self, key: object, held: _Held) -> None:
        """Half the chunk spent: take the rest in the background, before a caller has to wait for it."""
        chunk = self._chunk(held)
        if chunk > 1 and held.tokens <= chunk // 2 and held.taking is None and held.empty_until <= self.clock():
            held.taking = asyncio.ensure_future(self._take(key, held, chunk - held.tokens))
            held.taking.add_done_callback(self._taken)

    def _taken(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:   # the next caller that needs tokens tries again
            log.warning("rate_limit_take_failed", scope=self.scope, error_type=type(fut.exception()).__name__)

    async def close(self) -> None:
        """Give the tokens held back to the shared buckets (a process that stops)."""
        if self.shared is None or not self._held:
            return
        held, self._held = self._held, OrderedDict()
        try:
            await self.shared.give_back([(self._name(k), h.tokens, h.per_second, h.depth) for k, h in held.items()])
        except Exception as exc:  # noqa: BLE001 - stopping goes on; the tokens are lost (stricter, not looser)
            log.warning("rate_limit_give_back_failed", scope=self.scope, error_type=type(exc).__name__)


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

    With ``shared`` (the store's ``Limits``) failures and blocks are counted in the store, for every
    process and node: a failure is written (queued for the next group commit, not waited for: it is
    rare, and its 535 need not wait for a disk), and each check adds the failures the *other*
    processes wrote (two index probes a key) to this process's own attempts, which it keeps. The slots of attempts *still being
    checked* stay per process: making them exact across processes would cost two writes per
    successful AUTH (take the slot, give it back), a group-commit wait each on every login, for a
    bound that only matters in the first burst; so a burst spread over P processes gets at most
    ``limit`` passwords checked per process (P x ``limit``), and once those fail every process
    refuses the key. The clock is then the wall clock (``time.time``), which every process shares.
    """

    def __init__(self, limit: int, cooldown: float, address_limit: int | None = None,
                 clock: Callable[[], float] | None = None, *, shared: Limits | None = None):
        self.limit = limit
        self.address_limit = address_limit if address_limit is not None else limit
        self.cooldown = cooldown
        self.clock = clock or (time.time if shared is not None else time.monotonic)
        self.shared = shared
        self._tries: OrderedDict[tuple, list[Attempt]] = OrderedDict()   # key -> attempts counted (pending or failed) by this process
        self._until: OrderedDict[tuple, float] = OrderedDict()           # key -> blocked until
        self._changed: asyncio.Event | None = None                        # set when a pending attempt finishes

    def _keys(self, ip: str, username: str) -> tuple[tuple[tuple, int], tuple[tuple, int]]:
        return ((ip,), self.address_limit), ((ip, username), self.limit)

    @staticmethod
    def _name(key: tuple) -> str:
        # ascii(): any username (NUL and newlines too) as plain ASCII text, one name per key.
        return "auth " + ascii(key)

    def _stored(self, keys: list[tuple]) -> dict[tuple, tuple[int, float]]:
        """{key: (failures the other processes wrote, blocked until)}; nothing without a store, or
        when it cannot be read (the counts of this process still apply)."""
        if self.shared is None:
            return {}
        names = [self._name(k) for k in keys]
        try:
            state = self.shared.auth_state(names)
        except Exception as exc:  # noqa: BLE001 - a store that cannot be read must not take AUTH down
            log.warning("auth_cooldown_read_failed", error_type=type(exc).__name__)
            return {}
        return {k: state[n] for k, n in zip(keys, names)}

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

    def _state(self, key: tuple, limit: int, now: float, stored: dict[tuple, tuple[int, float]]) -> object:
        """None (a slot is free), BUSY (full, some still pending) or False (blocked by failures)."""
        until = self._until.get(key)
        if until is not None:
            if until > now:
                return False
            del self._until[key]
        failures, blocked_until = stored.get(key, (0, 0.0))
        if blocked_until > now:
            _bounded_set(self._until, key, blocked_until)   # remembered: ``blocked`` answers from memory
            return False
        recent = self._recent(key, now)
        if len(recent) + failures < limit:
            return None
        return False if sum(not a.pending for a in recent) + failures >= limit else BUSY

    def blocked(self, ip: str, username: str | None = None) -> bool:
        """Whether the address (or, with ``username``, that login from the address) is refused now,
        by what this process knows: its own failures and the blocks it has read from the store. The
        AUTH commands ask this before the credentials are read; ``begin`` asks the store (one read a
        login, not two), so an address another process blocked is refused there, its password unread."""
        now = self.clock()
        keys = [((ip,), self.address_limit)] if username is None else self._keys(ip, username)
        return any(self._state(key, limit, now, {}) is False for key, limit in keys)

    def reserve(self, ip: str, username: str) -> Attempt | object | None:
        """Count one attempt now: the Attempt; None when refused (cooling down); BUSY when every slot
        is held by attempts still being checked (nothing counted: try again when one finishes)."""
        now = self.clock()
        keys = self._keys(ip, username)
        stored = self._stored([key for key, _ in keys])
        states = [self._state(key, limit, now, stored) for key, limit in keys]
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
        keys = self._keys(attempt.ip, attempt.username)
        stored = self._stored([key for key, _ in keys])
        blocked = False
        for key, limit in keys:
            if sum(not a.pending for a in self._recent(key, now)) + stored.get(key, (0, 0.0))[0] >= limit:
                _bounded_set(self._until, key, now + self.cooldown)
                blocked = True
        if self.shared is not None:
            self._store_failure(keys, now)
        self._finished()
        return blocked

    def _store_failure(self, keys: tuple[tuple[tuple, int], ...], now: float) -> None:
        """Write the failure for the other processes (this one counts it in ``_tries`` already)."""
        try:
            fut = self.shared.failed_soon([(self._name(key), limit) for key, limit in keys], self.cooldown, now)
        except Exception as exc:  # noqa: BLE001 - the store closed (stopping): counted here only
            log.warning("auth_cooldown_write_failed", error_type=type(exc).__name__)
            return
        fut.add_done_callback(_written)

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


def _written(fut: asyncio.Future) -> None:
    if fut.cancelled() or fut.exception() is not None:   # the other processes miss it; this one counts it
        log.warning("auth_cooldown_write_failed", error_type="cancelled" if fut.cancelled() else type(fut.exception()).__name__)


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
    """Messages accepted this month per tenant: the store's count (``usage_monthly``, which every
    message's put raises in its own transaction, in whichever process or node accepted it), read at
    most every ``ttl`` seconds and counted up locally in between; and near the quota (within
    ``near(quota)`` of it) read at every check. Far from the quota the count lags by what the other
    processes accepted in the last ``ttl`` seconds, which cannot carry a tenant past it; near it the
    overshoot is what every process let through MAIL and has not committed yet, as in one process.
    A tenant at or over its quota is refused from the count it has, until ``ttl`` passes."""

    def __init__(self, load: Callable[[int], Awaitable[int]], ttl: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.load = load
        self.ttl = ttl
        self.clock = clock
        self._seen: dict[int, tuple[str, int, float]] = {}

    @staticmethod
    def _month() -> str:
        return time.strftime("%Y-%m", time.gmtime())

    @staticmethod
    def near(quota: int) -> int:
        """Within this many messages of the quota every check reads the store."""
        return max(1000, quota // 100)

    async def used(self, tenant_id: int, quota: int = 0) -> int:
        month, now = self._month(), self.clock()
        entry = self._seen.get(tenant_id)
        if (entry is None or entry[0] != month or now - entry[2] > self.ttl
                or (quota and quota - self.near(quota) <= entry[1] < quota)):
            count = await self.load(tenant_id)
            entry = (month, count, now)
            self._seen[tenant_id] = entry   # one entry a tenant: bounded by the tenants
        return entry[1]

    def accepted(self, tenant_id: int) -> None:
        entry = self._seen.get(tenant_id)
        if entry is not None:
            self._seen[tenant_id] = (entry[0], entry[1] + 1, entry[2])


class TtlCache:
    """A use case's policy view, fetched at most every ``ttl`` seconds per key. Requests that miss
    together share one fetch: when an entry runs out under load, every request in flight missed it at
    once, and each fetching its own copy took ~5% of the API's send CPU (py-spy, scripts/bench_api.py)."""

    def __init__(self, load: Callable[[int], Awaitable[dict | None]], ttl: float, clock: Callable[[], float] = time.monotonic):
        self.load = load
        self.ttl = ttl
        self.clock = clock
        self._entries: OrderedDict[int, tuple[float, dict | None]] = OrderedDict()
        self._loading: dict[int, asyncio.Future] = {}   # keys being fetched (at most one fetch each)

    async def get(self, key: int) -> dict | None:
        now = self.clock()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] <= self.ttl:
            return hit[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.ensure_future(self._fetch(key, now))
            loading.add_done_callback(lambda f: f.cancelled() or f.exception())   # retrieved, even with no waiter left
        # Shielded: a waiter that goes away (its client hung up) does not cancel the others' fetch.
        return await asyncio.shield(loading)

    async def _fetch(self, key: int, now: float) -> dict | None:
        try:
            value = await self.load(key)
            _bounded_set(self._entries, key, (now, value))
            return value
        finally:
            self._loading.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
