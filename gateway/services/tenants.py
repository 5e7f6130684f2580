"""Tenant management."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ..admin.registry import admin_method
from ..store import Store
from .. import validate


def check_tenant_name(name: str) -> str:
    return validate.name(name, "tenant")


class TenantService:
    # on_switch: a tenant was enabled, disabled or deleted; the API's key caches forget what they
    # remember (a coroutine when other processes are told first), so the switch applies at once.
    def __init__(self, store: Store, on_switch: Callable[[], Awaitable[None] | None] = lambda: None):
        self.store = store
        self.on_switch = on_switch

    async def _switched(self, result: dict[str, Any]) -> dict[str, Any]:
        told = self.on_switch()
        if inspect.isawaitable(told):
            await told
        return result

    @admin_method("tenant.add")
    async def add(self, name: str, display_name: str = "", monthly_quota: int = 0) -> dict[str, Any]:
        check_tenant_name(name)
        return await self.store.tenants.add(name, display_name=validate.display(display_name, "display name"),
                                            monthly_quota=validate.monthly_quota(monthly_quota))

    @admin_method("tenant.list")
    async def list(self) -> list[dict[str, Any]]:
        return await self.store.tenants.list()

    @admin_method("tenant.show")
    async def show(self, name: str) -> dict[str, Any]:
        check_tenant_name(name)
        tenant = await self.store.tenants.get(name)
        tenant["owns"] = await self.store.tenants.holdings(name)
        return tenant

    @admin_method("tenant.enable")
    async def enable(self, name: str, outbound: bool = False) -> dict[str, Any]:
        """Enable the tenant; with outbound=True enable only its outbound mail."""
        check_tenant_name(name)
        return await self._switched(await self.store.tenants.update(name, **({"outbound_enabled": 1} if outbound else {"enabled": 1})))

    @admin_method("tenant.disable")
    async def disable(self, name: str, outbound: bool = False) -> dict[str, Any]:
        """Disable the tenant; with outbound=True disable only its outbound mail."""
        check_tenant_name(name)
        return await self._switched(await self.store.tenants.update(name, **({"outbound_enabled": 0} if outbound else {"enabled": 0})))

    @admin_method("tenant.update")
    async def update(self, name: str, display_name: str | None = None, monthly_quota: int | None = None,
                     dmarc_reject: bool | None = None) -> dict[str, Any]:
        """``dmarc_reject``: refuse at the final dot (550 5.7.1) inbound mail whose DMARC policy is reject and fails."""
        check_tenant_name(name)
        changes: dict[str, Any] = {}
        if dmarc_reject is not None:
            changes["dmarc_reject"] = int(dmarc_reject)
        if display_name is not None:
            changes["display_name"] = validate.display(display_name, "display name")
        if monthly_quota is not None:
            changes["monthly_quota"] = validate.monthly_quota(monthly_quota)
        return await self.store.tenants.update(name, **changes)

    @admin_method("tenant.delete")
    async def delete(self, name: str) -> dict[str, Any]:
        check_tenant_name(name)
        return await self._switched(await self.store.tenants.delete(name))
