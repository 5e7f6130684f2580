"""Received mail as operators see it (`gateway inbox ...`, `gateway thread show`) and the
forwarding rules (`gateway inbound forward ...`).

Every call may name a tenant: then a message, thread or attachment of another tenant is "not
found", exactly like one that does not exist. Without one the operator sees every tenant. Bytes
(the stored .eml, an attachment) travel base64 in pieces of at most ``CHUNK`` bytes, so no answer
on the admin socket is unbounded; the CLI asks piece by piece and writes bytes.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from .. import validate
from ..admin.registry import admin_method
from ..errors import Conflict, InvalidArgument, NotFound
from ..inbound.attachments import AttachmentFiles
from ..store import Store
from ..suppression import normalise_address

CHUNK = 1 << 20
MAX_PAGE = 10000
KINDS = ("message", "reply", "dsn", "arf", "auto_reply", "unsubscribe")
STATES = ("spooled", "processed", "held")
INBOUND_ID = re.compile(r"^[0-9a-z]{1,40}$")


def _check_id(inbound_id: str) -> str:
    if not INBOUND_ID.match(inbound_id):
        raise InvalidArgument(f"not an inbound id: {inbound_id[:60]!r}")
    return inbound_id


def _check_text(value: str | None, what: str, max_len: int = 998) -> str | None:
    """A Message-ID, thread id or filename as operators type it: bounded, printable."""
    if value is None:
        return None
    bad = validate.unprintable(value)
    if bad is not None or len(value) > max_len or not value:
        raise InvalidArgument(f"{what} must be 1-{max_len} printable characters")
    return value


def _check_piece(offset: int, length: int) -> None:
    if offset < 0 or not 1 <= length <= CHUNK:
        raise InvalidArgument(f"offset >= 0 and length 1-{CHUNK}")


class InboxService:
    def __init__(self, store: Store, attachments: AttachmentFiles):
        self.store = store
        self.attachments = attachments

    async def _tenant_id(self, tenant: str | None) -> int | None:
        return None if tenant is None else (await self.store.tenants.get(tenant))["id"]

    @admin_method("inbox.list")
    async def list(self, tenant: str | None = None, thread: str | None = None, kind: str | None = None,
                   state: str | None = None, after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Received messages in arrival order (after the inbound id ``after``), without bodies."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit is 1-{MAX_PAGE}")
        if kind is not None and kind not in KINDS:
            raise InvalidArgument(f"kind is one of {', '.join(KINDS)}")
        if state is not None and state not in STATES:
            raise InvalidArgument(f"state is one of {', '.join(STATES)}")
        if after is not None:
            _check_id(after)
        return await self.store.inbox.list(tenant_id=await self._tenant_id(tenant), thread_id=_check_text(thread, "thread"),
                                           kind=kind, state=state, after=after, limit=limit)

    @admin_method("inbox.show")
    async def show(self, id: str, tenant: str | None = None) -> dict[str, Any]:
        """One message: envelope, classification, thread, summary (bodies, auth results), attachments."""
        return await self.store.inbox.show(_check_id(id), tenant_id=await self._tenant_id(tenant))

    @admin_method("inbox.export")
    async def export(self, id: str, tenant: str | None = None, offset: int = 0, length: int = CHUNK) -> dict[str, Any]:
        """A piece of the stored .eml: {"size", "offset", "data" (base64)}."""
        _check_piece(offset, length)
        size, data = await self.store.inbox.raw(_check_id(id), tenant_id=await self._tenant_id(tenant), offset=offset, length=length)
        return {"inbound_id": id, "size": size, "offset": offset, "data": base64.b64encode(data).decode("ascii")}

    @admin_method("inbox.attachment")
    async def attachment(self, id: str, name: str, tenant: str | None = None, offset: int = 0,
                         length: int = CHUNK) -> dict[str, Any]:
        """A piece of one attachment (named by filename or position): its metadata and "data" (base64)."""
        _check_piece(offset, length)
        found = await self.store.inbox.attachment(_check_id(id), _check_text(name, "attachment name", 255),
                                                  tenant_id=await self._tenant_id(tenant))
        try:
            with self.attachments.open(found["sha256"]) as f:
                f.seek(offset)
                data = f.read(length)
        except FileNotFoundError:
            raise NotFound(f"the file of attachment {name!r} of {id} is gone (retention)") from None
        return found | {"offset": offset, "data": base64.b64encode(data).decode("ascii")}

    @admin_method("inbox.release")
    async def release(self, id: str, tenant: str | None = None) -> dict[str, Any]:
        """A held message back to the processor (after what held it was fixed)."""
        result = await self.store.inbound.release(_check_id(id), tenant_id=await self._tenant_id(tenant))
        if not result["released"]:
            raise Conflict(f"inbound message {id} is {result['state']}, not held")
        return {"inbound_id": result["inbound_id"], "state": "spooled", "was": result["was"]}

    @admin_method("thread.show")
    async def thread(self, id: str, tenant: str | None = None) -> list[dict[str, Any]]:
        """The conversation, both directions, in time order (its newest 1,000 entries)."""
        return await self.store.inbox.thread(_check_text(id.strip().strip("<>"), "thread"), tenant_id=await self._tenant_id(tenant))

    # ------------------------------------------------------------------ forwarding rules

    @admin_method("forward.add")
    async def forward_add(self, tenant: str, to: str, usecase: str | None = None, address: str | None = None) -> dict[str, Any]:
        """Forward received mail of a use case, or of one channel address, to ``to`` over SMTP."""
        if (usecase is None) == (address is None):
            raise InvalidArgument("name exactly one of --usecase and --address")
        return await self.store.forwards.add(tenant, to_address=normalise_address(to), usecase=usecase,
                                             address=normalise_address(address) if address is not None else None)

    @admin_method("forward.list")
    async def forward_list(self, tenant: str | None = None, after_id: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """Rules by id; a tenant's page on from ``after_id`` (at most ``limit``, -1 all)."""
        return await self.store.forwards.list(tenant, after_id=after_id, limit=limit)

    @admin_method("forward.show")
    async def forward_show(self, tenant: str, id: int) -> dict[str, Any]:
        return await self.store.forwards.get(tenant, id)

    @admin_method("forward.delete")
    async def forward_delete(self, tenant: str, id: int) -> dict[str, Any]:
        return await self.store.forwards.delete(tenant, id)
