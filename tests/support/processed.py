"""Processed inbound rows for downstream tests, written the way the processor does: spool, the
attachment files through AttachmentFiles (<state>/attachments/ab/cd/<sha256>), then finish.

    ids = await processed_message(store, state_dir, tenant_id=1, usecase_id=2, address_id=3,
                                  attachments=[Part("a.pdf", "application/pdf", b"%PDF...")])
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.inbound.attachments import AttachmentFiles
from gateway.store import inbound as inbound_store
from gateway.store.inbound import Attachment, Processed, Spooled
from gateway.store.queue import QueueIds

_ids = QueueIds()


@dataclass
class Part:
    filename: str
    content_type: str
    data: bytes
    inline: bool = False
    content_id: str = ""


def put_file(root: Path, data: bytes) -> str:
    return AttachmentFiles(root).put(data)


async def add_channel_address(store, tenant_id: int, usecase_id: int, address: str) -> int:
    """A channel address row (the addresses helper's CLI makes these in the product)."""
    def run(conn):
        domain_id = conn.execute("SELECT domain_id FROM usecases WHERE id = ?", (usecase_id,)).fetchone()[0]
        now = time.time()
        return conn.execute("INSERT INTO channel_addresses (tenant_id, domain_id, usecase_id, address, created_at, updated_at)"
                            " VALUES (?, ?, ?, ?, ?, ?)", (tenant_id, domain_id, usecase_id, address, now, now)).lastrowid
    return await store.db.write(run)


def raw_message(*, sender: str = "customer@example.org", to: str = "support@acme.test", subject: str = "Help please",
                message_id: str | None = None, body: str = "Hello, my order is late.\r\n") -> tuple[bytes, str]:
    message_id = message_id or f"{_ids.new()}@example.org"
    raw = (f"Authentication-Results: gw.test; spf=pass smtp.mailfrom=example.org\r\nFrom: Customer <{sender}>\r\n"
           f"To: {to}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()
    return raw, message_id


async def processed_message(store, state_dir: Path, *, tenant_id: int, usecase_id: int | None, address_id: int | None = None,
                            recipients: tuple[str, ...] = ("support@acme.test",), kind: str = "message",
                            attachments: list[Part] = (), summary: dict[str, Any] | None = None, raw: bytes | None = None,
                            message_id: str | None = None, thread_id: str = "", parent: str = "",
                            subject: str = "Help please", sender: str = "customer@example.org") -> dict[str, Any]:
    if raw is None:
        raw, message_id = raw_message(sender=sender, to=recipients[0], subject=subject, message_id=message_id)
    inbound_id = _ids.new()
    spooled = Spooled(inbound_id=inbound_id, source="mx", raw=raw, tenant_id=tenant_id, recipients=recipients,
                      mail_from=sender, client="192.0.2.7", helo="mail.example.org", header_message_id=message_id or "")
    stored = [Attachment(position=i, filename=p.filename, content_type=p.content_type, size=len(p.data),
                         sha256=put_file(state_dir / "attachments", p.data), content_id=p.content_id, inline=p.inline)
              for i, p in enumerate(attachments)]
    base = {"text": "Hello, my order is late.\n", "html": "<p>Hello, my order is late.</p>", "stripped_text": "Hello, my order is late.",
            "to": [recipients[0]], "cc": [], "reply_to": [], "date": "Tue, 1 Dec 2026 10:00:00 +0000", "in_reply_to": parent,
            "references": [parent] if parent else [],
            "auth": {"spf": "pass", "dkim": "none", "dmarc": "none", "header": "gw.test; spf=pass smtp.mailfrom=example.org"},
            "report": None, "defects": [], "forwarded_by": ""}
    processed = Processed(
        kind=kind, usecase_id=usecase_id, address_id=address_id, thread_id=thread_id or (message_id or ""),
        parent_message_id=parent, from_address=sender, subject=subject, summary=base | (summary or {}), attachments=stored)

    def spool_and_finish(conn):
        # One transaction: a running daemon's processor must never see the row as 'spooled' (it
        # would route it itself, find no channel address and hold it before this finish).
        [row] = inbound_store._spool(conn, [spooled])
        assert inbound_store._finish(conn, row, processed)
        return row
    row_id = await store.db.write(spool_and_finish)
    store.inbound.notify_finished()
    return {"inbound_id": inbound_id, "row_id": row_id, "message_id": message_id, "raw": raw}
