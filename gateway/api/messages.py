"""Outbound messages as a tenant reads them: the list, and one message's status per recipient with
every attempt and the message's events (GET /v1/messages, GET /v1/messages/{queue_id}).

The status is what `gateway queue show` prints (store.queue's read) with the message's events, read
in one snapshot and scoped in the store: a message of another tenant, or of another use case for a
sender key, is not found. Sending is sending.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..services.queue import QUEUE_ID
from ..store.queue import STATES, state_of
from .endpoints import Endpoints
from .events import Event, event_view
from .narrowing import cursor_id, listing, usecase_id
from .paging import Page, Paging, decode_cursor
from .problems import not_found
from .routes import Call, api_route

# Events a status read carries: the message's newest (a message to many recipients retried for
# days has thousands; GET /v1/events?... reads them all).
STATUS_EVENTS = 100

Timestamp = Annotated[float, msgspec.Meta(ge=0, le=1e11, description="Unix time, seconds")]
UsecaseName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a use case name")]


class MessageQuery(Paging, forbid_unknown_fields=True, kw_only=True):
    usecase: UsecaseName | None = None
    state: Annotated[Literal[STATES], msgspec.Meta(description="messages with a recipient in this state")] | None = None  # type: ignore[valid-type]
    recipient: Annotated[str, msgspec.Meta(min_length=1, max_length=320, description="messages to this address (any case)")] | None = None
    since: Annotated[Timestamp, msgspec.Meta(description="created at or after (Unix time)")] | None = None
    until: Annotated[Timestamp, msgspec.Meta(description="created before (Unix time)")] | None = None


class MessageSummary(msgspec.Struct):
    queue_id: str
    usecase: str | None
    mail_from: str
    message_id: str
    size: int
    created_at: float
    expires_at: float
    state: str
    recipients: int = 0
    counts: dict[str, int] = {}


class Attempt(msgspec.Struct):
    at: float
    duration: float
    outcome: str
    code: int | None
    enhanced: str
    reply: str
    remote: str
    bounce_class: str = msgspec.field(name="class", default="")
    class_reason: str = ""


class RecipientStatus(msgspec.Struct):
    index: int
    rcpt: str
    state: str
    hold_reason: str
    attempts: int
    next_attempt_at: float | None
    in_flight: bool
    last_code: int | None
    last_enhanced: str
    last_reply: str
    updated_at: float
    attempt_log: list[Attempt]


class MessageStatus(msgspec.Struct):
    queue_id: str
    usecase: str | None
    mail_from: str
    message_id: str
    thread_id: str | None
    size: int
    created_at: float
    expires_at: float
    hold_reason: str
    finished_at: float | None
    body_dropped_at: float | None
    state: str
    recipients: list[RecipientStatus]
    events: list[Event]


def _state(recipients: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for r in recipients:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return state_of(counts)


class MessageEndpoints(Endpoints):
    @api_route("GET", "/v1/messages", permission="messages.read", query=MessageQuery, response=Page[MessageSummary],
               summary="The tenant's outbound messages, newest first (a sender key: its use case's)",
               description="Each message with its recipients counted by state; `state` is the least finished of them."
                           " With `state` or `recipient` a page looks at a bounded number of messages: it may hold fewer"
                           " than `limit` and still have a `next_cursor`.")
    async def list(self, call: Call) -> dict[str, Any]:
        q = call.query
        narrowed = await usecase_id(self.deps.store, call.caller, q.usecase)
        rows, more = await self.deps.store.messages.page(call.caller.tenant_id, usecase_id=narrowed, state=q.state, recipient=q.recipient, since=q.since,
                                                         until=q.until, cursor=cursor_id(decode_cursor(q.cursor)), limit=q.limit)
        return listing(rows, more)

    @api_route("GET", "/v1/messages/{queue_id}", permission="messages.read", response=MessageStatus,
               summary="One message's status: each recipient with every attempt, and the message's events",
               description=f"The events are the message's newest {STATUS_EVENTS}, oldest first.")
    async def show(self, call: Call) -> MessageStatus:
        queue_id = call.params["queue_id"].lower()
        if not QUEUE_ID.match(queue_id):
            raise not_found(f"no message {queue_id[:40]}")
        caller = call.caller
        message = await self.deps.store.messages.status(queue_id, caller.tenant_id, usecase_id=caller.usecase_id, events=STATUS_EVENTS)
        if message is None:
            raise not_found(f"no message {queue_id}")
        for r in message["recipients"]:
            if r["state"] not in ("pending", "deferred"):
                r["next_attempt_at"] = None
        return {**message, "state": _state(message["recipients"]), "events": [event_view(e) for e in message["events"]]}
