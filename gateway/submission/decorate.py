"""What a channel address adds to mail sent from it: pure functions on bytes.

    decorate(fields, body, ...) -> Decorated(content fields, body) or None (nothing to change)
        header/footer: into the message's first text/plain and first text/html body parts, found
                       depth-first over the MIME tree; never into an attachment (a part with
                       Content-Disposition: attachment), inside an attached message (message/*)
                       or inside signed or encrypted content (multipart/signed: it would break)
        vCard:         the message becomes multipart/mixed around the original, the .vcf after it
    reply_to(fields, copy) -> the Reply-To field with the reply copy added

Only what changes is rewritten: a decorated part gets its new bytes (decoded with its charset,
the text added, encoded back with the same charset and transfer encoding where they can carry
it: an HTML part takes what its charset cannot encode as character references, a plain-text part
becomes UTF-8), and every other part, header and byte of the message stays as the client sent it.
A part whose charset is unknown or whose bytes do not decode in it is left alone (its text would
come out wrong). The walk is bounded (depth, parts); whatever lies beyond the bounds is not looked at.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from dataclasses import dataclass
from email.message import Message
from email.utils import getaddresses
from email.parser import BytesParser
from email.policy import compat32

import vobject

from ..headers import CRLF, Field, split_header

MAX_DEPTH = 20
MAX_PARTS = 500
MAX_PART_HEADER = 64 * 1024
MAX_LINE = 998   # RFC 5322 2.1.1: longer lines need a transfer encoding
CONTENT = (b"content-type", b"content-transfer-encoding", b"content-disposition", b"content-id", b"content-description",
           b"content-language", b"content-location", b"content-md5")
REPLACED = frozenset((*CONTENT, b"mime-version"))
# Signed or encrypted content (RFC 1847): a changed byte breaks the sender's signature. Left whole.
SEALED = ("multipart/signed", "multipart/encrypted", "application/pkcs7-mime", "application/x-pkcs7-mime")
IDENTITY = ("7bit", "8bit", "binary")

# "<body" then (str.find) its ">": a pattern "<body\b[^>]*>" rescans to the end from every "<body"
# when no ">" follows, quadratic on a crafted part.
_BODY_OPEN = re.compile(r"<body\b", re.IGNORECASE)
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)
_FILENAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Decorations:
    header_text: str = ""
    header_html: str = ""
    footer_text: str = ""
    footer_html: str = ""

    def __bool__(self) -> bool:
        return bool(self.header_text or self.header_html or self.footer_text or self.footer_html)


@dataclass(frozen=True)
class Decorated:
    fields: list[bytes]   # replace the message's fields named in REPLACED (Content-*, MIME-Version), raw
    body: tuple[bytes | bytearray | memoryview, ...]   # its pieces in order, blank separator line included


# --------------------------------------------------------------------------- the MIME walk


@dataclass
class _Leaf:
    start: int   # offsets of the whole part (its header and body) inside the entity
    end: int
    kind: str    # 'plain' or 'html'


def _headers(entity: bytes, start: int, end: int) -> tuple[Message, int]:
    """The part's Content-Type and Content-Disposition as a Message, and where its body starts
    (after the blank line). Only those two fields are read: a parser run per part would cost more
    than the rest of the walk."""
    sep = entity.find(b"\r\n\r\n", start, min(end, start + MAX_PART_HEADER))
    if entity.startswith(CRLF, start):
        head_end = start  # no header at all: the part is text/plain (RFC 2045 5.2)
        body_start = start + 2
    elif sep < 0:
        head_end = body_start = end
    else:
        head_end, body_start = sep + 2, sep + 4
    msg = Message()
    for f in split_header(entity[start:head_end], MAX_PART_HEADER).fields if head_end > start else ():
        if f.name in (b"content-type", b"content-disposition"):
            msg[f.name.decode("ascii")] = f.raw.partition(b":")[2].replace(CRLF, b"").strip().decode("utf-8", "replace")
    return msg, body_start


def _children(entity: bytes, start: int, end: int, boundary: str) -> list[tuple[int, int]]:
    """Offsets of each body part between the delimiters of ``boundary`` (RFC 2046 5.1.1); ``start``
    is at the CRLF before the first one (the header's blank line)."""
    marker = b"\r\n--" + boundary.encode("ascii", "replace")
    parts: list[tuple[int, int]] = []
    begin = None
    pos = start
    while True:
        at = entity.find(marker, pos, end)
        if at < 0:
            return parts  # no close delimiter: what was found
        after = at + len(marker)
        close = entity.startswith(b"--", after, end)
        line_end = after + 2 if close else after
        while line_end < end and entity[line_end] in b" \t":   # transport padding
            line_end += 1
        if line_end < end and not entity.startswith(CRLF, line_end):
            pos = after   # the boundary is only the start of a longer line: not a delimiter
            continue
        if begin is not None:
            parts.append((begin, at))
        if close or len(parts) >= MAX_PARTS:
            return parts
        begin = line_end + 2
        pos = line_end


def _leaves(entity: bytes, start: int, end: int, depth: int, found: dict[str, _Leaf]) -> None:
    msg, body_start = _headers(entity, start, end)
    ctype = msg.get_content_type()
    if msg.get_content_disposition() == "attachment" or ctype.startswith("message/") or ctype in SEALED:
        return
    if ctype.startswith("multipart/"):
        boundary = msg.get_boundary()
        if boundary and depth < MAX_DEPTH:
            for child_start, child_end in _children(entity, body_start - 2, end, boundary):
                _leaves(entity, child_start, child_end, depth + 1, found)
                if len(found) == 2:
                    return
        return
    kind = {"text/plain": "plain", "text/html": "html"}.get(ctype)
    if kind and kind not in found:
        found[kind] = _Leaf(start, end, kind)


# --------------------------------------------------------------------------- one part


def _insert(text: str, kind: str, header: str, footer: str) -> str:
    header, footer = header.replace("\n", "\r\n"), footer.replace("\n", "\r\n")
    if kind == "html":
        if header:
            m = _BODY_OPEN.search(text)
            close = text.find(">", m.end()) if m else -1
            at = close + 1 if close >= 0 else 0   # no ">" after the first "<body": none after a later one either
            text = text[:at] + header + text[at:]
        if footer:
            closes = list(_BODY_CLOSE.finditer(text))
            at = closes[-1].start() if closes else len(text)
            text = text[:at] + footer + text[at:]
        return text
    if header:
        text = header + "\r\n\r\n" + text
    if footer:
        text += ("" if text.endswith("\n") or not text else "\r\n") + "\r\n" + footer + "\r\n"
    return text


def _encode(data: bytes, cte: str) -> tuple[bytes, str]:
    """``data`` in the part's own transfer encoding when it can carry it, else quoted-printable."""
    if cte == "base64":
        return base64.encodebytes(data).replace(b"\n", CRLF), cte
    long_line = any(len(line) > MAX_LINE for line in data.split(b"\n"))
    if cte == "quoted-printable" or long_line or (not data.isascii() and cte == "7bit"):
        qp = binascii.b2a_qp(data.replace(CRLF, b"\n"), istext=True).replace(b"\n", CRLF)
        return qp, "quoted-printable"
    return data, cte


def _rewrite(part: bytes, kind: str, header: str, footer: str) -> bytes | None:
    """The part with the header and footer added, or None when it must stay as it is."""
    if not (header or footer):
        return None
    msg = BytesParser(policy=compat32).parsebytes(part)
    raw = msg.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return None
    charset = msg.get_content_charset() or "us-ascii"
    try:
        text = raw.decode(charset)
    except (LookupError, UnicodeDecodeError):
        return None
    new = _insert(text, kind, header, footer)
    new_charset = charset
    try:
        data = new.encode(charset)
    except UnicodeEncodeError:
        if kind == "html":
            data = new.encode(charset, "xmlcharrefreplace")
        else:
            data, new_charset = new.encode("utf-8"), "utf-8"
    cte = (msg.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if cte not in (*IDENTITY, "base64", "quoted-printable"):
        return None   # x-uuencode and the like: we would not write it back the same way
    data, new_cte = _encode(data, cte)
    parsed = split_header(part, MAX_PART_HEADER)
    fields = [f.raw for f in parsed.fields if f.name != b"content-transfer-encoding"
              and not (new_charset != charset and f.name == b"content-type")]
    if new_charset != charset:
        msg.set_param("charset", new_charset)
        fields.append(_field("Content-Type", msg["Content-Type"] if "Content-Type" in msg else f"text/{kind}; charset={new_charset}"))
    if new_cte not in ("7bit", "") or "Content-Transfer-Encoding" in msg:
        fields.append(_field("Content-Transfer-Encoding", new_cte))
    return b"".join(fields) + CRLF + data


def _field(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("utf-8")


# --------------------------------------------------------------------------- the message


@functools.lru_cache(maxsize=256)   # the same few addresses, again and again
def vcard(display_name: str, address: str) -> tuple[str, bytes]:
    """(file name, vCard 3.0 text) for the address, made with vobject."""
    card = vobject.vCard()
    card.add("fn").value = display_name or address
    card.add("n").value = vobject.vcard.Name(given=display_name or address)
    email = card.add("email")
    email.value = address
    email.type_param = "INTERNET"
    name = _FILENAME_UNSAFE.sub("-", display_name or address.partition("@")[0]).strip("-.")[:60] or "contact"
    return f"{name}.vcf", card.serialize().encode("utf-8")


def _wrapper(filename: str, card: bytes) -> tuple[bytes, bytes, bytes]:
    """(Content-Type field, what goes before the original entity, what goes after it): the message
    becomes multipart/mixed with the original first and the vCard attached."""
    boundary = "=_vcard_" + secrets.token_hex(16)   # random: cannot occur in the entity by chance
    encoded, cte = (card, "7bit") if card.isascii() else (base64.encodebytes(card).replace(b"\n", CRLF), "base64")
    after = b"".join([
        f"\r\n--{boundary}\r\n".encode(),
        _field("Content-Type", f'text/vcard; charset=utf-8; name="{filename}"'),
        _field("Content-Disposition", f'attachment; filename="{filename}"'),
        _field("Content-Transfer-Encoding", cte), CRLF, encoded,
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    return _field("Content-Type", f'multipart/mixed; boundary="{boundary}"'), f"\r\n--{boundary}\r\n".encode(), after


def decorate(fields: list[Field], body: bytes | memoryview, decorations: Decorations,
             card: tuple[str, bytes] | None = None) -> Decorated | None:
    """The message's new content fields and body with the decorations and the vCard, or None when
    nothing changes (no decoration, and no body part that takes one).

    The message is copied once (into the entity the parts are rewritten in, in place); the body
    returned is views and pieces of it, joined once by ``prepare``."""
    entity = bytearray(b"".join(f.raw for f in fields if f.name in CONTENT))
    entity += body if len(body) else CRLF
    changed = False
    if decorations:
        found: dict[str, _Leaf] = {}
        _leaves(entity, 0, len(entity), 0, found)
        # Rewritten from the last part to the first, so earlier offsets stay valid.
        for leaf in sorted(found.values(), key=lambda l: l.start, reverse=True):
            header = decorations.header_html if leaf.kind == "html" else decorations.header_text
            footer = decorations.footer_html if leaf.kind == "html" else decorations.footer_text
            new = _rewrite(bytes(entity[leaf.start:leaf.end]), leaf.kind, header, footer)
            if new is not None:
                entity[leaf.start:leaf.end] = new
                changed = True
    # MIME-Version replaces the client's (if any): a part may now declare a charset or encoding.
    version = b"MIME-Version: 1.0\r\n"
    if card is not None:
        content_type, before, after = _wrapper(*card)
        return Decorated([content_type, version], (before, entity, after))
    if not changed:
        return None
    parsed = split_header(entity, len(entity))
    return Decorated([f.raw for f in parsed.fields] + [version], (parsed.body,))


def reply_to(fields: list[Field], copy: str) -> bytes | None:
    """The Reply-To field with ``copy`` added (the app's own Reply-To kept first), or None when it is
    already there."""
    existing = next((f for f in fields if f.name == b"reply-to"), None)
    if existing is None:
        return _field("Reply-To", f"<{copy}>")
    value = existing.value
    if any(addr.lower() == copy for _, addr in getaddresses([value])):
        return None
    return _field("Reply-To", f"{value}, <{copy}>" if value else f"<{copy}>")
