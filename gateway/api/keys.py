"""API key tokens: made, hashed and checked here, and nowhere else.

    gw_live_<public id: 12 of [a-z2-7]>_<secret: 43 of base64url, 256 random bits>

The prefix makes a leaked key recognisable (secret scanners, logs); the public id finds the row; the
whole token, HMAC-SHA256'd under the store's pepper, is compared in constant time with the stored
hash. A checked key is remembered for ``api.key_cache_ttl`` seconds (a hash and a read per request
would cost more than the rest of a status read); ``forget`` drops it at once when revoked here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from ..store import Store
from .roles import permissions
from .routes import Caller

PREFIX = "gw_live_"
TOKEN = re.compile(r"^gw_live_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")
# At most this many checked keys are remembered; the oldest go first.
CACHE_MAX = 10000


def mint() -> tuple[str, str]:
    """(public id, whole token) of a new key."""
    public_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
    return public_id, f"{PREFIX}{public_id}_{secrets.token_urlsafe(32)}"


def digest(token: str, pepper: bytes) -> str:
    return hmac.new(pepper, token.encode(), hashlib.sha256).hexdigest()


def parse(token: str) -> str | None:
    """The public id of a well-formed token, else None."""
    m = TOKEN.match(token)
    return m.group(1) if m else None


class _Checked:
    """A key's row as read (for ``ttl`` seconds), and what checking it made: the token whose HMAC
    matched (compared in constant time with the next one presented: no HMAC per request) and the
    Caller built from the row for the last client. A new read (ttl past, ``forget``) starts afresh."""

    __slots__ = ("read_at", "row", "hashed", "pepper", "token", "caller")

    def __init__(self, read_at: float, row: dict[str, Any], hashed: str, pepper: bytes):
        self.read_at, self.row, self.hashed, self.pepper = read_at, row, hashed, pepper
        self.token: str | None = None
        self.caller: Caller | None = None


class KeyChecker:
    """Turns a presented token into a Caller, or None (unknown, wrong secret, revoked, expired, tenant disabled)."""

    def __init__(self, store: Store, *, ttl: float, default_rate: float):
        self.store = store
        self.ttl = ttl
        self.default_rate = default_rate
        self._cache: dict[str, _Checked] = {}   # public id -> its row as read, and what a check of it made
        self._touched: dict[int, float] = {}

    async def check(self, token: str, client: str = "") -> tuple[Caller | None, str]:
        """(caller, "") or (None, why) -- why is for the log, the client gets one generic answer."""
        public_id = parse(token)
        if public_id is None:
            return None, "malformed token"
        now = time.time()
        cached = self._cache.get(public_id)
        if cached is None or now - cached.read_at >= self.ttl:
            found = await self.store.apikeys.lookup(public_id)
            if found is None:
                return None, "unknown key"
            cached = _Checked(now, *found)
            if len(self._cache) >= CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))
            self._cache[public_id] = cached
        row = cached.row
        if cached.token is None or not hmac.compare_digest(cached.token, token):
            if not hmac.compare_digest(digest(token, cached.pepper), cached.hashed):
                return None, "wrong secret"
            cached.token = token   # this entry's HMAC matched: the next request with it compares the token alone
        if row["revoked_at"] is not None:
            return None, "revoked"
        if row["expires_at"] is not None and row["expires_at"] <= now:
            return None, "expired"
        if not row["tenant_enabled"]:
            return None, "tenant disabled"
        if now - self._touched.get(row["id"], 0.0) > 60:   # last_used_at to the minute: one write a minute a key
            self._touched[row["id"]] = now
            self.store.apikeys.touch_soon(row["id"], now)
        caller = cached.caller
        if caller is None or caller.client != client or caller.rate_limit != (row["rate_limit"] or self.default_rate):
            caller = cached.caller = Caller(
                key_id=row["id"], public_id=public_id, name=row["name"], tenant=row["tenant"], tenant_id=row["tenant_id"],
                role=row["role"], usecase=row["usecase"], usecase_id=row["usecase_id"], permissions=permissions(row["role"]),
                rate_limit=row["rate_limit"] or self.default_rate, client=client)
        return caller, ""

    def forget(self, public_id: str | None = None) -> None:
        """Drop a remembered key (all with None): a revocation or a tenant switch applies at once."""
        if public_id is None:
            self._cache.clear()
        else:
            self._cache.pop(public_id, None)

