"""API keys for the HTTP API: made (the token shown once), listed, revoked."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..admin.registry import admin_method
from ..api import keys
from ..api.roles import ROLES, SCOPED_ROLES
from ..errors import InvalidArgument
from ..store import Store
from .. import validate
from .tenants import check_tenant_name


class ApiKeyService:
    # on_revoke: the API's caches forget the key (a coroutine when other processes are told first).
    def __init__(self, store: Store, on_revoke: Callable[[str], Awaitable[None] | None] = lambda public_id: None):
        self.store = store
        self.on_revoke = on_revoke

    @admin_method("apikey.add")
    async def add(self, tenant: str, role: str, usecase: str | None = None, name: str = "", expires_at: float | None = None,
                  rate_limit: float = 0.0) -> dict[str, Any]:
        """A new key; ``token`` in the result is the only time it is shown."""
        check_tenant_name(tenant)
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if role in SCOPED_ROLES and usecase is None:
            raise InvalidArgument(f"a {role} key sends through one use case: name it (--usecase)")
        if usecase is not None and role not in SCOPED_ROLES:
            raise InvalidArgument(f"an {role} key is not narrowed to a use case; only {', '.join(sorted(SCOPED_ROLES))} keys are")
        if expires_at is not None and expires_at <= time.time():
            raise InvalidArgument("expires_at is in the past")
        if rate_limit < 0 or rate_limit > 1_000_000:
            raise InvalidArgument("rate_limit must be 0 (the default) to 1,000,000 requests a second")
        name = validate.display(name, "key name")
        public_id, token = keys.mint()
        row = await self.store.apikeys.add(tenant, role=role, usecase=usecase, name=name, expires_at=expires_at,
                                           rate_limit=float(rate_limit), public_id=public_id,
                                           digest=lambda pepper: keys.digest(token, pepper))
        return {**row, "token": token}

    @admin_method("apikey.list")
    async def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        if tenant is not None:
            check_tenant_name(tenant)
        return await self.store.apikeys.list(tenant)

    @admin_method("apikey.revoke")
    async def revoke(self, key: str, tenant: str | None = None) -> dict[str, Any]:
        """Revoke by public id (or by the whole token, e.g. one found leaked)."""
        public_id = keys.parse(key) or key
        row = await self.store.apikeys.revoke(public_id, tenant=tenant)
        forgotten = self.on_revoke(public_id)
        if forgotten is not None:
            await forgotten   # every pipeline worker forgot it before the caller hears "revoked"
        return row
