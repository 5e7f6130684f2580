"""Forwarding rules of received mail and the forwarder's outbox (migration 0022).

A rule sends the received mail of one use case, or of one channel address, to another mailbox.
``append_event`` (events.py) puts a row in ``inbound_forward_outbox`` with the ``received`` event
when its use case or address has a rule, so the processor's commit and the promise to forward
are one. The forwarder (gateway/inbound/forwarder.py) reads ``pending`` and ``plan``, builds the
message, and ``queued`` puts it in the outbound queue and takes the outbox row away in one write:
a crash between the two is impossible, so a message is forwarded once. ``skip`` takes away a row
with nothing to send (its kind is not forwarded, the rules went, the row is gone), with an event.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .queue import NewMessage, _put
from .tenants import get_by_name
from .webhooks import narrowing_ids

_RULE = ("SELECT f.id, f.tenant_id, t.name AS tenant, f.usecase_id, u.name AS usecase, f.address_id, a.address AS address,"
         " f.to_address, f.created_at FROM inbound_forwards f JOIN tenants t ON t.id = f.tenant_id"
         " LEFT JOIN usecases u ON u.id = f.usecase_id LEFT JOIN channel_addresses a ON a.id = f.address_id")


def _add(conn: sqlite3.Connection, tenant: str, usecase: str | None, address: str | None, to_address: str) -> dict[str, Any]:
    t = get_by_name(conn, tenant)
    usecase_id, address_id = narrowing_ids(conn, t["id"], usecase, address)
    try:
        rule_id = conn.execute(
            "INSERT INTO inbound_forwards (tenant_id, usecase_id, address_id, to_address, created_at) VALUES (?, ?, ?, ?, ?)",
            (t["id"], usecase_id, address_id, to_address, time.time())).lastrowid
    except sqlite3.IntegrityError:
        raise Conflict(f"{usecase or address} of tenant {tenant!r} already forwards to {to_address}") from None
    append_event(conn, t["id"], "forward_added", str(rule_id),
                 {"usecase": usecase, "address": address, "to": to_address})
    return dict(conn.execute(_RULE + " WHERE f.id = ?", (rule_id,)).fetchone())


def _list(conn: sqlite3.Connection, tenant: str | None, after_id: int = 0, limit: int = -1) -> list[dict[str, Any]]:
    if tenant is None:
        return [dict(r) for r in conn.execute(_RULE + " ORDER BY t.name, f.id")]
    t = get_by_name(conn, tenant)
    return [dict(r) for r in conn.execute(_RULE + " WHERE f.tenant_id = ? AND f.id > ? ORDER BY f.id LIMIT ?",
                                          (t["id"], after_id, limit))]


def _get(conn: sqlite3.Connection, tenant: str, rule_id: int) -> dict[str, Any]:
    t = get_by_name(conn, tenant)
    row = conn.execute(_RULE + " WHERE f.id = ? AND f.tenant_id = ?", (rule_id, t["id"])).fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant!r} has no forwarding rule {rule_id}")
    return dict(row)


def _delete(conn: sqlite3.Connection, tenant: str, rule_id: int) -> dict[str, Any]:
    row = _get(conn, tenant, rule_id)
    conn.execute("DELETE FROM inbound_forwards WHERE id = ?", (rule_id,))
    append_event(conn, row["tenant_id"], "forward_deleted", str(rule_id), {"to": row["to_address"]})
    return row


def _plan(conn: sqlite3.Connection, outbox_id: int) -> dict[str, Any] | None:
    """The outbox row with its inbound row (None when gone) and the distinct addresses to forward to."""
    box = conn.execute("SELECT id, tenant_id, inbound_id FROM inbound_forward_outbox WHERE id = ?", (outbox_id,)).fetchone()
    if box is None:
        return None
    plan: dict[str, Any] = dict(box) | {"message": None, "to": []}
    msg = conn.execute(
        "SELECT m.id, m.kind, m.state, m.usecase_id, m.address_id, a.address AS address, m.recipients, m.thread_id,"
        " m.header_message_id, m.from_address, m.size FROM inbound_messages m LEFT JOIN channel_addresses a ON a.id = m.address_id"
        " WHERE m.inbound_id = ? AND m.tenant_id = ?", (box["inbound_id"], box["tenant_id"])).fetchone()
    if msg is None:
        return plan
    plan["message"] = dict(msg) | {"recipients": json.loads(msg["recipients"])}
    plan["to"] = [r[0] for r in conn.execute(
        "SELECT DISTINCT to_address FROM inbound_forwards WHERE tenant_id = ? AND (usecase_id = ? OR address_id = ?)"
        " ORDER BY to_address", (box["tenant_id"], msg["usecase_id"], msg["address_id"]))]
    return plan


def _queued(conn: sqlite3.Connection, outbox_id: int, message: NewMessage, inbound_id: str) -> dict[str, Any] | None:
    if conn.execute("DELETE FROM inbound_forward_outbox WHERE id = ?", (outbox_id,)).rowcount == 0:
        return None   # another forwarder took it first: nothing queued twice
    result = _put(conn, message)
    append_event(conn, message.tenant_id, "forwarded", inbound_id,
                 {"queue_id": message.queue_id, "to": list(message.recipients), "held": bool(result["hold_reason"])})
    return result


def _skip(conn: sqlite3.Connection, outbox_id: int, tenant_id: int, inbound_id: str, reason: str) -> None:
    if conn.execute("DELETE FROM inbound_forward_outbox WHERE id = ?", (outbox_id,)).rowcount:
        append_event(conn, tenant_id, "forward_skipped", inbound_id, {"reason": reason})


class Forwards:
    def __init__(self, db: Database):
        self.db = db

    async def add(self, tenant: str, *, to_address: str, usecase: str | None = None, address: str | None = None) -> dict[str, Any]:
        """A rule: received mail of ``usecase`` (or of the channel ``address``) goes to ``to_address`` too."""
        if (usecase is None) == (address is None):
            raise ValueError("a forwarding rule names a use case or an address")
        return await self.db.write(_add, tenant, usecase, address, to_address)

    async def list(self, tenant: str | None = None, *, after_id: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """Rules (one tenant's: in id order after ``after_id``, at most ``limit``, -1 all)."""
        return await self.db.read(_list, tenant, after_id, limit)

    async def get(self, tenant: str, rule_id: int) -> dict[str, Any]:
        return await self.db.read(_get, tenant, rule_id)

    async def delete(self, tenant: str, rule_id: int) -> dict[str, Any]:
        return await self.db.write(_delete, tenant, rule_id)

    async def pending(self, *, after_id: int = 0, limit: int = 50) -> list[int]:
        """Outbox row ids in order."""
        def run(conn: sqlite3.Connection) -> list[int]:
            return [r[0] for r in conn.execute("SELECT id FROM inbound_forward_outbox WHERE id > ? ORDER BY id LIMIT ?",
                                               (after_id, limit))]
        return await self.db.read(run)

    async def plan(self, outbox_id: int) -> dict[str, Any] | None:
        return await self.db.read(_plan, outbox_id)

    async def queued(self, outbox_id: int, message: NewMessage, inbound_id: str) -> dict[str, Any] | None:
        """Put the forward in the outbound queue and take its outbox row, in one write; None (nothing
        written) when the row was already taken. Raises ``StorageFull`` below the reserve."""
        self.db.check_room()
        return await self.db.write(_queued, outbox_id, message, inbound_id)

    async def skip(self, outbox_id: int, tenant_id: int, inbound_id: str, reason: str) -> None:
        await self.db.write(_skip, outbox_id, tenant_id, inbound_id, reason)
