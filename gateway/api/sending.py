"""POST /v1/messages: sending over HTTP through the same checks, preparation and queue as SMTP.

    request  JSON (``SendRequest``: composed into MIME by compose.py) or a ``message/rfc822`` body
             (the message as it is; envelope from its From header, recipients from ``?to=`` or,
             without it, its To, Cc and Bcc headers, as ``sendmail -t``)
    -> the use case (a sender key: its own; an agent: the From channel address's; owner/admin: the
       named one, or the one the From address belongs to)
    -> submit.Submitter: mail (account, sender, quota, rate) -> rcpt per recipient (syntax, limit,
       suppression: refused ones are listed, the rest accepted, as SMTP's RCPT) -> prepare -> commit
    -> 202 {queue_id, message_id, thread_id, held, recipients: [...]} once the message is on disk;
       422 when no recipient was accepted; any other refusal as refusals.py's table says, with the
       SMTP reply the same refusal gets on the submission port in ``smtp``.

Idempotency-Key: the answer is stored in the same transaction as the message (store/idempotency.py);
a retry with the same key and the same request gets that answer again and queues nothing; the same
key with another request is 422 idempotency-key-reused. Duplicates arriving together wait for each
other on an in-process lock per (API key, Idempotency-Key), and the stored row decides across nodes.
Only a 202 is remembered: a refused request may be sent again with its key once fixed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import re
import time
from email.utils import getaddresses
from typing import Annotated, Any

import msgspec

from ..config import Config
from ..errors import NotFound, SMTPError, StorageFull
from ..headers import split_header
from ..store.idempotency import Record
from ..submission import policy, submit
from ..submission.hooks import STORAGE_FULL
from . import compose
from .endpoints import Deps
from .problems import ApiProblem, invalid
from .refusals import problem
from .routes import Call, Caller, Reply, api_route

RFC822 = "message/rfc822"
MAX_ADDRESS = 320
MAX_LIST = 1000            # recipients in one of to/cc/bcc (the use case's max_recipients applies on top)
MAX_IDEMPOTENCY_KEY = 255
IDEMPOTENCY_KEY = re.compile(r"^[\x20-\x7e]{1,255}$")
MAX_LOCKS = 10000
JSON_OVERHEAD = 64 * 1024  # bytes of JSON around the base64 content a body of max_message_size needs
USECASE_TTL = 5.0
STORAGE_RETRY = 60

Email = Annotated[str, msgspec.Meta(min_length=3, max_length=MAX_ADDRESS, description="An RFC 5321 mailbox: local@domain.")]
Name = Annotated[str, msgspec.Meta(max_length=200, description="Display name (non-ASCII is encoded, RFC 2047).")]
Text = Annotated[str, msgspec.Meta(max_length=64 * 1024 * 1024)]


class Mailbox(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    address: Email
    name: Name = ""


Party = Email | Mailbox


class Attachment(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    content: Annotated[Text, msgspec.Meta(description="The file's bytes, base64 (RFC 4648, no line breaks).")]
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    content_type: Annotated[str, msgspec.Meta(max_length=127, pattern=r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")] = "application/octet-stream"
    content_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[!-;=?-~]+$",
                                            description="Makes the attachment inline: the HTML refers to it as cid:<content_id>.")] | None = None


class SendRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    sender: Annotated[Party, msgspec.Meta(description="The From address: one of the use case's senders or a channel address.")] = msgspec.field(name="from")
    to: Annotated[list[Party], msgspec.Meta(max_length=MAX_LIST)] = []
    cc: Annotated[list[Party], msgspec.Meta(max_length=MAX_LIST)] = []
    bcc: Annotated[list[Party], msgspec.Meta(max_length=MAX_LIST, description="Envelope recipients never shown in the header.")] = []
    reply_to: Party | None = None
    subject: Annotated[str, msgspec.Meta(max_length=900)] = ""
    text: Text | None = None
    html: Text | None = None
    attachments: Annotated[list[Attachment], msgspec.Meta(max_length=100)] = []
    headers: Annotated[dict[Annotated[str, msgspec.Meta(min_length=1, max_length=76)], Annotated[str, msgspec.Meta(max_length=900)]],
                       msgspec.Meta(max_length=50, description="Custom header fields (not the ones the gateway sets).")] = {}
    in_reply_to: Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"^<?[^<>\s]+>?$",
                                             description="Message-ID this answers: the reply is threaded with it, References from our records.")] | None = None
    metadata: Annotated[dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], Annotated[str, msgspec.Meta(max_length=500)]],
                        msgspec.Meta(max_length=20, description="Kept in the message's 'queued' event.")] = {}
    tags: Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]], msgspec.Meta(max_length=10)] = []
    usecase: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


class SendQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    usecase: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="message/rfc822 only: the use case.")] | None = None
    to: Annotated[list[Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS)]],
                  msgspec.Meta(max_length=MAX_LIST, description="message/rfc822 only: the envelope recipients (default: To, Cc, Bcc).")] | None = None


class RecipientResult(msgspec.Struct):
    address: str
    status: Annotated[str, msgspec.Meta(description="accepted | dropped (suppressed, the use case accepts and drops) | refused")]
    smtp: Annotated[str, msgspec.Meta(description="The reply SMTP's RCPT gives this recipient.")]
    type: str | None = None      # the problem type of a refusal


class Sent(msgspec.Struct):
    queue_id: str | None          # None: every recipient was dropped, nothing queued
    message_id: str | None
    thread_id: str | None
    usecase: str
    held: str | None              # 'paused': queued and held until the pause ends
    recipients: list[RecipientResult]


def unknown_usecase(name: str) -> ApiProblem:
    """One answer for a use case that does not exist and one the key may not send through (no
    existence oracle); 422, not 404: the name is a field of the request, not the resource addressed."""
    return ApiProblem(422, "usecase-not-found", "No such use case", f"this key sends through no use case {name[:64]!r}", field="usecase")


def body_limit(config: Config) -> int:
    """A message of submission.max_message_size, base64 in JSON, with room for the JSON around it."""
    return config.submission.max_message_size * 4 // 3 + JSON_OVERHEAD


def _party(p: Party) -> tuple[str, str]:
    return (p, "") if isinstance(p, str) else (p.address, p.name)


@functools.lru_cache(maxsize=4096)
def _address_literal(client_ip: str) -> str:
    """``[192.0.2.1]``, ``[IPv6:...]`` or ``unknown``: parsed once a client, not once a message."""
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return "unknown"
    return f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"


def received_http(*, client_ip: str, hostname: str, queue_id: str, tls: bool, recipients: list[str], now: float) -> bytes:
    """The trace field of a message that came over the API (RFC 5321 4.4, as submission's). The client's
    address may come from a trusted proxy's X-Forwarded-For: only an IP address is written."""
    literal = _address_literal(client_ip)
    lines = [f"Received: from {literal}", f"\tby {hostname} (gateway) with {'HTTPS' if tls else 'HTTP'} id {queue_id}"]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>")
    lines[-1] += f"; {compose.local_date(int(now))}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


class SendEndpoints:
    def __init__(self, deps: Deps):
        self.deps = deps
        self._locks: dict[tuple[int, str], asyncio.Lock] = {}
        self._usecases: dict[int, tuple[float, list[dict[str, Any]]]] = {}
        self._commits: set[asyncio.Task] = set()

    @property
    def submitter(self) -> submit.Submitter:
        return self.deps.sending

    @api_route("POST", "/v1/messages", permission="messages.send", body=SendRequest, raw=(RFC822,), query=SendQuery,
               response=Sent, status=202, audit=False, max_body=body_limit, reserve=4, tag="messages",
               summary="Send a message (JSON or message/rfc822)",
               description="The same checks, preparation, threading and durable queue as SMTP submission. 202 once the "
                           "message is on disk, with a result per recipient (refused ones listed, as SMTP's RCPT refuses "
                           "them); 422 when none is accepted. Refusals carry the SMTP reply in `smtp`. Idempotency-Key "
                           "makes a retry safe for 24 hours.")
    async def send(self, call: Call) -> Reply:
        key = call.request.headers.get("Idempotency-Key")
        if key is None:
            return await self._send(call, None)
        if not IDEMPOTENCY_KEY.match(key):
            raise invalid("Idempotency-Key is 1 to 255 printable ASCII characters", "header.Idempotency-Key")
        # The request as decoded (JSON re-encoded: the same fields are the same request however spaced).
        raw = call.body if isinstance(call.body, bytes) else msgspec.json.encode(call.body)
        digest = hashlib.sha256(f"{call.content_type}\0{call.request.query_string}\0".encode() + raw).hexdigest()
        async with self._lock(call.caller.key_id, key):
            earlier = await self.deps.store.idempotency.find(call.caller.key_id, key)
            if earlier is None:
                return await self._send(call, (key, digest))
            return self._replay(earlier, digest)

    @staticmethod
    def _replay(earlier: dict[str, Any], digest: str) -> Reply:
        if earlier["fingerprint"] != digest:
            raise ApiProblem(422, "idempotency-key-reused", "The Idempotency-Key was used for another request",
                             "send a new key for a new message; a retry must repeat the request exactly", field="header.Idempotency-Key")
        return Reply(body=bytes(earlier["response"]), status=earlier["status"], headers={"Idempotent-Replayed": "true"},
                     content_type="application/json")

    def _lock(self, key_id: int, key: str) -> asyncio.Lock:
        lock = self._locks.get((key_id, key))
        if lock is None:
            if len(self._locks) >= MAX_LOCKS:
                for k in [k for k, v in self._locks.items() if not v.locked()]:
                    del self._locks[k]
            lock = self._locks[(key_id, key)] = asyncio.Lock()
        return lock

    # ------------------------------------------------------------------ the send

    async def _send(self, call: Call, idempotency: tuple[str, str] | None) -> Reply:
        started = time.perf_counter()
        caller = call.caller
        if call.content_type == RFC822:
            data, sender, recipients, usecase = self._raw(call)
            declared: int | None = len(data)
        else:
            req: SendRequest = call.body
            if call.query is not None and (call.query.usecase is not None or call.query.to is not None):
                raise invalid("query parameters are for message/rfc822 bodies; name them in the JSON", "query")
            sender = _party(req.sender)[0]
            recipients = [(f"{field}[{i}]", _party(p)[0]) for field in ("to", "cc", "bcc") for i, p in enumerate(getattr(req, field))]
            if not recipients:
                raise invalid("name at least one recipient (to, cc or bcc)", "to")
            # Composed first: a header the request may not set is refused before any policy counts the send.
            usecase, data, declared = req.usecase, self._compose(req), None
        if not recipients:
            raise invalid("name at least one recipient (to, cc or bcc)", "to")
        usecase_id = await self._usecase(caller, usecase, sender)
        sub = self.submitter
        try:
            # SMTPUTF8 is implied over HTTP: a non-ASCII address is taken as RFC 6531 allows it.
            utf8 = not (sender.isascii() and all(a.isascii() for _, a in recipients))
            draft = await sub.mail(usecase_id, sender, utf8=utf8, declared=declared)
        except SMTPError as err:
            raise problem(err, "from") from None
        if caller.role == "agent" and draft.channel is None:
            raise ApiProblem(403, "channel-address-required", "An agent key sends from a channel address only",
                             f"{sender} is not one of the tenant's channel addresses", field="from", permission="messages.send")
        results, refusals = await self._recipients(draft, recipients)
        if not any(r.status != "refused" for r in results):
            field, err = refusals[0]
            raise problem(err, field, f"no recipient was accepted: {err.public}")
        tls = self.deps.config().api.tls

        def received(queue_id: str, now: float, rcpts: list[str]) -> bytes:
            return received_http(client_ip=caller.client or "unknown", hostname=self.deps.config().daemon.hostname, queue_id=queue_id,
                                 tls=tls, recipients=rcpts, now=now)

        event = {"source": "api", "api_key": caller.public_id}
        if call.content_type != RFC822:
            if call.body.metadata:
                event["metadata"] = call.body.metadata
            if call.body.tags:
                event["tags"] = call.body.tags
        name = draft.ctx.get("usecase") or draft.ctx.get("name") or ""
        record = None
        if idempotency is not None:
            record = Record(key_id=caller.key_id, key=idempotency[0], fingerprint=idempotency[1], status=202,
                            render=lambda put: msgspec.json.encode(self._answer(put, name, results)))
        try:
            new = await sub.prepare(draft, data, received=received, client=caller.client, event_data=event, idempotency=record)
        except SMTPError as err:
            raise problem(err, "body") from None
        del data
        if new is None:   # every recipient dropped (suppressed, accept-and-drop): nothing to queue, as SMTP
            return Reply(body=Sent(queue_id=None, message_id=None, thread_id=None, usecase=name, held=None, recipients=results))
        try:
            put = await self._commit_shielded(sub.commit(draft, new, started=started, client=caller.client, source="api"))
        except StorageFull:
            # Counted and logged once per episode by the store; the answer is SMTP's 452 4.3.1 over HTTP.
            raise ApiProblem(503, "storage-full", "The gateway's storage is full", "try again later", smtp=STORAGE_FULL,
                             retry_after=STORAGE_RETRY) from None
        if put.get("replayed") is not None:   # another node answered this key first
            return self._replay(put["replayed"], idempotency[1] if idempotency else "")
        return Reply(body=self._answer(put, name, results))

    @staticmethod
    def _answer(put: dict[str, Any], usecase: str, results: list[RecipientResult]) -> Sent:
        return Sent(queue_id=put["queue_id"], message_id=put["message_id"], thread_id=put.get("thread_id"), usecase=usecase,
                    held=put.get("hold_reason") or None, recipients=results)

    async def _commit_shielded(self, commit: Any) -> dict[str, Any]:
        """Once the put has started it runs to its end, even when the client goes away meanwhile."""
        task = asyncio.ensure_future(commit)
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        return await asyncio.shield(task)

    async def _recipients(self, draft: submit.Draft, recipients: list[tuple[str, str]]) -> tuple[list[RecipientResult], list]:
        results: list[RecipientResult] = []
        refusals: list[tuple[str, SMTPError]] = []
        for field, address in recipients:
            try:
                outcome = await self.submitter.rcpt(draft, address)
            except SMTPError as err:
                results.append(RecipientResult(address, "refused", err.reply, problem(err).body.type))
                refusals.append((field, err))
                continue
            if outcome == submit.ACCEPTED:
                results.append(RecipientResult(address, "accepted", "250 2.1.5 Recipient OK"))
            elif outcome == submit.DROPPED:
                results.append(RecipientResult(address, "dropped", "250 2.1.5 Recipient OK"))
        return results, refusals

    def _compose(self, req: SendRequest) -> bytearray:
        boxes = {f: [_party(p) for p in getattr(req, f)] for f in ("to", "cc")}
        return compose.message(now=time.time(), sender=_party(req.sender), to=boxes["to"], cc=boxes["cc"],
                               reply_to=_party(req.reply_to) if req.reply_to is not None else None, subject=req.subject,
                               in_reply_to=req.in_reply_to, extra=req.headers, text=req.text, html=req.html,
                               attachments=req.attachments)

    def _raw(self, call: Call) -> tuple[bytearray, str, list[tuple[str, str]], str | None]:
        """The message, its envelope sender (From) and recipients (?to=, else To, Cc and Bcc)."""
        data = bytearray(call.body)
        if b"\r" not in data:
            data = bytearray(data.replace(b"\n", b"\r\n"))   # a file with Unix line ends; a mix is refused as SMTP does
        try:
            fields = split_header(data, self.deps.config().submission.max_header_bytes).fields
            values: dict[bytes, list[str]] = {}
            for f in fields:
                if f.name in (b"from", b"to", b"cc", b"bcc"):
                    values.setdefault(f.name, []).append(f.value)
        except SMTPError as err:
            raise problem(err, "body") from None
        senders = [a for _, a in getaddresses(values.get(b"from", [])) if a]
        if not senders:
            raise problem(SMTPError(550, "5.6.0", "Message must have one From header with an address", "no From address"), "body")
        query = call.query
        if query is not None and query.to:
            recipients = [(f"query.to[{i}]", a) for i, a in enumerate(query.to)]
        else:
            named = [a for name in (b"to", b"cc", b"bcc") for _, a in getaddresses(values.get(name, [])) if a]
            recipients = [(f"body.recipients[{i}]", a) for i, a in enumerate(named[:MAX_LIST])]
        return data, senders[0], recipients, query.usecase if query is not None else None

    # ------------------------------------------------------------------ which use case

    async def _usecase(self, caller: Caller, name: str | None, sender: str) -> int:
        """The use case a send goes through (module docstring); 404 for one the key may not see."""
        if caller.role == "sender":
            if name is not None and name != caller.usecase:
                raise unknown_usecase(name)
            return caller.usecase_id
        if caller.role == "agent":
            try:
                address = await self.deps.store.addresses.get(caller.tenant, policy.address_key(sender))
            except NotFound:
                raise ApiProblem(403, "channel-address-required", "An agent key sends from a channel address only",
                                 f"{sender} is not one of the tenant's channel addresses", field="from", permission="messages.send") from None
            if name is not None and name != address["usecase"]:
                raise unknown_usecase(name)
            return address["usecase_id"]
        usecases = await self._tenant_usecases(caller)
        if name is not None:
            for u in usecases:
                if u["name"] == name:
                    return u["id"]
            raise unknown_usecase(name)
        domain = policy.normalise(sender).rpartition("@")[2]
        mine = [u for u in usecases if domain == u["domain"] or domain.endswith("." + u["domain"])]
        if len(mine) > 1:
            mine = [u for u in mine if policy.sender_allowed(sender, u["senders"])] or mine
        if len(mine) == 1:
            return mine[0]["id"]
        if not mine:
            raise problem(SMTPError(553, "5.7.1", "Sender address not allowed for this login", f"no use case sends from {domain}"), "from")
        raise ApiProblem(422, "usecase-required", "Name the use case", f"several use cases send from {domain}: name one in usecase",
                         field="usecase")

    async def _tenant_usecases(self, caller: Caller) -> list[dict[str, Any]]:
        now = time.monotonic()
        hit = self._usecases.get(caller.tenant_id)
        if hit is not None and now - hit[0] <= USECASE_TTL:
            return hit[1]
        rows = await self.deps.store.usecases.list(caller.tenant)
        if len(self._usecases) >= MAX_LOCKS:
            self._usecases.clear()
        self._usecases[caller.tenant_id] = (now, rows)
        return rows
