"""Received mail and threads as a tenant reads them: GET /v1/inbox, /v1/inbox/{inbound_id} (the same
JSON a received-mail webhook carries, gateway/inbound/payload.py), its raw .eml and its attachments,
and /v1/threads/{thread_id} (both directions).

Everything goes through the inbox service (gateway/services/inbox.py, `gateway inbox ...`) with the
key's tenant, so another tenant's message is not found; the list is the store's page of the key's
tenant (store/inbox.py), which bounds the rows a `kind` filter looks at. Bytes (the .eml, an attachment) are streamed
piece by piece (the service's CHUNK), never held whole; an attachment is served as a download only
(the web server's rule for attachment URLs: a safe filename, nosniff, a sandboxing CSP).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from ..errors import Conflict, InvalidArgument, NotFound
from ..inbound.delivery import MIME_TYPE, SECURITY_HEADERS, content_disposition
from ..inbound.payload import inbound_payload
from ..services.inbox import CHUNK, INBOUND_ID, KINDS
from .endpoints import Endpoints
from .narrowing import listing
from .paging import Page, Paging, decode_cursor
from .problems import invalid, not_found
from .routes import Call, api_route


class InboxQuery(Paging, forbid_unknown_fields=True, kw_only=True):
    thread: Annotated[str, msgspec.Meta(min_length=1, max_length=998, description="a thread id (its first Message-ID)")] | None = None
    kind: Literal[KINDS] | None = None  # type: ignore[valid-type]


class InboxItem(msgspec.Struct):
    inbound_id: str
    received_at: float
    state: str
    kind: str | None
    usecase: str | None
    address: str | None
    mail_from: str
    recipients: list[str]
    from_address: str | None
    subject: str | None
    header_message_id: str | None
    thread_id: str | None
    parent_message_id: str | None
    flags: list[str]
    size: int
    attachments: int


class Attachment(msgspec.Struct):
    position: int
    filename: str
    content_type: str
    size: int
    content_id: str
    inline: bool
    url: str


class Envelope(msgspec.Struct):
    mail_from: str
    recipients: list[str]


class Classification(msgspec.Struct):
    kind: str | None
    rule: str


class InboundMessage(msgspec.Struct):
    inbound_id: str
    message_id: str | None
    kind: str | None
    classification: Classification
    thread_id: str | None
    parent: str | None
    usecase: str | None
    address: str | None
    source: str
    received_at: float
    envelope: Envelope
    from_: str | None = msgspec.field(name="from")
    from_name: str = ""
    to: list[str] = []
    cc: list[str] = []
    reply_to: list[str] = []
    subject: str | None = None
    date: str = ""
    in_reply_to: str = ""
    references: list[str] = []
    forwarded_by: str = ""
    flags: list[str] = []
    size: int = 0
    text: str = ""
    html: str = ""
    stripped_text: str = ""
    truncated: list[str] = []
    attachments: list[Attachment] = []
    auth: dict[str, Any] = {}
    report: dict[str, Any] | None = None
    defects: list[str] = []


class ThreadRecipient(msgspec.Struct):
    rcpt: str
    state: str


class ThreadEntry(msgspec.Struct):
    direction: str
    at: float
    id: str | None
    message_id: str | None
    usecase: str | None
    from_: str | None = msgspec.field(name="from")
    kind: str | None = None
    subject: str | None = None
    parent: str | None = None
    recipients: list[ThreadRecipient] = []


class Thread(msgspec.Struct):
    thread_id: str
    entries: list[ThreadEntry]


def _inbound_id(call: Call) -> str:
    inbound_id = call.params["inbound_id"]
    if not INBOUND_ID.match(inbound_id):
        raise not_found(f"no inbound message {inbound_id[:40]}")
    return inbound_id


async def _stream(call: Call, first: bytes, size: int, more: Any, headers: dict[str, str]) -> web.StreamResponse:
    """Send ``first`` then each piece ``more(offset)`` gives until ``size`` bytes are out."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = size
    await response.prepare(call.request)
    try:
        await response.write(first)
        sent = len(first)
        while sent < size:
            piece = await more(sent)
            if not piece:
                break   # shrank meanwhile (retention): the client sees a short body against Content-Length
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
    except ConnectionError:
        pass        # the client went away: nothing to answer, and nothing went wrong here
    return response


class InboxEndpoints(Endpoints):
    @api_route("GET", "/v1/inbox", permission="inbox.read", query=InboxQuery, response=Page[InboxItem],
               summary="Received mail in arrival order, without bodies (`attachments` is a count)",
               description="With `kind` a page looks at a bounded number of messages: it may hold fewer than `limit`"
                           " and still have a `next_cursor`; follow it until it is null.")
    async def list(self, call: Call) -> dict[str, Any]:
        q = call.query
        after = decode_cursor(q.cursor)
        if after is not None and not (isinstance(after, str) and INBOUND_ID.match(after)):
            raise invalid("cursor is not one this API gave", "query.cursor", 400)
        rows, more = await self.deps.store.inbox.page(call.caller.tenant_id, thread_id=q.thread, kind=q.kind, after=after,
                                                      limit=q.limit)
        return listing(rows, more)

    @api_route("GET", "/v1/inbox/{inbound_id}", permission="inbox.read", response=InboundMessage,
               summary="One received message: envelope, headers, bodies (bounded, `truncated` names what was cut),"
                       " attachments, authentication results, thread",
               description="The same representation a received-mail webhook carries; each attachment's `url` is its API path.")
    async def show(self, call: Call) -> InboundMessage:
        inbound_id = _inbound_id(call)
        row = await self.deps.methods["inbox.show"](id=inbound_id, tenant=call.caller.tenant)

        def url_for(position: int) -> str:
            return f"/v1/inbox/{inbound_id}/attachments/{position}"

        return inbound_payload(row, url_for=url_for, max_body=self.deps.config().inbox.max_body_bytes)

    @api_route("GET", "/v1/inbox/{inbound_id}/raw", permission="inbox.read", produces="message/rfc822",
               summary="The received message as stored (RFC 5322, with the gateway's Authentication-Results)")
    async def raw(self, call: Call) -> web.StreamResponse:
        inbound_id = _inbound_id(call)
        export = self.deps.methods["inbox.export"]
        tenant = call.caller.tenant

        async def piece(offset: int) -> bytes:
            return base64.b64decode((await export(id=inbound_id, tenant=tenant, offset=offset, length=CHUNK))["data"])

        first = await export(id=inbound_id, tenant=tenant, offset=0, length=CHUNK)   # NotFound before anything is sent
        return await _stream(call, base64.b64decode(first["data"]), first["size"], piece,
                             {**SECURITY_HEADERS, "Content-Type": "message/rfc822",
                              "Content-Disposition": content_disposition(f"{inbound_id}.eml")})

    @api_route("GET", "/v1/inbox/{inbound_id}/attachments/{attachment}", permission="inbox.read",
               produces="*/*",   # the attachment's own type (or application/octet-stream)
               summary="One attachment's bytes, as a download (named by filename or, when none has that name, by position)")
    async def attachment(self, call: Call) -> web.StreamResponse:
        inbound_id = _inbound_id(call)
        name, tenant = call.params["attachment"], call.caller.tenant
        fetch = self.deps.methods["inbox.attachment"]

        async def piece(offset: int) -> bytes:
            return base64.b64decode((await fetch(id=inbound_id, name=name, tenant=tenant, offset=offset, length=CHUNK))["data"])

        try:
            first = await fetch(id=inbound_id, name=name, tenant=tenant, offset=0, length=CHUNK)
        except Conflict as exc:   # two attachments of that name: the caller names one by position
            raise NotFound(exc.message) from None
        except InvalidArgument:   # not a name any attachment can have
            raise not_found(f"inbound message {inbound_id} has no such attachment") from None
        content_type = first["content_type"] if MIME_TYPE.match(first["content_type"] or "") else "application/octet-stream"
        return await _stream(call, base64.b64decode(first["data"]), first["size"], piece,
                             {**SECURITY_HEADERS, "Content-Type": content_type,
                              "Content-Disposition": content_disposition(first["filename"] or f"attachment-{first['position']}")})


class ThreadEndpoints(Endpoints):
    @api_route("GET", "/v1/threads/{thread_id}", permission="inbox.read", response=Thread,
               summary="A conversation, both directions, oldest first (its newest 1,000 entries)")
    async def show(self, call: Call) -> Thread:
        thread_id = call.params["thread_id"].strip().strip("<>")
        if not thread_id:
            raise not_found("no such thread")
        try:
            entries = await self.deps.methods["thread.show"](id=thread_id, tenant=call.caller.tenant)
        except InvalidArgument:
            raise not_found(f"no thread {thread_id[:60]}") from None
        return {"thread_id": thread_id, "entries": entries}
