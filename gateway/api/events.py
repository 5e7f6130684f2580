"""The event log as a tenant reads it (GET /v1/events): filtered by type, time and use case,
keyset-paged by event id, newest first unless ``order=oldest``.

A sender key sees only its use case's events: those about its messages (queued, delivered,
deferred, bounced, complained, suppressed at delivery, held, dsn_sent...) and mail received for it
(``received``, unsubscribes). Events about the tenant itself (domains, use cases, keys, webhooks,
``api_change``) name no use case and are for the tenant's other roles. The use case of an event is
set when it is appended (store/events.py), so this filter is an index range, not a JSON scan.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .endpoints import Endpoints
from .narrowing import cursor_id, listing, usecase_id
from .paging import Page, Paging, decode_cursor
from .routes import Call, api_route

Timestamp = Annotated[float, msgspec.Meta(ge=0, le=1e11, description="Unix time, seconds")]
Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern="^[a-z_]+$", description="an event type")]


class EventQuery(Paging, forbid_unknown_fields=True, kw_only=True):
    type: Annotated[list[Kind], msgspec.Meta(max_length=20, description="event types (repeat for several)")] | None = None
    usecase: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a use case name")] | None = None
    since: Annotated[Timestamp, msgspec.Meta(description="appended at or after (Unix time)")] | None = None
    until: Annotated[Timestamp, msgspec.Meta(description="appended before (Unix time)")] | None = None
    order: Literal["newest", "oldest"] = "newest"


class Event(msgspec.Struct):
    id: int
    created_at: float
    type: str
    subject: str
    usecase: str | None
    data: dict[str, Any]


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    """An event row as the API shows it (``kind`` is ``type`` here, as in webhook payloads)."""
    return {"id": row["id"], "created_at": row["created_at"], "type": row["kind"], "subject": row["subject"],
            "usecase": row.get("usecase"), "data": row["data"]}


class EventEndpoints(Endpoints):
    @api_route("GET", "/v1/events", permission="events.read", query=EventQuery, response=Page[Event],
               summary="The tenant's events (a sender key: its use case's)",
               description="With `type` a page looks at a bounded number of events: it may hold fewer than `limit`"
                           " and still have a `next_cursor`; follow it until it is null.")
    async def list(self, call: Call) -> dict[str, Any]:
        q = call.query
        narrowed = await usecase_id(self.deps.store, call.caller, q.usecase)
        rows, more = await self.deps.store.events.tenant_page(
            call.caller.tenant_id, usecase_id=narrowed, kinds=list(dict.fromkeys(q.type or ())), since=q.since, until=q.until,
            cursor=cursor_id(decode_cursor(q.cursor)), newest=q.order == "newest", limit=q.limit)
        return listing([event_view(r) for r in rows], more)
