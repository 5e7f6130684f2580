"""The calling key's tenant (its settings, the outbound switch) and its API keys."""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..errors import NotFound
from .endpoints import Endpoints
from .paging import Page, Paging, after as cursor_after, page
from .problems import not_found
from .routes import Call, api_route


class Tenant(msgspec.Struct):
    name: str
    display_name: str
    enabled: bool
    outbound_enabled: bool
    monthly_quota: int
    dmarc_reject: bool
    created_at: float


class OutboundSwitch(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool


class ApiKey(msgspec.Struct):
    public_id: str
    name: str
    role: str
    usecase: str | None
    rate_limit: float
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None


class KeyQuery(Paging, forbid_unknown_fields=True):
    pass


KeyId = Annotated[str, msgspec.Meta(pattern="^[a-z2-7]{12}$")]


class TenantEndpoints(Endpoints):
    @api_route("GET", "/v1/tenant", permission="tenant.read", response=Tenant, summary="The key's tenant")
    async def show(self, call: Call) -> Tenant:
        return await self.deps.store.tenants.get(call.caller.tenant)

    @api_route("PUT", "/v1/tenant/outbound", permission="tenant.outbound", body=OutboundSwitch, response=Tenant,
               summary="Turn the tenant's outbound mail on or off")
    async def outbound(self, call: Call) -> Tenant:
        method = "tenant.enable" if call.body.enabled else "tenant.disable"
        return await self.deps.methods[method](name=call.caller.tenant, outbound=True)


class ApiKeyEndpoints(Endpoints):
    @api_route("GET", "/v1/apikeys", permission="apikeys.read", query=KeyQuery, response=Page[ApiKey],
               summary="The tenant's API keys (never their tokens)")
    async def list(self, call: Call) -> Page[ApiKey]:
        rows = await self.deps.store.apikeys.list(call.caller.tenant, after=cursor_after(call.query.cursor, 0),
                                                  limit=call.query.limit + 1)
        return page(rows, call.query.limit, key=lambda r: r["id"])

    @api_route("GET", "/v1/apikeys/{public_id}", permission="apikeys.read", response=ApiKey, summary="One API key")
    async def show(self, call: Call) -> ApiKey:
        try:
            return await self.deps.store.apikeys.get(call.caller.tenant, call.params["public_id"])
        except NotFound:
            raise not_found("no such API key") from None

    @api_route("DELETE", "/v1/apikeys/{public_id}", permission="apikeys.write", response=ApiKey,
               summary="Revoke an API key (it stops working at once on this node)")
    async def revoke(self, call: Call) -> ApiKey:
        return await self.deps.methods["apikey.revoke"](key=call.params["public_id"], tenant=call.caller.tenant)
