"""Received mail as operators and the tenant's application read it (migration 0015's spool rows,
``inbound_attachments``, and the outbound side of a thread through ``message_ids``).

Every read takes the tenant (an id, or None for the operator's view of all tenants): a row of
another tenant is NotFound, exactly like one that does not exist. The raw bytes are read only by
``raw``; listings and ``show`` never carry them. Nothing here writes (releasing a held row is
``store.inbound.release``, which also wakes the processor).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..errors import Conflict, NotFound
from . import keyset
from .db import Database
from .events import append_event

# What listings and show carry of a row (never raw).
_ROW = ("m.id, m.inbound_id, m.source, m.connector_id, m.tenant_id, t.name AS tenant, m.client, m.helo, m.mail_from,"
        " m.recipients, m.size, m.sha256, m.header_message_id, m.auth_results, m.received_at, m.state, m.hold_reason,"
        " m.processed_at, m.kind, m.usecase_id, u.name AS usecase, m.address_id, a.address AS address, m.thread_id,"
        " m.parent_message_id, m.flags, m.from_address, m.subject")
_JOINS = (" FROM inbound_messages m LEFT JOIN tenants t ON t.id = m.tenant_id LEFT JOIN usecases u ON u.id = m.usecase_id"
          " LEFT JOIN channel_addresses a ON a.id = m.address_id")
_ATTACHMENT = "position, filename, content_type, size, sha256, content_id, inline"
# Entries a thread answers with, its newest: anyone who knows one Message-ID of a thread can make
# it longer by replying, and the answer crosses the control socket whole.
MAX_THREAD = 1000


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["recipients"] = json.loads(d["recipients"])
    d["flags"] = json.loads(d["flags"])
    if "summary" in d:
        d["summary"] = json.loads(d["summary"])
    return d


def _attachments(conn: sqlite3.Connection, row_id: int) -> list[dict[str, Any]]:
    return [dict(r) | {"inline": bool(r["inline"])} for r in conn.execute(
        f"SELECT {_ATTACHMENT} FROM inbound_attachments WHERE message_id = ? ORDER BY position", (row_id,))]


def _one(conn: sqlite3.Connection, inbound_id: str, tenant_id: int | None, *, summary: bool) -> dict[str, Any]:
    sql = f"SELECT {_ROW}{', m.summary' if summary else ''}{_JOINS} WHERE m.inbound_id = ?"
    args: list[Any] = [inbound_id]
    if tenant_id is not None:
        sql += " AND m.tenant_id = ?"
        args.append(tenant_id)
    row = conn.execute(sql, args).fetchone()
    if row is None:
        raise NotFound(f"no inbound message {inbound_id}" + (" in this tenant" if tenant_id is not None else ""))
    return _decode(row)


def _list(conn: sqlite3.Connection, tenant_id: int | None, thread_id: str | None, kind: str | None, state: str | None,
          after: str | None, limit: int, upto: int | None = None) -> list[dict[str, Any]]:
    where, args = ["1"], []
    if upto is not None:
        where.append("m.id <= ?")
        args.append(upto)
    for column, value in (("m.tenant_id", tenant_id), ("m.thread_id", thread_id), ("m.kind", kind), ("m.state", state)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if after is not None:
        # A page starts after the row of the last inbound id of the one before (the next one's when
        # that row is gone meanwhile).
        where.append(f"m.id > ({AFTER_SQL})")
        args += [after, after]
    rows = conn.execute(list_sql(where), (*args, limit))
    return [_decode(r) for r in rows]


def _page(conn: sqlite3.Connection, tenant_id: int, thread_id: str | None, kind: str | None, after: str | None,
          limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """A tenant's page, and the inbound id the next one starts after (None: no more). A ``kind``
    (no index holds it) looks at keyset.SCAN of the tenant's rows at most; a thread is its index's range."""
    edge = None
    if kind is not None and thread_id is None:
        where, args = ["tenant_id = ?"], [tenant_id]
        if after is not None:
            where.append(f"id > ({AFTER_SQL})")
            args += [after, after]
        edge = keyset.edge(conn, f"FROM inbound_messages INDEXED BY inbound_tenant WHERE {' AND '.join(where)}", args,
                           "id", newest=False)
    rows = _list(conn, tenant_id, thread_id, kind, None, after, limit + 1, upto=edge)
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1]["inbound_id"]
    if edge is None:
        return rows, None
    return rows, conn.execute("SELECT inbound_id FROM inbound_messages WHERE id = ?", (edge,)).fetchone()[0]


# Pages walk rows in arrival order (the row id) along inbound_tenant: ORDER BY inbound_id, which no
# index of the tenant's has, sorted every row of the tenant for each page (EXPLAIN: a temp B-tree
# over inbound_dedup's whole range).
AFTER_SQL = ("COALESCE((SELECT id FROM inbound_messages WHERE inbound_id = ?),"
             " (SELECT id FROM inbound_messages WHERE inbound_id > ? ORDER BY inbound_id LIMIT 1) - 1, 1 << 62)")


def list_sql(where: list[str]) -> str:
    return (f"SELECT {_ROW}, (SELECT COUNT(*) FROM inbound_attachments x WHERE x.message_id = m.id) AS attachments"
            f"{_JOINS} WHERE {' AND '.join(where)} ORDER BY m.id LIMIT ?")


def _show(conn: sqlite3.Connection, inbound_id: str, tenant_id: int | None) -> dict[str, Any]:
    d = _one(conn, inbound_id, tenant_id, summary=True)
    d["attachments"] = _attachments(conn, d["id"])
    return d


def _raw(conn: sqlite3.Connection, inbound_id: str, tenant_id: int | None, offset: int, length: int) -> tuple[int, bytes]:
    d = _one(conn, inbound_id, tenant_id, summary=False)
    # Through a blob handle: only the piece asked for is read, never the whole message.
    with conn.blobopen("inbound_messages", "raw", d["id"], readonly=True) as blob:
        total = len(blob)
        if offset >= total:
            return total, b""
        blob.seek(offset)
        return total, blob.read(min(length, total - offset))


def _attachment(conn: sqlite3.Connection, inbound_id: str, tenant_id: int | None, name: str) -> dict[str, Any]:
    """The attachment named ``name`` (its filename, else its position in the walk)."""
    d = _one(conn, inbound_id, tenant_id, summary=False)
    found = [a for a in _attachments(conn, d["id"]) if a["filename"] == name]
    if not found and name.isdigit():
        found = [a for a in _attachments(conn, d["id"]) if a["position"] == int(name)]
    if not found:
        raise NotFound(f"inbound message {inbound_id} has no attachment {name!r}")
    if len(found) > 1:
        raise Conflict(f"inbound message {inbound_id} has {len(found)} attachments named {name!r}: name one by position"
                       f" ({', '.join(str(a['position']) for a in found)})")
    return found[0] | {"inbound_id": d["inbound_id"], "tenant_id": d["tenant_id"]}


def _download(conn: sqlite3.Connection, tenant_id: int, row_id: int, position: int) -> dict[str, Any] | None:
    """The attachment an attachment URL names (tenant, row, position), None when gone or not the tenant's."""
    row = conn.execute(
        f"SELECT a.{_ATTACHMENT.replace(', ', ', a.')} FROM inbound_attachments a JOIN inbound_messages m ON m.id = a.message_id"
        " WHERE m.id = ? AND m.tenant_id = ? AND a.position = ?", (row_id, tenant_id, position)).fetchone()
    return None if row is None else dict(row) | {"inline": bool(row["inline"])}


# A thread's newest entries in each direction walk its index backwards (rowid/id: arrival order)
# and stop at MAX_THREAD; ORDER BY created_at / received_at, which the index does not hold, sorted
# every row of the thread first (EXPLAIN: a temp B-tree), however long the thread.
THREAD_OUT_SQL = (
    "SELECT i.message_id, i.tenant_id, t.name AS tenant, i.queue_id, i.created_at, i.parent, m.id AS row_id, m.mail_from,"
    " u.name AS usecase FROM message_ids i JOIN tenants t ON t.id = i.tenant_id"
    " LEFT JOIN messages m ON m.queue_id = i.queue_id AND m.tenant_id = i.tenant_id LEFT JOIN usecases u ON u.id = i.usecase_id"
    " WHERE i.direction = 'out' AND i.thread_id = ?{scope} ORDER BY i.rowid DESC LIMIT ?")
THREAD_IN_SQL = f"SELECT {_ROW}{_JOINS} WHERE m.thread_id = ? AND m.state = 'processed'{{scope}} ORDER BY m.id DESC LIMIT ?"


def _thread(conn: sqlite3.Connection, thread_id: str, tenant_id: int | None) -> list[dict[str, Any]]:
    """Both directions of a thread in time order, its newest ``MAX_THREAD`` entries: outbound
    messages through their Message-ID records, inbound rows by their thread."""
    args: list[Any] = [thread_id]
    scope = ""
    if tenant_id is not None:
        scope = " AND {}.tenant_id = ?"
        args.append(tenant_id)
    out: list[dict[str, Any]] = []
    sent = [dict(r) for r in conn.execute(THREAD_OUT_SQL.format(scope=scope.format("i")), (*args, MAX_THREAD))]
    # Every listed message's recipients in one read (not one a message).
    rcpts: dict[int, list[dict[str, Any]]] = {}
    row_ids = [d["row_id"] for d in sent if d["row_id"] is not None]
    if row_ids:
        for x in conn.execute(f"SELECT message_id, rcpt, state FROM recipients WHERE message_id IN ({', '.join('?' * len(row_ids))})"
                              " ORDER BY id", row_ids):
            rcpts.setdefault(x[0], []).append({"rcpt": x[1], "state": x[2]})
    for d in sent:
        row_id = d.pop("row_id")
        d["recipients"] = [] if row_id is None else rcpts.get(row_id, [])
        out.append({"direction": "out", "at": d.pop("created_at"), "id": d["queue_id"], "from": d.pop("mail_from") or "",
                    "kind": "sent", "subject": "", "swept": row_id is None, **d})
    for r in conn.execute(THREAD_IN_SQL.format(scope=scope.format("m")), (*args, MAX_THREAD)):
        d = _decode(r)
        out.append({"direction": "in", "at": d["received_at"], "id": d["inbound_id"], "message_id": d["header_message_id"],
                    "tenant_id": d["tenant_id"], "tenant": d["tenant"], "usecase": d["usecase"], "from": d["from_address"],
                    "kind": d["kind"], "subject": d["subject"], "parent": d["parent_message_id"], "flags": d["flags"],
                    "recipients": [{"rcpt": x, "state": "received"} for x in d["recipients"]]})
    if not out:
        raise NotFound(f"no thread {thread_id}" + (" in this tenant" if tenant_id is not None else ""))
    out.sort(key=lambda e: (e["at"], e["direction"] == "in"))
    return out[-MAX_THREAD:]


class Inbox:
    def __init__(self, db: Database):
        self.db = db

    async def list(self, *, tenant_id: int | None = None, thread_id: str | None = None, kind: str | None = None,
                   state: str | None = None, after: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rows in arrival order after the inbound id ``after``, without bodies; ``attachments`` is a count."""
        return await self.db.read(_list, tenant_id, thread_id, kind, state, after, limit)

    async def page(self, tenant_id: int, *, thread_id: str | None = None, kind: str | None = None, after: str | None = None,
                   limit: int = 100) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the tenant's received mail in arrival order after the inbound id ``after``, and
        the id the next page starts after (None: no more). With ``kind`` a page looks at keyset.SCAN
        rows at most, so it may be short and still have a next page."""
        return await self.db.read(_page, tenant_id, thread_id, kind, after, limit)

    async def show(self, inbound_id: str, *, tenant_id: int | None = None) -> dict[str, Any]:
        """One row with its summary and its attachments' metadata (not its raw bytes)."""
        return await self.db.read(_show, inbound_id, tenant_id)

    async def raw(self, inbound_id: str, *, tenant_id: int | None = None, offset: int = 0,
                  length: int = 1 << 20) -> tuple[int, bytes]:
        """(size, ``length`` bytes from ``offset``) of the stored .eml (with our
        Authentication-Results once processed): read in pieces, so no answer is unbounded."""
        return await self.db.read(_raw, inbound_id, tenant_id, offset, length)

    async def attachment(self, inbound_id: str, name: str, *, tenant_id: int | None = None) -> dict[str, Any]:
        return await self.db.read(_attachment, inbound_id, tenant_id, name)

    async def download(self, tenant_id: int, row_id: int, position: int) -> dict[str, Any] | None:
        return await self.db.read(_download, tenant_id, row_id, position)

    async def thread(self, thread_id: str, *, tenant_id: int | None = None) -> list[dict[str, Any]]:
        return await self.db.read(_thread, thread_id, tenant_id)

    async def delivery_view(self, tenant_id: int, inbound_id: str) -> dict[str, Any] | None:
        """What a received-mail webhook is built from: the row with its summary and attachments,
        None when it is gone (retention) or not the tenant's."""
        def run(conn: sqlite3.Connection) -> dict[str, Any] | None:
            try:
                return _show(conn, inbound_id, tenant_id)
            except NotFound:
                return None
        return await self.db.read(run)


__all__ = ["Inbox"]
