"""SMTP credential passwords: how they are hashed and checked, and how their use is recorded.

The gateway generates every password itself (192 random bits, ``generate``) and shows it once. A
secret that nobody can guess needs no slow hash: it is stored as HMAC-SHA256 under the daemon's
credential key and checked with a constant-time compare, microseconds and no memory per check, so
AUTH stays cheap for the right party and a burst of wrong guesses costs next to nothing.

    stored form   $hmac-sha256$<hex digest>
    the key       32 random bytes, made once per database by migration 0007 (meta 'credential_key'),
                  so it travels with the hashes it keys (a restored backup keeps working) and is as
                  private as they are: the database file is the daemon user's only (mode 0600)

Credentials made before this carry argon2id hashes. Such a hash is verified with argon2 (off the
loop) and, on success, replaced by the keyed hash: every credential migrates on its next login.
While any unrevoked argon2 hash is left, every failed check also pays one argon2 verification, so
that an unknown username, a migrated one and a legacy one fail in the same time: no oracle tells
which usernames exist. A success may be faster; whoever holds the password knows the name anyway.

Last use (``last_used_at``) is recorded off the reply path, coalesced, at most once a minute per
credential, and a failure to record it (a full disk) never fails AUTH: ``UsageRecorder``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import argon2
import structlog

log = structlog.get_logger("credentials")

KEYED = "$hmac-sha256$"
LEGACY = "$argon2"
KEY_BYTES = 32
USE_RECORD_EVERY = 60.0      # seconds: last_used_at is a "when was it last used" hint, not a log
MAX_PENDING_USES = 100_000


def generate() -> str:
    """A new password: 192 random bits, URL-safe text (32 characters)."""
    return secrets.token_urlsafe(24)


def new_key() -> str:
    return secrets.token_hex(KEY_BYTES)


def is_legacy(stored: str) -> bool:
    return stored.startswith(LEGACY)


class Passwords:
    """Hash and check passwords under one key. ``checked`` counts the passwords looked at,
    ``argon2_checks`` the argon2 verifications among them (legacy hashes and their dummy).

    A keyed check runs on the loop (microseconds, nothing to cap); argon2 checks (64 MiB and ~100 ms
    each) run in threads, at most ``concurrency`` at once whoever asks: the memory they take is
    bounded by concurrency x the hash's memory cost, however many sessions try at once.
    """

    def __init__(self, key: bytes, hasher: argon2.PasswordHasher | None = None, *, concurrency: int = 2):
        if len(key) < 16:
            raise ValueError("the credential key is too short")
        self._key = key
        self.hasher = hasher or argon2.PasswordHasher()  # for the legacy hashes only
        # What an unknown or revoked username is checked against: no password maps to it.
        self.dummy = self.hash(secrets.token_urlsafe(24))
        self._dummy_legacy: str | None = None
        self._slow = asyncio.Semaphore(concurrency)
        self.checked = 0
        self.argon2_checks = 0
        self.argon2_running = 0  # now, and the most at once (never above ``concurrency``)
        self.argon2_peak = 0

    def hash(self, password: str) -> str:
        return KEYED + hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).hexdigest()

    async def check(self, stored: str, password: str, *, legacy_left: bool) -> tuple[bool, bool]:
        """(the password matches, the stored hash should be replaced by ``hash(password)``)."""
        self.checked += 1
        if is_legacy(stored):
            ok = await self._argon2(stored, password)
            return ok, ok
        ok = hmac.compare_digest(self.hash(password), stored)
        if not ok and legacy_left:
            # Fail as slowly as a legacy hash would, so the time says nothing about the username.
            await self._argon2(await self._legacy_dummy(), password)
        return ok, False

    async def _legacy_dummy(self) -> str:
        if self._dummy_legacy is None:
            self._dummy_legacy = await asyncio.to_thread(self.hasher.hash, secrets.token_urlsafe(24))
        return self._dummy_legacy

    async def _argon2(self, stored: str, password: str) -> bool:
        async with self._slow:
            self.argon2_checks += 1
            self.argon2_running += 1
            self.argon2_peak = max(self.argon2_peak, self.argon2_running)
            try:
                return await asyncio.to_thread(self._argon2_verify, stored, password)
            finally:
                self.argon2_running -= 1

    def _argon2_verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


class UsageRecorder:
    """Last use and rehashes of credentials, written in the background in one batch.

    ``used`` returns at once; one writer task drains what accumulated, so a burst of logins costs
    one write, and nothing on the AUTH reply path waits for the disk. A failed write is logged once
    per episode and kept (bounded) for the write that the next login starts.
    """

    def __init__(self, write: Callable[[dict[int, float], list[tuple[int, str, str]]], Awaitable[None]],
                 clock: Callable[[], float] = time.time, every: float = USE_RECORD_EVERY):
        self.write = write
        self.clock = clock
        self.every = every
        self._uses: dict[int, float] = {}
        self._rehash: dict[int, tuple[str, str]] = {}
        self._recorded: OrderedDict[int, float] = OrderedDict()
        self._failed_uses: dict[int, float] = {}
        self._failed_rehash: dict[int, tuple[str, str]] = {}
        self._task: asyncio.Task | None = None
        self._failing = False
        self.on_rehashed: Callable[[], None] | None = None

    def used(self, credential_id: int, rehash: tuple[str, str] | None = None) -> None:
        """Record a login (and, for a legacy hash, its (old, new) replacement) in the background."""
        now = self.clock()
        last = self._recorded.get(credential_id)
        if self._failed_uses or self._failed_rehash:  # what the last failed write held, tried again now
            for cid, when in self._failed_uses.items():
                self._uses.setdefault(cid, when)
            for cid, pair in self._failed_rehash.items():
                self._rehash.setdefault(cid, pair)
            self._failed_uses, self._failed_rehash = {}, {}
        if rehash is not None and len(self._rehash) < MAX_PENDING_USES:
            self._rehash[credential_id] = rehash
        elif last is not None and now - last < self.every:
            return
        if len(self._uses) < MAX_PENDING_USES:
            self._uses[credential_id] = now
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="credential-usage")

    async def flush(self) -> None:
        """Wait until what was recorded so far is written (or failed)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while self._uses or self._rehash:
                uses, self._uses = self._uses, {}
                rehash, self._rehash = self._rehash, {}
                try:
                    await self.write(uses, [(cid, old, new) for cid, (old, new) in rehash.items()])
                except Exception as exc:  # noqa: BLE001 - best effort: a login never fails for this
                    if not self._failing:
                        log.warning("credential_use_not_recorded", error_type=type(exc).__name__, error=str(exc)[:200],
                                    logins=len(uses))
                    self._failing = True
                    if len(self._failed_uses) + len(uses) <= MAX_PENDING_USES:
                        self._failed_uses = {**uses, **self._failed_uses}
                        self._failed_rehash = {**rehash, **self._failed_rehash}
                    continue
                if self._failing:
                    log.info("credential_use_recorded_again", logins=len(uses))
                self._failing = False
                for cid, when in uses.items():
                    self._recorded[cid] = when
                    self._recorded.move_to_end(cid)
                while len(self._recorded) > MAX_PENDING_USES:
                    self._recorded.popitem(last=False)
                if rehash and self.on_rehashed is not None:
                    self.on_rehashed()
        finally:
            self._task = None
