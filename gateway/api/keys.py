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


class KeyChecker:
    """Turns a presented token into a Caller, or None (unknown, wrong secret, revoked, expired, tenant disabled)."""

    def __init__(self, store: Store, *, ttl: float, default_rate: float):
        self.store = store
        self.ttl = ttl
        self.default_rate = default_rate
        self._cache: dict[str, tuple[float, dict[str, Any], str, bytes]] = {}   # public id -> (read at, row, hash, pepper)
        self._touched: dict[int, float] = {}

    async def check(self, token: str, client: str = "") -> tuple[Caller | None, str]:
        """(caller, "") or (None, why) -- why is for the log, the client gets one generic answer."""
        public_id = parse(token)
        if public_id is None:
            return None, "malformed token"
        now = time.time()
        cached = self._cache.get(public_id)
        if cached is None or now - cached[0] >= self.ttl:
            found = await self.store.apikeys.lookup(public_id)
            if found is None:
                return None, "unknown key"
            cached = (now, *found)
            if len(self._cache) >= CACHE_MAX:
                self._cache.pop(next(iter(self._cache)))
            self._cache[public_id] = cached
        _, row, expected, pepper = cached
        if not hmac.compare_digest(digest(token, pepper), expected):
            return None, "wrong secret"
        if row["revoked_at"] is not None:
            return None, "revoked"
        if row["expires_at"] is not None and row["expires_at"] <= now:
            return None, "expired"
        if not row["tenant_enabled"]:
            return None, "tenant disabled"
        if now - self._touched.get(row["id"], 0.0) > 60:   # last_used_at to the minute: one write a minute a key
            self._touched[row["id"]] = now
            self.store.apikeys.touch_soon(row["id"], now)
        return Caller(key_id=row["id"], public_id=public_id, name=row["name"], tenant=row["tenant"], tenant_id=row["tenant_id"],
                      role=row["role"], usecase=row["usecase"], usecase_id=row["usecase_id"], permissions=permissions(row["role"]),
                      rate_limit=row["rate_limit"] or self.default_rate, client=client), ""

    def forget(self, public_id: str | None = None) -> None:
        """Drop a remembered key (all with None): a revocation or a tenant switch applies at once."""
        if public_id is None:
            self._cache.clear()
        else:
            self._cache.pop(public_id, None)

