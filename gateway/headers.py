"""Header fields of a message, read at the byte level: the one place a header's value becomes text.

The header block is split into fields with their folded continuation lines kept verbatim (never
re-serialised through ``email``), so every field we do not touch reaches the recipient exactly as
the client sent it. Used by submission (``submission/prepare.py``) and meant for the inbound path too.

What a value becomes: UTF-8 text (RFC 6532 allows UTF-8 in header fields), or nothing. A field we
read for a decision or store (From, Message-ID, In-Reply-To, References) whose bytes are not UTF-8
is refused with ``550 5.6.0`` naming the field, as an MTA refuses a broken message at the final
dot: a surrogate-escaped string never leaves this module, so none can reach the store (SQLite
refuses to encode one) or a comparison with our own records. Fields we only pass through are not
decoded at all.

RFC 5322 3.6 also limits how often a field may appear: ``SINGLE`` names those allowed at most once
(From exactly once); receivers that count them (OpenDKIM) fail a message with two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import getaddresses

from .errors import SMTPError

CRLF = b"\r\n"
_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")  # RFC 5322 ftext: printable ASCII but ':'
_MSGID = re.compile(r"<([^<>\s]{1,500})>")
# A mailbox the common way: an addr-spec of dot-atoms (ASCII atext), bare or in <>, after a display
# name of atoms and white space only. For these ``getaddresses`` gives back the addr-spec as written;
# anything else (quotes, comments, groups, several mailboxes, UTF-8) goes to it (``mailbox_addresses``).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR = rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# (Atoms separated by required white space: no nested quantifier can backtrack exponentially.)
_SIMPLE_MAX = 998      # longer values are no common case: the parser takes them
_SIMPLE_MAILBOX = re.compile(rf"[ \t]*(?:(?:{_ATEXT}(?:[ \t]+{_ATEXT})*[ \t]*)?<({_ADDR})>|({_ADDR}))[ \t]*")

# RFC 5322 3.6: fields that may appear at most once, by lower-case name, with the name we show.
# (Bcc is also limited to one, but every Bcc is removed before the message is queued.)
SINGLE = {
    b"from": "From", b"sender": "Sender", b"reply-to": "Reply-To", b"to": "To", b"cc": "Cc",
    b"subject": "Subject", b"date": "Date", b"message-id": "Message-ID", b"in-reply-to": "In-Reply-To",
    b"references": "References",
}


@dataclass(frozen=True)
class Field:
    name: bytes   # lower-cased
    raw: bytes    # the whole field, folded lines and final CRLF included

    @property
    def value(self) -> str:
        """The unfolded value as text; ``550 5.6.0`` naming the field when its bytes are not UTF-8."""
        _, _, value = self.raw.partition(b":")
        try:
            text = value.replace(CRLF, b"").decode("utf-8")
        except UnicodeDecodeError:
            name = self.raw.partition(b":")[0].strip().decode("ascii")  # field names are ASCII (_FIELD_NAME)
            raise SMTPError(550, "5.6.0", f"{name} header is not valid UTF-8", f"{name} header: invalid UTF-8") from None
        return text.strip()

    @property
    def lenient_value(self) -> str:
        """The unfolded value with bytes that are not UTF-8 replaced (U+FFFD): what an MX reads of
        mail from the internet, where raw Latin-1 headers still arrive and are not refused."""
        _, _, value = self.raw.partition(b":")
        return value.replace(CRLF, b"").decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class Parsed:
    fields: list[Field]
    # Everything after the header block, blank separator line included (may be empty): a view into
    # the received data, not a copy, so a large message is held once until it is prepared.
    body: bytes | memoryview


def split_header(data: bytes | bytearray, max_header_bytes: int) -> Parsed:
    """Split ``data`` (CRLF lines) into header fields and body.

    The header ends at the first empty line; a line that is neither a field nor a continuation also
    ends it (like Postfix, the rest is body, and a blank line is put before it so the message stays
    well-formed). A header block over ``max_header_bytes`` is refused with 552 5.3.4.
    """
    fields: list[Field] = []
    pos, n = 0, len(data)
    current: list[bytes] = []
    current_name = b""
    body: bytes | memoryview = b""
    while pos < n:
        end = data.find(CRLF, pos)
        end = n if end < 0 else end + 2
        line = bytes(data[pos:end])
        if line in (CRLF, b""):
            body = memoryview(data)[pos:]
            break
        if line[:1] in (b" ", b"\t") and current:
            current.append(line)
        else:
            name, colon, _ = line.partition(b":")
            name = name.rstrip(b" \t")
            if not colon or not _FIELD_NAME.match(name):
                body = CRLF + data[pos:]
                break
            if current:
                fields.append(Field(current_name, b"".join(current)))
            current, current_name = [line], name.lower()
        pos = end
        if pos > max_header_bytes:
            raise SMTPError(552, "5.3.4", "Message header too large", f"header block over {max_header_bytes} bytes")
    if current:
        fields.append(Field(current_name, b"".join(current)))
    if fields and not fields[-1].raw.endswith(CRLF):
        fields[-1] = Field(fields[-1].name, fields[-1].raw + CRLF)
    return Parsed(fields, body)


def check_single(fields: list[Field]) -> None:
    """At most one of each field in ``SINGLE`` (RFC 5322 3.6): ``550 5.6.0`` naming the first repeated."""
    seen: set[bytes] = set()
    for f in fields:
        if f.name in SINGLE:
            if f.name in seen:
                shown = SINGLE[f.name]
                raise SMTPError(550, "5.6.0", f"Message has more than one {shown} header", f"duplicate {shown} header")
            seen.add(f.name)


def mailbox_addresses(values: list[str]) -> list[str]:
    """The addresses (addr-specs, as written) of the mailboxes in the From (or Sender, Reply-To)
    ``values``, as ``email.utils.getaddresses`` finds them. Its parser is a tenth of a submitted
    message's preparation; a value holding one plain mailbox (``_SIMPLE_MAILBOX``: what almost every
    app sends) is read by one regular expression instead, with the same result
    (tests/test_prepare.py compares the two on random values)."""
    found = []
    for value in values:
        simple = _SIMPLE_MAILBOX.fullmatch(value) if len(value) <= _SIMPLE_MAX else None
        if simple is None:
            return [addr for _, addr in getaddresses(values) if addr]
        found.append(simple.group(1) or simple.group(2))
    return found


def message_ids(value: str) -> list[str]:
    """The msg-ids in a Message-ID / In-Reply-To / References value, without <>."""
    return _MSGID.findall(value)
