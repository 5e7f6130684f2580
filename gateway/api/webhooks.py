"""Webhook endpoints and forwarding rules of received mail, over HTTP.

Every route calls the ``webhook.*`` / ``forward.*`` admin method the CLI calls, with the caller's
tenant; URLs pass the same check (gateway/webhooks/urls.py: loopback only with
webhooks.allow_loopback). An endpoint's signing secret is in the answer to its creation and in no
other: the models below have no field for it but ``WebhookCreated.secret``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from ..errors import NotFound
from ..suppression import MAX_ADDRESS
from ..validate import MAX_URL
from .endpoints import Endpoints
from .paging import Page, Paging, after, page
from .problems import invalid, not_found
from .routes import Call, api_route

HookName = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern="^[a-z0-9][a-z0-9._-]*$",
                                       description="1-63 lower-case letters, digits, '.', '-' or '_'")]
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=MAX_URL, description="http(s) URL the events are POSTed to")]
Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern="^([a-z][a-z0-9_]*|\\*)$",
                                   description="an event type (delivered, bounced, received, ...) or * for every one")]
Kinds = Annotated[list[Kind], msgspec.Meta(max_length=50)]
UseCase = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern="^[a-z0-9][a-z0-9_-]*$")]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=MAX_ADDRESS, description="a channel address of the tenant")]


class Webhook(msgspec.Struct):
    name: str
    url: str
    events: Annotated[list[str], msgspec.Meta(description="the event types sent; ['*'] for every one")]
    enabled: bool
    disabled_reason: str
    usecase: Annotated[str | None, msgspec.Meta(description="only events of this use case")]
    address: Annotated[str | None, msgspec.Meta(description="only events of this channel address")]
    backlog: Annotated[int, msgspec.Meta(description="events waiting to be POSTed")]
    failures: int
    failing_since: float | None
    next_attempt_at: float
    last_status: int | None
    last_error: str
    last_success_at: float | None
    created_at: float
    updated_at: float


class WebhookCreated(Webhook):
    secret: Annotated[str, msgspec.Meta(description="the HMAC-SHA256 signing key: shown in this answer only, keep it")]


class WebhookAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Url
    name: HookName | None = None
    events: Kinds | None = None
    usecase: UseCase | None = None
    address: Address | None = None


class WebhookChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to change; what is left out stays. null removes the use case or address narrowing."""

    url: Url | msgspec.UnsetType = msgspec.UNSET
    events: Kinds | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    usecase: UseCase | None | msgspec.UnsetType = msgspec.UNSET
    address: Address | None | msgspec.UnsetType = msgspec.UNSET


class WebhookDeleted(msgspec.Struct):
    deleted: str
    undelivered: Annotated[int, msgspec.Meta(description="events that were waiting and will not be sent")]


class WebhookTest(msgspec.Struct):
    url: str
    ok: bool
    status: Annotated[int | None, msgspec.Meta(description="the HTTP status the endpoint answered; null when none")]
    latency: float
    error: str


class Delivery(msgspec.Struct):
    at: float
    ok: bool
    status: int | None
    latency: float
    events: int
    first_event: int
    last_event: int
    error: str


class Forward(msgspec.Struct):
    id: int
    to: str
    usecase: str | None
    address: str | None
    created_at: float


class ForwardAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Forward the received mail of one use case, or of one channel address (exactly one of them), to ``to``."""

    to: Annotated[str, msgspec.Meta(min_length=3, max_length=MAX_ADDRESS)]
    usecase: UseCase | None = None
    address: Address | None = None


class ListQuery(Paging, forbid_unknown_fields=True):
    pass


def _narrowing(exc: NotFound) -> Exception:
    """A use case or address a body names that the tenant lacks: the request's fault, 422 naming the field."""
    return invalid(exc.message, "usecase" if "use case" in exc.message else "address")


def _forward(rule: dict[str, Any]) -> dict[str, Any]:
    return {**rule, "to": rule["to_address"]}


class WebhookEndpoints(Endpoints):
    async def _get(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["webhook.show"](tenant=call.caller.tenant, name=call.params["webhook"], log_limit=1)

    @api_route("GET", "/v1/webhooks", permission="webhooks.read", query=ListQuery, response=Page[Webhook],
               summary="The tenant's webhook endpoints, by name (never their signing secrets)")
    async def list(self, call: Call) -> Page[dict[str, Any]]:
        rows = await self.deps.methods["webhook.list"](tenant=call.caller.tenant, after=after(call.query.cursor, ""),
                                                       limit=call.query.limit + 1)
        return page(rows, call.query.limit, key=lambda r: r["name"])

    @api_route("GET", "/v1/webhooks/{webhook}", permission="webhooks.read", response=Webhook,
               summary="One webhook endpoint: what it gets, its backlog and failure state")
    async def show(self, call: Call) -> dict[str, Any]:
        return await self._get(call)

    @api_route("POST", "/v1/webhooks", permission="webhooks.write", body=WebhookAdd, response=WebhookCreated, status=201,
               summary="Add a webhook endpoint; the answer carries its signing secret, this once")
    async def add(self, call: Call) -> dict[str, Any]:
        try:
            made = await self.deps.methods["webhook.add"](tenant=call.caller.tenant, **msgspec.structs.asdict(call.body))
        except NotFound as exc:
            raise _narrowing(exc) from None
        return made | {"backlog": 0}

    @api_route("PATCH", "/v1/webhooks/{webhook}", permission="webhooks.write", body=WebhookChange, response=Webhook,
               summary="Change a webhook endpoint's URL, events, narrowing or enabled state")
    async def update(self, call: Call) -> dict[str, Any]:
        await self._get(call)   # a missing endpoint is 404; a missing use case or address after this is 422
        fields = {k: v for k, v in msgspec.structs.asdict(call.body).items() if v is not msgspec.UNSET}
        unset = [k for k, v in fields.items() if v is None]
        try:
            await self.deps.methods["webhook.update"](tenant=call.caller.tenant, name=call.params["webhook"], unset=unset,
                                                      **{k: v for k, v in fields.items() if v is not None})
        except NotFound as exc:
            raise _narrowing(exc) from None
        return await self._get(call)

    @api_route("POST", "/v1/webhooks/{webhook}/test", permission="webhooks.write", response=WebhookTest,
               summary="POST a signed webhook_test event to the endpoint now; its status and latency")
    async def test(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["webhook.test"](tenant=call.caller.tenant, name=call.params["webhook"])

    @api_route("GET", "/v1/webhooks/{webhook}/log", permission="webhooks.read", query=ListQuery, response=Page[Delivery],
               summary="The endpoint's delivery attempts, newest first")
    async def log(self, call: Call) -> Page[dict[str, Any]]:
        before = after(call.query.cursor, 0) or None
        rows = await self.deps.methods["webhook.log"](tenant=call.caller.tenant, name=call.params["webhook"], before_id=before,
                                                      limit=call.query.limit + 1)
        return page(rows, call.query.limit, key=lambda r: r["id"])

    @api_route("DELETE", "/v1/webhooks/{webhook}", permission="webhooks.write", response=WebhookDeleted,
               summary="Delete a webhook endpoint with its waiting events and log")
    async def delete(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["webhook.delete"](tenant=call.caller.tenant, name=call.params["webhook"])


class ForwardEndpoints(Endpoints):
    @staticmethod
    def _id(call: Call) -> int:
        raw = call.params["forward_id"]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise not_found("no such forwarding rule")
        return int(raw)

    @api_route("GET", "/v1/forwards", permission="webhooks.read", query=ListQuery, response=Page[Forward],
               summary="The tenant's forwarding rules of received mail")
    async def list(self, call: Call) -> Page[dict[str, Any]]:
        rows = await self.deps.methods["forward.list"](tenant=call.caller.tenant, after_id=after(call.query.cursor, 0),
                                                       limit=call.query.limit + 1)
        return page([_forward(r) for r in rows], call.query.limit, key=lambda r: r["id"])

    @api_route("GET", "/v1/forwards/{forward_id}", permission="webhooks.read", response=Forward, summary="One forwarding rule")
    async def show(self, call: Call) -> dict[str, Any]:
        return _forward(await self.deps.methods["forward.show"](tenant=call.caller.tenant, id=self._id(call)))

    @api_route("POST", "/v1/forwards", permission="webhooks.write", body=ForwardAdd, response=Forward, status=201,
               summary="Forward the received mail of a use case or of a channel address to another mailbox")
    async def add(self, call: Call) -> dict[str, Any]:
        b = call.body
        if (b.usecase is None) == (b.address is None):
            raise invalid("name exactly one of usecase and address", "usecase")
        try:
            rule = await self.deps.methods["forward.add"](tenant=call.caller.tenant, to=b.to, usecase=b.usecase, address=b.address)
        except NotFound as exc:
            raise _narrowing(exc) from None
        return _forward(rule)

    @api_route("DELETE", "/v1/forwards/{forward_id}", permission="webhooks.write", response=Forward,
               summary="Delete a forwarding rule")
    async def delete(self, call: Call) -> dict[str, Any]:
        return _forward(await self.deps.methods["forward.delete"](tenant=call.caller.tenant, id=self._id(call)))
