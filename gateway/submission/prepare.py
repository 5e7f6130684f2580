"""Preparing a submitted message: pure functions on bytes.

The header block is parsed at the byte level (fields with their folded continuation lines kept
verbatim), never re-serialised through ``email``: the body and every header we do not touch reach
the recipient exactly as the client sent them, which keeps the client's own signatures (and ours,
added at delivery) intact and is quick (a few microseconds for a typical message).

    prepare(data, ...) ->  Received: prepended (prepare_in_place: the same inside the received buffer)
                           Message-ID: <queue-id@sending-domain> added when missing
                           Date: added when missing
                           Bcc: removed (every one)

``inspect`` reads what policy needs first (From addresses, Received count, Message-ID,
In-Reply-To/References), so the listener can refuse before doing any work. Fields are split and
their values decoded by ``gateway/headers.py``: a field read here whose bytes are not UTF-8 is
refused there (550 5.6.0 naming it), so no surrogate-escaped text reaches policy or the store.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from email.utils import formatdate

from ..headers import CRLF, Field, Parsed, mailbox_addresses, message_ids, split_header

__all__ = ["CRLF", "Edits", "Field", "Parsed", "Inspected", "inspect", "message_ids", "prepare", "received_header", "safe_helo",
           "split_header"]

MAX_PARENTS = 30
MAX_REFERENCES = 100   # ids kept from a client's References (the newest)
_HELO_SAFE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")


@dataclass(frozen=True)
class Inspected:
    parsed: Parsed
    from_addresses: list[str]
    from_fields: int
    received: int
    message_id: str | None   # without <>, when the client set one we can use
    parents: tuple[str, ...]  # In-Reply-To then References newest first, without <>
    has_date: bool
    in_reply_to: tuple[str, ...] = ()   # as the client sent them, without <>
    references: tuple[str, ...] = ()    # oldest first, as the client sent them


@dataclass(frozen=True)
class Edits:
    """Changes to the header (and body) beyond the standard ones: fields named in ``drop`` go,
    ``add`` (raw fields) are appended, ``body`` (its pieces, blank separator line included) replaces
    the body."""

    drop: frozenset[bytes] = frozenset()
    add: tuple[bytes, ...] = ()
    body: tuple[bytes | bytearray | memoryview, ...] | None = None   # pieces, joined once


def inspect(data: bytes | bytearray, *, max_header_bytes: int, lenient: bool = False, addresses: bool = True) -> Inspected:
    """What policy reads from the header. ``lenient``: fields that are not UTF-8 are read with
    replacement characters (the MX) rather than refused 550 5.6.0 (submission: our tenants' own
    messages). ``addresses`` False leaves ``from_addresses`` empty (the From fields are still
    counted): the MX does not look at them, and parsing them is a tenth of this function's time."""
    parsed = split_header(data, max_header_bytes)

    def text(f: Field) -> str:
        return f.lenient_value if lenient else f.value

    from_values: list[str] = []
    received = 0
    message_id: str | None = None
    in_reply_to: list[str] = []
    references: list[str] = []
    has_date = False
    for f in parsed.fields:
        name = f.name
        if name == b"received":
            received += 1
        elif name == b"from":
            from_values.append(text(f))
        elif name == b"message-id" and message_id is None:
            ids = message_ids(text(f))
            message_id = ids[0] if ids else None
        elif name == b"in-reply-to":
            in_reply_to += message_ids(text(f))
        elif name == b"references":
            references += message_ids(text(f))
        elif name == b"date":
            has_date = True
    from_addresses = mailbox_addresses(from_values) if from_values and addresses else []
    parents: list[str] = []
    for p in in_reply_to + references[::-1]:
        if p not in parents:
            parents.append(p)
    return Inspected(
        parsed=parsed,
        from_addresses=from_addresses,
        from_fields=len(from_values),
        received=received,
        message_id=message_id,
        parents=tuple(parents[:MAX_PARENTS]),
        has_date=has_date,
        in_reply_to=tuple(in_reply_to[:MAX_PARENTS]),
        references=tuple(references[-MAX_REFERENCES:]),
    )


def references(client: tuple[str, ...] | list[str], in_reply_to: tuple[str, ...] | list[str], chain: list[str],
               limit: int = MAX_REFERENCES) -> list[str] | None:
    """The References a reply carries: the client's, with the conversation we recorded (``chain``,
    oldest first, ending with the recorded message it answers) put in where that message stands in
    the client's list (or after the client's ids when it is not there: a client that stripped
    References), and the In-Reply-To last. None when nothing is recorded or nothing changes. Over
    ``limit`` ids, the first (the thread's root) and the newest are kept (as MUAs trim)."""
    if not chain:
        return None
    client = list(client)
    at = client.index(chain[-1]) if chain[-1] in client else len(client)
    out: list[str] = []
    for mid in [*client[:at], *chain, *client[at + 1:], *in_reply_to[:1]]:
        if mid not in out:
            out.append(mid)
    if len(out) > limit:
        out = out[:1] + out[-(limit - 1):]
    return None if out == client else out


def references_field(ids: list[str]) -> bytes:
    """One id per line, folded (RFC 5322 3.6.4 allows folding between msg-ids)."""
    return ("References: " + "\r\n ".join(f"<{i}>" for i in ids) + "\r\n").encode("utf-8")


def safe_helo(helo: str | None) -> str:
    """The client's HELO name as it may appear in a header: no spaces, parentheses or controls."""
    cleaned = _HELO_SAFE.sub("", helo or "")[:255]
    return cleaned or "unknown"


@functools.lru_cache(maxsize=4)
def _local_date(second: int) -> str:
    """RFC 5322 date of ``second``, local time: a pure memo, since every message of one second
    names the same (formatting it is a fifth of a Received field's cost)."""
    return formatdate(second, localtime=True)


def received_header(*, helo: str | None, client_ip: str, hostname: str, queue_id: str, tls: str | None,
                    recipients: list[str], now: float, authenticated: bool = True) -> bytes:
    """RFC 5321 4.4 trace field. The recipient is named only when there is one (as Postfix does).
    The protocol is RFC 3848's: ESMTP, with S for TLS and A for an authenticated client."""
    literal = f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"
    lines = [f"Received: from {safe_helo(helo)} ({literal})"]
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
    lines.append(f"\tby {hostname} (gateway) with {protocol} id {queue_id}")
    if tls:
        lines.append(f"\t({tls})")
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>")
    lines[-1] += f"; {_local_date(int(now))}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _header(inspected: Inspected, *, received: bytes, message_id: str, add_message_id: bool, now: float | None,
            edits: Edits | None = None) -> list[bytes]:
    parts = [received]
    # A Message-ID field we could not use (no <id>) goes, so the message never carries two.
    drop = {b"bcc", b"message-id"} if add_message_id else {b"bcc"}
    if edits is not None:
        drop |= edits.drop
    parts += [f.raw for f in inspected.parsed.fields if f.name not in drop]
    if edits is not None:
        parts += edits.add
    if add_message_id:
        parts.append(f"Message-ID: <{message_id}>\r\n".encode("ascii"))
    if not inspected.has_date:
        parts.append(f"Date: {_local_date(int(time.time() if now is None else now))}\r\n".encode("ascii"))
    return parts


def prepare(inspected: Inspected, *, received: bytes, message_id: str, add_message_id: bool, now: float | None = None,
            edits: Edits | None = None) -> bytes:
    """The message as queued: our Received on top, Bcc gone, Message-ID and Date added when missing
    (and ``edits`` applied)."""
    parts = _header(inspected, received=received, message_id=message_id, add_message_id=add_message_id, now=now, edits=edits)
    if edits is not None and edits.body is not None:
        parts += edits.body
        return b"".join(parts)
    body = inspected.parsed.body
    if not body:
        body = CRLF
    parts.append(body)
    return b"".join(parts)


def prepare_in_place(inspected: Inspected, data: bytes | bytearray, *, received: bytes, message_id: str, add_message_id: bool,
                     now: float | None = None, edits: Edits | None = None) -> bytes | bytearray:
    """``prepare`` without a second copy of the message: the new header block replaces the old one
    inside ``data`` (the received buffer ``inspected`` was made from) and the body is not copied,
    so a 24 MB message stays 24 MB instead of two. Returns ``data``; ``inspected``'s body view is
    released (do not use it afterwards). A message whose body is not a view into ``data`` (no
    header/body separator) or not a bytearray, or one given a new body, is prepared by copy, as
    ``prepare`` does."""
    body = inspected.parsed.body
    if (not isinstance(data, bytearray) or not isinstance(body, memoryview) or body.obj is not data or not len(body)
            or (edits is not None and edits.body is not None)):
        return prepare(inspected, received=received, message_id=message_id, add_message_id=add_message_id, now=now, edits=edits)
    start = len(data) - len(body)
    head = b"".join(_header(inspected, received=received, message_id=message_id, add_message_id=add_message_id, now=now,
                            edits=edits))
    body.release()           # a bytearray with a view on it cannot be resized
    data[:start] = head      # moves the body by the difference in place (no second buffer)
    return data
