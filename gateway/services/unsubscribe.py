"""Admin methods for the unsubscribe token keys: list, rotate, retire. Secrets never leave the daemon."""

from __future__ import annotations

import secrets
from typing import Any

from ..admin.registry import admin_method
from ..errors import NotFound
from ..store import Store
from ..unsubscribe.links import Keyring


def _shown(row: dict[str, Any], signing: int | None) -> dict[str, Any]:
    return {"id": row["id"], "created_at": row["created_at"], "retired_at": row["retired_at"],
            "state": "retired" if row["retired_at"] is not None else "signing" if row["id"] == signing else "verifying"}


class UnsubscribeService:
    def __init__(self, store: Store, keyring: Keyring):
        self.store, self.keyring = store, keyring

    async def _rows(self) -> list[dict[str, Any]]:
        rows = await self.store.unsubscribes.keys()
        live = [r["id"] for r in rows if r["retired_at"] is None]
        return [_shown(r, max(live) if live else None) for r in rows]

    @admin_method("unsubscribe.keys")
    async def keys(self) -> list[dict[str, Any]]:
        await self.keyring.signing()  # makes the first key when there is none
        return await self._rows()

    @admin_method("unsubscribe.rotate_key")
    async def rotate_key(self) -> dict[str, Any]:
        """A new signing key; links signed by the older ones keep working until those are retired."""
        new = await self.store.unsubscribes.rotate(secrets.token_bytes(32))
        await self.keyring.changed()
        return next(r for r in await self._rows() if r["id"] == new["id"])

    @admin_method("unsubscribe.retire_key")
    async def retire_key(self, key_id: int) -> dict[str, Any]:
        """Links signed with the key stop working (400). Retiring the signing key makes a new one sign."""
        if not await self.store.unsubscribes.retire(key_id):
            if not any(r["id"] == key_id for r in await self.store.unsubscribes.keys()):
                raise NotFound(f"no unsubscribe key {key_id}")
        await self.keyring.changed()
        await self.keyring.signing()  # a new one if that was the last live key
        return next(r for r in await self._rows() if r["id"] == key_id)
