"""Use cases over HTTP: list, show, add, change, delete; their SMTP credentials (the password is in
the 201 answer only); pausing and resuming one use case's outbound mail.

The ``usecase.*``, ``pause`` and ``resume`` admin methods do the work, with ``tenant=`` the key's
tenant. Field names are the same going in and coming out (``suppressed``, ``list_unsubscribe``), so
what a client reads it can PATCH back.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .. import validate
from ..errors import Conflict, InvalidArgument, NotFound
from ..services.usecases import KINDS, LIST_UNSUBSCRIBE, MAX_SENDERS, SCOPES
from ..suppression import ACTIONS as SUPPRESSED_ACTIONS
from .domains import DomainText
from .endpoints import Endpoints
from .fields import blame, names_after
from .paging import Page, Paging, after as cursor_after, page
from .problems import not_found
from .routes import Call, Reply, api_route

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=validate.MAX_NAME, pattern=validate.NAME.pattern,
                                   description="lower-case letters, digits, '-' or '_'")]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=320, description="an email address")]
Senders = Annotated[list[Address], msgspec.Meta(max_length=MAX_SENDERS)]
Entity = Annotated[str, msgspec.Meta(min_length=1, max_length=validate.MAX_DISPLAY, description="the organisation or product the mail speaks for")]
Kind = Literal[KINDS]  # type: ignore[valid-type]
Scope = Annotated[Literal[SCOPES], msgspec.Meta(description="what an unsubscribe covers: this use case or the whole domain")]  # type: ignore[valid-type]
Route = Annotated[str, msgspec.Meta(max_length=10 + validate.MAX_NAME, description="direct, or connector:NAME (an outbound connector)")]
RateLimit = Annotated[int, msgspec.Meta(ge=0, le=validate.MAX_RATE_LIMIT, description="messages per minute; 0 = unlimited")]
ListUnsubscribe = Annotated[Literal[tuple(LIST_UNSUBSCRIBE)],  # type: ignore[valid-type]
                            msgspec.Meta(description="List-Unsubscribe headers: on, off, or default (on for marketing)")]
Suppressed = Annotated[Literal[SUPPRESSED_ACTIONS],  # type: ignore[valid-type]
                       msgspec.Meta(description="a suppressed recipient: refuse it at RCPT, or accept and drop it")]

# The words the use case service's refusals use, and the body field each is.
WORDS = {"use case name": "name", "entity": "entity", "kind": "kind", "sender": "senders", "a use case needs at least one sender": "senders",
         "unsubscribe scope": "unsubscribe_scope", "route": "route", "connector": "route", "rate limit": "rate_limit",
         "list-unsubscribe": "list_unsubscribe", "suppressed action": "suppressed", "domain name": "domain", "address": "senders"}


class UsecaseSummary(msgspec.Struct):
    name: str
    domain: str
    domain_state: str
    entity: str
    kind: str
    senders: list[str]
    route: str
    rate_limit: int
    unsubscribe_scope: str
    list_unsubscribe: Annotated[str, msgspec.Meta(description="the setting: on, off or default")]
    list_unsubscribe_active: Annotated[bool, msgspec.Meta(description="whether its mail carries List-Unsubscribe now")]
    suppressed: str
    paused: Annotated[bool, msgspec.Meta(description="the use case's own pause (PUT .../pause); a tenant pause is not shown here")]


class Usecase(UsecaseSummary):
    credentials: Annotated[int, msgspec.Meta(description="SMTP credentials not revoked")]


class UsecaseQuery(Paging, forbid_unknown_fields=True):
    pass


class UsecaseAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    domain: Annotated[DomainText, msgspec.Meta(description="one of the tenant's domains, verified")]
    entity: Entity
    kind: Kind
    senders: Annotated[Senders, msgspec.Meta(min_length=1, description="sender addresses on the domain or its subdomains")]
    unsubscribe_scope: Scope = "usecase"
    route: Route = "direct"
    rate_limit: RateLimit = 0
    list_unsubscribe: ListUnsubscribe = "default"
    suppressed: Suppressed = "refuse"


class UsecasePatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[Name, msgspec.Meta(description="a new name")] | None = None
    entity: Entity | None = None
    kind: Kind | None = None
    senders: Annotated[Senders, msgspec.Meta(description="replaces the sender addresses")] | None = None
    add_senders: Senders | None = None
    remove_senders: Senders | None = None
    unsubscribe_scope: Scope | None = None
    route: Route | None = None
    rate_limit: RateLimit | None = None
    list_unsubscribe: ListUnsubscribe | None = None
    suppressed: Suppressed | None = None


class UsecaseDeleted(msgspec.Struct):
    name: str
    deleted: bool


class Credential(msgspec.Struct):
    username: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


class NewCredential(msgspec.Struct):
    username: str
    password: Annotated[str, msgspec.Meta(description="shown in this answer only: it is stored as a keyed hash")]
    usecase: str
    created_at: float


class CredentialQuery(Paging, forbid_unknown_fields=True):
    pass


class PauseState(msgspec.Struct):
    usecase: str
    paused: bool
    changed: Annotated[bool, msgspec.Meta(description="false: it already was (PUT and DELETE may be repeated)")]
    held: Annotated[int, msgspec.Meta(description="recipients held by this pause")] = 0
    released: Annotated[int, msgspec.Meta(description="recipients released by this resume")] = 0


def path_usecase(call: Call) -> str:
    """The path's use case name; a value that is no name names nothing (404)."""
    try:
        return validate.name(call.params["usecase"], "use case")
    except InvalidArgument:
        raise not_found("no such use case") from None


def shown(usecase: dict[str, Any], paused: bool) -> dict[str, Any]:
    """The service's use case (list_unsubscribe as "on (default)") in the API's field names."""
    setting = usecase["list_unsubscribe"]
    return {**usecase, "list_unsubscribe": "default" if setting.endswith("(default)") else setting,
            "list_unsubscribe_active": setting.startswith("on"), "suppressed": usecase["suppressed_action"], "paused": paused}


class UsecaseEndpoints(Endpoints):
    async def _paused(self, tenant: str) -> set[str]:
        """The tenant's paused use cases (the pause table is small: one row a pause)."""
        return {p["usecase"] for p in await self.deps.methods["pause.list"]() if p["scope"] == "usecase" and p["tenant"] == tenant}

    async def _show(self, tenant: str, name: str) -> dict[str, Any]:
        usecase = await self.deps.methods["usecase.show"](tenant=tenant, name=name)
        return shown(usecase, name in await self._paused(tenant))

    @api_route("GET", "/v1/usecases", permission="usecases.read", query=UsecaseQuery, response=Page[UsecaseSummary],
               summary="The tenant's use cases, by name")
    async def list(self, call: Call) -> Page[UsecaseSummary]:
        limit = call.query.limit
        rows = await names_after(self.deps.methods["usecase.list"], call.query.cursor, limit, tenant=call.caller.tenant)
        paused = await self._paused(call.caller.tenant)
        return page([shown(r, r["name"] in paused) for r in rows], limit, key=lambda r: r["name"])

    @api_route("GET", "/v1/usecases/{usecase}", permission="usecases.read", response=Usecase, summary="One use case")
    async def show(self, call: Call) -> dict[str, Any]:
        return await self._show(call.caller.tenant, path_usecase(call))

    @api_route("POST", "/v1/usecases", permission="usecases.write", body=UsecaseAdd, response=Usecase, status=201,
               summary="Add a use case of a verified domain")
    async def add(self, call: Call) -> Reply:
        b = call.body
        with blame(WORDS, {"has no domain": "domain", "has no connector": "route"}):
            await self.deps.methods["usecase.add"](
                tenant=call.caller.tenant, domain=b.domain, name=b.name, entity=b.entity, kind=b.kind, senders=b.senders,
                unsubscribe_scope=b.unsubscribe_scope, route=b.route, rate_limit=b.rate_limit, list_unsubscribe=b.list_unsubscribe,
                suppressed=b.suppressed)
        return Reply(await self._show(call.caller.tenant, b.name), headers={"Location": f"/v1/usecases/{b.name}"})

    @api_route("PATCH", "/v1/usecases/{usecase}", permission="usecases.write", body=UsecasePatch, response=Usecase,
               summary="Change a use case (only the fields given); a new name moves it")
    async def update(self, call: Call) -> dict[str, Any]:
        b = call.body
        name = path_usecase(call)
        with blame(WORDS, {"has no connector": "route"}):
            changed = await self.deps.methods["usecase.update"](
                tenant=call.caller.tenant, name=name, new_name=b.name, entity=b.entity, kind=b.kind, senders=b.senders,
                add_senders=b.add_senders, remove_senders=b.remove_senders, unsubscribe_scope=b.unsubscribe_scope, route=b.route,
                rate_limit=b.rate_limit, list_unsubscribe=b.list_unsubscribe, suppressed=b.suppressed)
        return await self._show(call.caller.tenant, changed["name"])

    @api_route("DELETE", "/v1/usecases/{usecase}", permission="usecases.write", response=UsecaseDeleted,
               summary="Delete a use case; refused (409) while mail, channel addresses or a catch-all still use it")
    async def delete(self, call: Call) -> dict[str, Any]:
        deleted = await self.deps.methods["usecase.delete"](tenant=call.caller.tenant, name=path_usecase(call))
        return {"name": deleted["name"], "deleted": True}

    # ------------------------------------------------------------------ credentials

    @api_route("GET", "/v1/usecases/{usecase}/credentials", permission="usecases.read", query=CredentialQuery,
               response=Page[Credential], summary="The use case's SMTP credentials (never their passwords or hashes)")
    async def credentials(self, call: Call) -> Page[Credential]:
        after = cursor_after(call.query.cursor, 0)
        limit = call.query.limit
        rows = await self.deps.methods["usecase.credentials.list"](tenant=call.caller.tenant, usecase=path_usecase(call),
                                                                   after=after, limit=limit + 1)
        return page(rows, limit, key=lambda r: r["id"])

    @api_route("POST", "/v1/usecases/{usecase}/credentials", permission="usecases.write", response=NewCredential, status=201,
               summary="A new SMTP username and password; the password is in this answer only")
    async def add_credential(self, call: Call) -> Reply:
        usecase = path_usecase(call)
        made = await self.deps.methods["usecase.credentials.add"](tenant=call.caller.tenant, usecase=usecase)
        return Reply(made, headers={"Location": f"/v1/usecases/{usecase}/credentials/{made['username']}"})

    async def _credential(self, tenant: str, usecase: str, username: str) -> dict[str, Any]:
        for row in await self.deps.methods["usecase.credentials.list"](tenant=tenant, usecase=usecase):
            if row["username"] == username:
                return row
        raise not_found("no such credential")

    @api_route("GET", "/v1/usecases/{usecase}/credentials/{credential}", permission="usecases.read", response=Credential,
               summary="One SMTP credential")
    async def credential(self, call: Call) -> dict[str, Any]:
        return await self._credential(call.caller.tenant, path_usecase(call), call.params["credential"])

    @api_route("DELETE", "/v1/usecases/{usecase}/credentials/{credential}", permission="usecases.write", response=Credential,
               summary="Revoke an SMTP credential (it stays listed, with revoked_at)")
    async def revoke_credential(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["usecase.credentials.revoke"](tenant=call.caller.tenant, usecase=path_usecase(call),
                                                                     username=call.params["credential"])

    # ------------------------------------------------------------------ pause

    @api_route("PUT", "/v1/usecases/{usecase}/pause", permission="usecases.write", response=PauseState,
               summary="Pause the use case's outbound mail: still accepted and queued, held until resumed")
    async def pause(self, call: Call) -> dict[str, Any]:
        name = path_usecase(call)
        try:
            done = await self.deps.methods["pause"](tenant=call.caller.tenant, usecase=name)
        except Conflict:  # already paused: the state asked for is the state there is
            return {"usecase": name, "paused": True, "changed": False}
        return {"usecase": name, "paused": True, "changed": True, "held": done["held"]}

    @api_route("DELETE", "/v1/usecases/{usecase}/pause", permission="usecases.write", response=PauseState,
               summary="Resume the use case's outbound mail (what a tenant-wide pause holds stays held)")
    async def resume(self, call: Call) -> dict[str, Any]:
        name = path_usecase(call)
        await self.deps.methods["usecase.show"](tenant=call.caller.tenant, name=name)  # an unknown use case is 404
        try:
            done = await self.deps.methods["resume"](tenant=call.caller.tenant, usecase=name)
        except NotFound:  # not paused
            return {"usecase": name, "paused": False, "changed": False}
        return {"usecase": name, "paused": False, "changed": True, "released": done["released"]}
