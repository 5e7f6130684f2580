"""The keys in memory and the List-Unsubscribe fields delivery adds to each recipient's copy.

``Keyring`` reads the keys from the store and keeps them ``ttl`` seconds (the first read makes the
first key when there is none). A token naming a key the ring does not hold makes it read again
(at most once a second), so a key rotated by another process verifies at once; a retired key stops
verifying within ``ttl`` (at once in the process that retired it, and in those its ``on_change``
callbacks tell: the daemon tells its web worker).

``return_path`` verifies the MAC of a VERP return path (gateway/verp.py) with the same keys.

``Links`` mints: delivery calls ``fields`` for every recipient of a use case whose mail carries the
fields. It runs on the event loop and costs one HMAC; the store is read only when the ring is stale.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .. import suppression, verp
from ..config import Config
from ..errors import InvalidArgument
from ..store import Store
from . import headers, tokens

T = TypeVar("T")

KEY_TTL = 30.0
MISS_RELOAD = 1.0


@dataclass(frozen=True)
class UnsubscribeSpec:
    """How one use case's links read: the scope they unsubscribe from, and the use case."""

    scope: str        # 'usecase' | 'domain'
    scope_id: int     # usecases.id or domains.id
    usecase_id: int


class Keyring:
    def __init__(self, store: Store, *, ttl: float = KEY_TTL, clock: Callable[[], float] = time.monotonic):
        self.store, self.ttl, self.clock = store, ttl, clock
        self._verifying: dict[int, bytes] = {}
        self._signing: tuple[int, bytes] | None = None
        self._loaded = float("-inf")
        self._on_change: list[Callable[[], Awaitable[None]]] = []

    async def _load(self) -> None:
        rows = await self.store.unsubscribes.keys()
        if not any(r["retired_at"] is None for r in rows):
            rows = await self.store.unsubscribes.ensure_key(secrets.token_bytes(32))
        live = [r for r in rows if r["retired_at"] is None]
        self._verifying = {r["id"]: bytes(r["secret"]) for r in live}
        newest = max(live, key=lambda r: r["id"])
        self._signing = (newest["id"], bytes(newest["secret"]))
        self._loaded = self.clock()

    def invalidate(self) -> None:
        self._loaded = float("-inf")

    def on_change(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback()`` whenever the keys change here (another process's keyring reads them again)."""
        self._on_change.append(callback)

    async def changed(self) -> None:
        """The keys were rotated or retired: read them again, here and wherever ``on_change`` reaches."""
        self.invalidate()
        await asyncio.gather(*(callback() for callback in self._on_change))

    async def signing(self) -> tuple[int, bytes]:
        if self._signing is None or self.clock() - self._loaded > self.ttl:
            await self._load()
        return self._signing  # type: ignore[return-value]

    async def verify(self, token: str, check: Callable[[str, Mapping[int, bytes]], T] = tokens.verify) -> T:
        """The token's claim; InvalidToken when it is not one of ours (or its key is retired).
        ``check`` reads one kind of token (unsubscribe links by default, inbound/downloads.py's
        attachment URLs): the keys are the gateway's link keys for both."""
        if self.clock() - self._loaded > self.ttl:
            await self._load()
        try:
            return check(token, self._verifying)
        except tokens.InvalidToken:
            if self.clock() - self._loaded <= MISS_RELOAD:
                raise
        await self._load()  # a key made (or retired) elsewhere since we last read
        return check(token, self._verifying)

    async def return_path(self, address: str) -> verp.VerpTag | None:
        """The VERP tag in ``address`` when delivery made it (its MAC verifies with a live key), else None."""
        tag = verp.decode(address)
        return tag if tag is not None and await self.signed(tag) else None

    async def signed(self, tag: verp.VerpTag) -> bool:
        """Whether ``tag``'s MAC verifies with a live key."""
        if tag.key_id is None:
            return False

        def check(_: str, keys: Mapping[int, bytes]) -> bool:
            if not verp.verify(tag, keys):
                raise tokens.InvalidToken("the return path's MAC does not verify")
            return True
        try:
            return await self.verify(tag.mac, check)
        except tokens.InvalidToken:
            return False


class Links:
    def __init__(self, keyring: Keyring, config: Callable[[], Config], *, clock: Callable[[], float] = time.time):
        self.keyring, self.config, self.clock = keyring, config, clock

    def mailto_address(self, sending_domain: str) -> str | None:
        cfg = self.config()
        if not cfg.unsubscribe.mailto:
            return None
        domain = cfg.unsubscribe.mailto_domain or f"{cfg.domains.return_path_prefix}.{sending_domain}"
        return f"unsubscribe@{domain}"

    async def fields(self, spec: UnsubscribeSpec, tenant_id: int, address: str, sending_domain: str) -> bytes:
        """The List-Unsubscribe and List-Unsubscribe-Post fields for ``address``'s copy."""
        key_id, secret = await self.keyring.signing()
        try:
            listed = suppression.normalise_address(address)   # the spelling the list (and the RCPT check) uses
        except InvalidArgument:
            listed = address.lower()
        claim = tokens.Claim(key_id, tenant_id, spec.scope, spec.scope_id, spec.usecase_id, int(self.clock()), listed)
        token = tokens.mint(claim, secret)
        mailto = self.mailto_address(sending_domain)
        return headers.fields(headers.unsubscribe_url(self.config().web.public_url, token),
                              headers.mailto_uri(mailto, token) if mailto else None)
