"""Webhook endpoints, their outbox and their delivery log (migration 0014).

The outbox is written by ``append_event`` (events.py); this module reads an endpoint's head in id
order, removes what was delivered, and keeps the endpoint's failure state (consecutive failures,
since when, when the head may be tried again). The decisions (backoff, when to disable) are the
sender's (gateway/webhooks/sender.py); each is one short write here.

The secret is returned only by ``endpoint_for_sending``: listings and ``get`` never carry it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from ..errors import Conflict, NotFound
from .db import Database
from .events import append_event
from .tenants import get_by_name

PUBLIC = ("id", "tenant_id", "name", "url", "events", "enabled", "disabled_reason", "failures", "failing_since",
          "next_attempt_at", "last_status", "last_error", "last_success_at", "created_at", "updated_at", "usecase_id",
          "address_id")
_COLUMNS = ", ".join(f"w.{c}" for c in PUBLIC) + ", u.name AS usecase, a.address AS address"
# The narrowing of an endpoint (migration 0022), by name.
_NARROWING = (" LEFT JOIN usecases u ON u.id = w.usecase_id LEFT JOIN channel_addresses a ON a.id = w.address_id")


def encode_kinds(kinds: list[str] | None) -> str:
    return "*" if not kinds else "," + ",".join(kinds) + ","


def _public(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["enabled"] = bool(d["enabled"])
    d["events"] = ["*"] if d["events"] == "*" else [k for k in d["events"].split(",") if k]
    return d


def _get(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    t = get_by_name(conn, tenant)
    row = conn.execute(f"SELECT {_COLUMNS}, t.name AS tenant FROM webhook_endpoints w JOIN tenants t ON t.id = w.tenant_id"
                       f"{_NARROWING} WHERE w.tenant_id = ? AND w.name = ?", (t["id"], name)).fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant!r} has no webhook named {name!r}")
    return _public(row)


def narrowing_ids(conn: sqlite3.Connection, tenant_id: int, usecase: str | None, address: str | None) -> tuple[int | None, int | None]:
    """(use case id, channel address id) of the tenant's named use case and address (None for None);
    NotFound when the tenant has no such use case or address."""
    usecase_id = address_id = None
    if usecase is not None:
        row = conn.execute("SELECT id FROM usecases WHERE tenant_id = ? AND name = ?", (tenant_id, usecase)).fetchone()
        if row is None:
            raise NotFound(f"no use case {usecase!r} in this tenant")
        usecase_id = row[0]
    if address is not None:
        row = conn.execute("SELECT id FROM channel_addresses WHERE tenant_id = ? AND address = ?", (tenant_id, address)).fetchone()
        if row is None:
            raise NotFound(f"no channel address {address!r} in this tenant")
        address_id = row[0]
    return usecase_id, address_id


def _add(conn: sqlite3.Connection, tenant: str, name: str, url: str, secret: str, kinds: list[str] | None,
         usecase: str | None = None, address: str | None = None) -> dict[str, Any]:
    t = get_by_name(conn, tenant)
    usecase_id, address_id = narrowing_ids(conn, t["id"], usecase, address)
    now = time.time()
    try:
        conn.execute(
            "INSERT INTO webhook_endpoints (tenant_id, name, url, secret, events, usecase_id, address_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t["id"], name, url, secret, encode_kinds(kinds), usecase_id, address_id, now, now))
    except sqlite3.IntegrityError:
        raise Conflict(f"tenant {tenant!r} already has a webhook named {name!r}") from None
    detail: dict[str, Any] = {"url": url, "events": kinds or ["*"]}
    if usecase is not None:
        detail["usecase"] = usecase
    if address is not None:
        detail["address"] = address
    append_event(conn, t["id"], "webhook_added", name, detail)
    return _get(conn, tenant, name)


def _set_enabled(conn: sqlite3.Connection, tenant: str, name: str, enabled: bool, reason: str) -> dict[str, Any]:
    current = _get(conn, tenant, name)
    if current["enabled"] == enabled:
        return current
    # Enabling starts afresh: the failure period counts from the next failure, the head is due now.
    conn.execute("UPDATE webhook_endpoints SET enabled = ?, disabled_reason = ?, failures = 0, failing_since = NULL,"
                 " next_attempt_at = 0, updated_at = ? WHERE id = ?",
                 (int(enabled), "" if enabled else reason, time.time(), current["id"]))
    append_event(conn, current["tenant_id"], "webhook_enabled" if enabled else "webhook_disabled", name,
                 {"reason": reason} if not enabled else {})
    return _get(conn, tenant, name)


def _delete(conn: sqlite3.Connection, tenant: str, name: str) -> dict[str, Any]:
    current = _get(conn, tenant, name)
    pending = conn.execute("SELECT COUNT(*) FROM webhook_outbox WHERE endpoint_id = ?", (current["id"],)).fetchone()[0]
    conn.execute("DELETE FROM webhook_outbox WHERE endpoint_id = ?", (current["id"],))
    conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ?", (current["id"],))
    conn.execute("DELETE FROM webhook_endpoints WHERE id = ?", (current["id"],))
    append_event(conn, current["tenant_id"], "webhook_deleted", name, {"undelivered": pending})
    return {"deleted": name, "undelivered": pending}


def _list(conn: sqlite3.Connection, tenant: str | None, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
    sql = f"SELECT {_COLUMNS}, t.name AS tenant FROM webhook_endpoints w JOIN tenants t ON t.id = w.tenant_id{_NARROWING}"
    args: tuple = ()
    if tenant is not None:
        # One tenant's page: a range of the (tenant_id, name) unique index.
        sql += " WHERE w.tenant_id = ? AND w.name > ?"
        args = (get_by_name(conn, tenant)["id"], after)
    rows = [_public(r) for r in conn.execute(sql + " ORDER BY t.name, w.name LIMIT ?", (*args, limit))]
    for r in rows:
        r["backlog"] = _backlog(conn, r["id"])
    return rows


def _update(conn: sqlite3.Connection, tenant: str, name: str, url: str | None, kinds: list[str] | None | bool,
            usecase: str | None, address: str | None, unset: list[str], enabled: bool | None) -> dict[str, Any]:
    """Change what is given (``kinds`` False: leave the events as they are; None: every event)."""
    current = _get(conn, tenant, name)
    usecase_id, address_id = narrowing_ids(conn, current["tenant_id"], usecase, address)
    changed: dict[str, Any] = {}
    if url is not None and url != current["url"]:
        changed["url"] = url
    if kinds is not False:
        changed["events"] = encode_kinds(kinds)   # type: ignore[arg-type]
    if usecase is not None or "usecase" in unset:
        changed["usecase_id"] = usecase_id
    if address is not None or "address" in unset:
        changed["address_id"] = address_id
    if changed:
        sets = ", ".join(f"{column} = ?" for column in changed)
        conn.execute(f"UPDATE webhook_endpoints SET {sets}, updated_at = ? WHERE id = ?", (*changed.values(), time.time(), current["id"]))
        shown = {"url": url, "events": kinds or ["*"], "usecase_id": usecase, "address_id": address}
        append_event(conn, current["tenant_id"], "webhook_updated", name,
                     {column.removesuffix("_id"): shown[column] for column in changed})
    if enabled is not None:
        _set_enabled(conn, tenant, name, enabled, "operator")
    return _get(conn, tenant, name)


def _backlog(conn: sqlite3.Connection, endpoint_id: int) -> int:
    return conn.execute("SELECT COUNT(*) FROM webhook_outbox WHERE endpoint_id = ?", (endpoint_id,)).fetchone()[0]


def _deliveries(conn: sqlite3.Connection, endpoint_id: int, limit: int, before_id: int | None = None) -> list[dict[str, Any]]:
    """Attempts newest first (those older than ``before_id`` when given): a range of webhook_deliveries_endpoint."""
    rows = conn.execute("SELECT id, at, first_event, last_event, events, status, latency, ok, error FROM webhook_deliveries"
                        " WHERE endpoint_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
                        (endpoint_id, (1 << 63) - 1 if before_id is None else before_id, limit)).fetchall()
    return [dict(r) | {"ok": bool(r["ok"])} for r in rows]


def _head(conn: sqlite3.Connection, endpoint_id: int, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` outbox rows of the endpoint in id order, each with its event (kind None
    when the events sweep removed it first). ``data_json`` is the event's data as stored (the JSON
    text append_event wrote), not parsed: the sender puts it into the POST as it is."""
    rows = conn.execute(
        "SELECT o.id AS outbox_id, o.event_id, e.created_at, e.kind, e.subject, e.data AS data_json, e.tenant_id, t.name AS tenant"
        " FROM webhook_outbox o INDEXED BY webhook_outbox_lane LEFT JOIN events e ON e.id = o.event_id"
        " LEFT JOIN tenants t ON t.id = e.tenant_id WHERE o.endpoint_id = ? ORDER BY o.id LIMIT ?",
        (endpoint_id, limit)).fetchall()
    return [dict(r) for r in rows]


def _log(conn: sqlite3.Connection, endpoint_id: int, attempt: dict[str, Any], keep: int) -> None:
    cur = conn.execute(
        "INSERT INTO webhook_deliveries (endpoint_id, at, first_event, last_event, events, status, latency, ok, error)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (endpoint_id, attempt["at"], attempt["first_event"], attempt["last_event"], attempt["events"], attempt["status"],
         attempt["latency"], int(attempt["ok"]), attempt["error"][:500]))
    # The log keeps the endpoint's last ``keep`` attempts: the row ``keep`` back marks the cut.
    cut = conn.execute("SELECT id FROM webhook_deliveries WHERE endpoint_id = ? AND id <= ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                       (endpoint_id, cur.lastrowid, keep)).fetchone()
    if cut is not None:
        conn.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = ? AND id <= ?", (endpoint_id, cut[0]))


def _delivered(conn: sqlite3.Connection, endpoint_id: int, last_outbox_id: int, attempt: dict[str, Any], keep: int) -> None:
    conn.execute("DELETE FROM webhook_outbox WHERE endpoint_id = ? AND id <= ?", (endpoint_id, last_outbox_id))
    conn.execute("UPDATE webhook_endpoints SET failures = 0, failing_since = NULL, next_attempt_at = 0, last_status = ?,"
                 " last_error = '', last_success_at = ? WHERE id = ?", (attempt["status"], attempt["at"], endpoint_id))
    _log(conn, endpoint_id, attempt, keep)


def _failed(conn: sqlite3.Connection, endpoint_id: int, attempt: dict[str, Any], next_attempt_at: float, keep: int) -> dict[str, Any]:
    conn.execute("UPDATE webhook_endpoints SET failures = failures + 1, failing_since = COALESCE(failing_since, ?),"
                 " next_attempt_at = ?, last_status = ?, last_error = ? WHERE id = ?",
                 (attempt["at"], next_attempt_at, attempt["status"], attempt["error"][:500], endpoint_id))
    _log(conn, endpoint_id, attempt, keep)
    row = conn.execute("SELECT failures, failing_since FROM webhook_endpoints WHERE id = ?", (endpoint_id,)).fetchone()
    return dict(row)


def _disable(conn: sqlite3.Connection, endpoint_id: int, reason: str, data: dict[str, Any]) -> bool:
    row = conn.execute("SELECT tenant_id, name FROM webhook_endpoints WHERE id = ? AND enabled = 1", (endpoint_id,)).fetchone()
    if row is None:
        return False
    conn.execute("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE id = ?",
                 (reason, time.time(), endpoint_id))
    append_event(conn, row["tenant_id"], "webhook_disabled", row["name"], {"reason": reason, **data})
    return True


def _lease(conn: sqlite3.Connection, endpoint_id: int, owner: str, now: float, until: float) -> bool:
    return conn.execute("UPDATE webhook_endpoints SET lease_owner = ?, lease_until = ? WHERE id = ? AND enabled = 1"
                        " AND (lease_owner IS NULL OR lease_owner = ? OR lease_until < ?)",
                        (owner, until, endpoint_id, owner, now)).rowcount == 1


def _drop_lost(conn: sqlite3.Connection, endpoint_id: int, outbox_ids: list[int]) -> None:
    conn.executemany("DELETE FROM webhook_outbox WHERE endpoint_id = ? AND id = ?", [(endpoint_id, i) for i in outbox_ids])


class Webhooks:
    def __init__(self, db: Database):
        self.db = db

    # ------------------------------------------------------------------ operators

    async def add(self, tenant: str, name: str, url: str, secret: str, kinds: list[str] | None, *,
                  usecase: str | None = None, address: str | None = None) -> dict[str, Any]:
        """Add an endpoint (``kinds`` None or empty: every event), narrowed to the events of one use
        case and/or one channel address when named. The secret is not in the result."""
        return await self.db.write(_add, tenant, name, url, secret, kinds, usecase, address)

    async def get(self, tenant: str, name: str) -> dict[str, Any]:
        return await self.db.read(_get, tenant, name)

    async def list(self, tenant: str | None = None, *, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
        """Endpoints by name, each with its backlog (one tenant's: after ``after``, at most ``limit``, -1 all)."""
        return await self.db.read(_list, tenant, after, limit)

    async def update(self, tenant: str, name: str, *, url: str | None = None, kinds: list[str] | None | bool = False,
                     usecase: str | None = None, address: str | None = None, unset: list[str] | None = None,
                     enabled: bool | None = None) -> dict[str, Any]:
        """Change an endpoint's URL, events (False: unchanged), narrowing (``unset`` usecase/address
        removes one) and enabled state in one write, with a ``webhook_updated`` event."""
        return await self.db.write(_update, tenant, name, url, kinds, usecase, address, unset or [], enabled)

    async def log(self, tenant: str, name: str, *, before_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The endpoint's delivery attempts, newest first, older than ``before_id`` when given."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return _deliveries(conn, _get(conn, tenant, name)["id"], limit, before_id)
        return await self.db.read(run)

    async def show(self, tenant: str, name: str, log_limit: int = 20) -> dict[str, Any]:
        """The endpoint with its backlog and latest attempts, all from one snapshot (one read)."""
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            endpoint = _get(conn, tenant, name)
            endpoint["backlog"] = _backlog(conn, endpoint["id"])
            endpoint["deliveries"] = _deliveries(conn, endpoint["id"], log_limit)
            return endpoint
        return await self.db.read(run)

    async def deliveries(self, endpoint_id: int, limit: int = 20) -> list[dict[str, Any]]:
        """The endpoint's latest attempts, newest first."""
        return await self.db.read(_deliveries, endpoint_id, limit)

    async def backlog(self, endpoint_id: int) -> int:
        return await self.db.read(_backlog, endpoint_id)

    async def set_enabled(self, tenant: str, name: str, enabled: bool, reason: str = "operator") -> dict[str, Any]:
        return await self.db.write(_set_enabled, tenant, name, enabled, reason)

    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        """Delete the endpoint with its outbox and log; {"deleted", "undelivered": outbox rows dropped}."""
        return await self.db.write(_delete, tenant, name)

    # ------------------------------------------------------------------ the sender

    async def live(self) -> list[dict[str, Any]]:
        """Every enabled endpoint with its secret (the sender's view)."""
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return [dict(r) for r in conn.execute(
                "SELECT id, tenant_id, name, url, secret, failures, failing_since, next_attempt_at FROM webhook_endpoints"
                " WHERE enabled = 1 ORDER BY id")]
        return await self.db.read(read)

    async def waiting(self) -> set[int]:
        """Enabled endpoints with at least one outbox row: one probe of the lane index per endpoint,
        in one read, so idle lanes cost nothing of their own."""
        def read(conn: sqlite3.Connection) -> set[int]:
            return {r[0] for r in conn.execute(
                "SELECT e.id FROM webhook_endpoints e WHERE e.enabled = 1"
                " AND EXISTS (SELECT 1 FROM webhook_outbox o WHERE o.endpoint_id = e.id)")}
        return await self.db.read(read)

    async def secret_of(self, tenant: str, name: str) -> tuple[dict[str, Any], str]:
        """(the endpoint, its secret): for ``webhook test`` only."""
        def read(conn: sqlite3.Connection) -> tuple[dict[str, Any], str]:
            ep = _get(conn, tenant, name)
            return ep, conn.execute("SELECT secret FROM webhook_endpoints WHERE id = ?", (ep["id"],)).fetchone()[0]
        return await self.db.read(read)

    async def head(self, endpoint_id: int, limit: int) -> list[dict[str, Any]]:
        return await self.db.read(_head, endpoint_id, limit)

    async def delivered(self, endpoint_id: int, last_outbox_id: int, attempt: dict[str, Any], *, keep: int) -> None:
        """The endpoint took every outbox row up to ``last_outbox_id``: they go, the failure state resets."""
        await self.db.write(_delivered, endpoint_id, last_outbox_id, attempt, keep)

    async def failed(self, endpoint_id: int, attempt: dict[str, Any], next_attempt_at: float, *, keep: int) -> dict[str, Any]:
        """One failed POST of the head; returns {"failures", "failing_since"} after it."""
        return await self.db.write(_failed, endpoint_id, attempt, next_attempt_at, keep)

    async def disable(self, endpoint_id: int, reason: str, data: dict[str, Any] | None = None) -> bool:
        """Disable an enabled endpoint with a ``webhook_disabled`` event; False when it was not enabled."""
        return await self.db.write(_disable, endpoint_id, reason, data or {})

    async def lease(self, endpoint_id: int, owner: str, *, now: float, until: float) -> bool:
        """Take or renew the right to send for the endpoint until ``until``; False while another
        node holds it. One sender per endpoint keeps its events in order across gateway nodes."""
        return await self.db.write(_lease, endpoint_id, owner, now, until)

    async def drop_lost(self, endpoint_id: int, outbox_ids: list[int]) -> None:
        """Outbox rows whose event the events sweep removed first: nothing left to send."""
        await self.db.write(_drop_lost, endpoint_id, outbox_ids)
