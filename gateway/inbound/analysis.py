"""What one received message is, worked out in a worker thread (gateway/inbound/processor.py runs it).

    analyse(raw, row, route, verdict) -> Work: the stored copy with our Authentication-Results (in
    pieces), the auth summary, the classification, the parsed MIME (bodies, addresses, ids), the
    stripped reply, who sent it (a forward's original sender) and the attachment files, written
    content-addressed and pinned until the row that references them is committed (pins.py).

CPU and file work only: no store, no event loop. Everything but the files is pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..store.inbound import Attachment
from . import authres
from . import classify as classifier
from . import origin
from .pins import Pins

CONVERSATION = ("message", "reply", "auto_reply")


@dataclass(frozen=True, kw_only=True)
class Route:
    """Whose message a spooled row is, as far as its recipients say."""
    kind: str                         # recipients.KINDS, or 'mailbox' (polled, the connector's use case)
    address: str = ""
    tenant_id: int | None = None
    usecase_id: int | None = None
    address_id: int | None = None


@dataclass
class Work:
    """What the worker thread made of one message."""
    raw: list[bytes | memoryview] | None   # the stored copy in pieces when it changed (our header, then the rest as received)
    auth: dict[str, Any]
    classification: classifier.Classification
    parsed: Any
    stripped: str
    attachments: list[Attachment] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    forwarded_by: str = ""
    sender: str = ""
    # The thread lookup made in the same worker thread (processor._work): the ids asked, what came back.
    lookup: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] | None = None


def analyse(raw: bytes, row: dict[str, Any], route: Route, verdict: Any, *, parse: Callable[..., Any], limits: Any,
        stripped_reply: Callable[[str, str], str] | None, files: Any, pins: Pins) -> Work:
    """The CPU part of one message (a worker thread runs it): header, classification, MIME, files.
    The attachment files it wrote stay pinned (``Work.shas``): the caller unpins them after the finish."""
    work = examine(raw, row, route, verdict, parse=parse, limits=limits, stripped_reply=stripped_reply)
    put_files(work, files, pins)
    return work


def examine(raw: bytes, row: dict[str, Any], route: Route, verdict: Any, *, parse: Callable[..., Any], limits: Any,
            stripped_reply: Callable[[str, str], str] | None) -> Work:
    """All of ``analyse`` but the files: pure, so a pool process can run it (pool.py)."""
    stored: list[bytes | memoryview] | None = None
    if verdict is not None:
        stored, auth = _with_header(raw, verdict), verdict.summary()
    elif row["auth_results"]:
        # The MX evaluated at DATA (a tenant with dmarc_reject) and kept the value: not twice.
        stored, auth = _with_header(raw, row["auth_results"]), authres.summarise(row["auth_results"])
    else:
        # Polled mail: no SMTP client to check SPF against; the mailbox's own headers stay as they are.
        # Written back unchanged all the same: the finish then replaces the column instead of
        # having SQLite copy the old record (store/inbound.py _finish).
        stored, auth = [memoryview(raw)], {"spf": "none", "dkim": "none", "dmarc": "none", "header": ""}
    # Everything below reads the message as received (our header changes nothing it looks at).
    body = raw
    headers = classifier.top_headers(body)
    mail_from: str | None = row["mail_from"]
    if row["source"] != "mx":
        # A mailbox keeps the envelope sender as Return-Path (or nothing): unknown is not null.
        rp = headers.get("return-path")
        mail_from = rp.strip().strip("<>").strip() if rp is not None else None
    c = classifier.classify(body, target=route.kind, envelope_to=route.address, mail_from=mail_from, headers=headers)
    parsed = parse(body, limits) if limits is not None else parse(body)
    work = Work(raw=stored, auth=auth, classification=c, parsed=parsed, stripped="")
    if c.kind in CONVERSATION and stripped_reply is not None:
        work.stripped = stripped_reply(parsed.text or "", parsed.html or "")
    # A tenant's mailbox auto-forwarding to us: the customer is the sender, the mailbox is named.
    o = origin.attribute(_head(body), mail_from=row["mail_from"], recipients=row["recipients"])
    work.sender, work.forwarded_by = o.sender or "", o.forwarded_by or ""
    return work


def put_files(work: Work, files: Any, pins: Pins) -> None:
    """Write the attachment files of an examined message (pinned: ``Work.shas``) and list them."""
    try:
        for position, part in enumerate(work.parsed.attachments):
            with pins.putting():
                sha = files.put(part.chunks())
                pins.pin([sha])
            work.shas.append(sha)
            work.attachments.append(Attachment(position=position, filename=part.filename, content_type=part.content_type,
                                               size=part.size, sha256=sha, content_id=part.content_id or "",
                                               inline=bool(part.inline)))
    except BaseException:
        pins.unpin(work.shas)
        raise


_BLANK_LINE = re.compile(rb"\r?\n(\r?\n)")


def _with_header(raw: bytes, verdict: Any) -> list[bytes | memoryview]:
    """The stored copy with our Authentication-Results, as pieces: the rewritten header section,
    then a view of the rest as received. A 25 MB message is not copied to change its header."""
    if raw.startswith((b"\r\n", b"\n")):
        return [authres.with_header(raw[:2 if raw.startswith(b"\r\n") else 1], verdict), memoryview(raw)[2 if raw.startswith(b"\r\n") else 1:]]
    m = _BLANK_LINE.search(raw)
    if m is None:
        return [authres.with_header(raw, verdict)]
    return [authres.with_header(raw[:m.end()], verdict), memoryview(raw)[m.end():]]


def _head(raw: bytes) -> bytes:
    """The header section (with the blank line): what origin reads, without copying the body
    (its header parser decodes whatever it is given)."""
    m = _BLANK_LINE.search(raw, 0, classifier.MAX_HEADER_BYTES)
    return raw[:m.end()] if m is not None else raw[:classifier.MAX_HEADER_BYTES]


def ids(value: Any) -> list[str]:
    """In-Reply-To as a list (the parser gives its first msg-id)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def address_of(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return str(value[0]) if value else ""
    return str(value or "")


def display_of(value: Any) -> str:
    if isinstance(value, (tuple, list)) and len(value) > 1:
        return str(value[1])
    return ""
