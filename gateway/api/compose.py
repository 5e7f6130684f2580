"""A JSON send request as RFC 5322 bytes: the MIME message the submission path then checks and queues.

Built directly as bytes (no ``email.message`` objects: this is the API's hot path), CRLF lines:

    From, To, Cc, Reply-To, Subject, In-Reply-To, References, custom headers, MIME-Version, the body:
        text or html alone          a single part
        text and html               multipart/alternative
        + inline attachments        multipart/related around it (attachments with a content_id)
        + other attachments         multipart/mixed around that
    ASCII text with short lines is 7bit, other text quoted-printable, attachments base64.

Date is written here (one formatting per second, memoised: it is a tenth of this module's cost
otherwise); Message-ID is left to preparation (submission/prepare.py adds it as it does for SMTP),
Bcc never becomes a header. Non-ASCII display names, subjects and header values become RFC 2047
encoded words; non-ASCII filenames RFC 2231 parameters. A CR, LF or NUL in anything that becomes a
header is the refusal SMTP gives a bare line break (550 5.6.0); a header the gateway owns is refused.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets
from collections.abc import Iterable, Sequence
from email.header import Header
from email.utils import formataddr, formatdate
from typing import Any
from urllib.parse import quote

from ..errors import SMTPError
from .problems import ApiProblem
from .refusals import problem

CRLF = b"\r\n"
MAX_LINE = 998
FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")   # RFC 5322 ftext
# Headers the gateway writes or that a request field sets: a custom header may not name them.
OWNED = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "sender", "subject", "date", "message-id", "in-reply-to", "references",
    "received", "return-path", "dkim-signature", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition", "content-id", "authentication-results", "feedback-id",
})
OWNED_PREFIXES = ("list-unsubscribe", "content-", "arc-", "x-gateway-", "resent-")
_BREAKERS = re.compile(r"[\r\n\x00]")
_NEWLINES = re.compile(r"\r\n|\r")


@functools.lru_cache(maxsize=4)
def local_date(second: int) -> str:
    """RFC 5322 date of ``second``, local time (a pure memo: every message of one second names the same)."""
    return formatdate(second, localtime=True)


def injection(field: str) -> ApiProblem:
    return problem(SMTPError(550, "5.6.0", "Header values must not contain CR, LF or NUL", f"{field}: line break in a header value"),
                   field=field)


def _clean(value: str, field: str) -> str:
    if _BREAKERS.search(value):
        raise injection(field)
    return value


def encode_text(value: str, field: str) -> str:
    """A header value: as it is when ASCII, else RFC 2047 encoded words (folded)."""
    _clean(value, field)
    if value.isascii():
        return value
    return Header(value, "utf-8").encode(linesep="\r\n")


def mailbox(address: str, name: str, field: str) -> str:
    _clean(address, field)
    if not name:
        return address
    _clean(name, field)
    if address.isascii():
        return formataddr((name, address), charset="utf-8")
    # RFC 6532: a UTF-8 address goes as it is; the name is encoded as formataddr would.
    shown = formataddr((name, "x@y"), charset="utf-8").rpartition(" <")[0]
    return f"{shown} <{address}>"


def address_list(boxes: Sequence[tuple[str, str]], field: str) -> str:
    return ",\r\n ".join(mailbox(a, n, f"{field}[{i}]") for i, (a, n) in enumerate(boxes))


def custom_headers(fields: dict[str, str]) -> list[str]:
    out = []
    for name, value in fields.items():
        where = f"headers.{name[:80]}"
        lower = name.lower()
        if not FIELD_NAME.match(name):
            raise ApiProblem(422, "header-invalid", "A custom header's name is not valid", "header names are printable ASCII without ':'",
                             field=where)
        if lower in OWNED or lower.startswith(OWNED_PREFIXES):
            raise ApiProblem(422, "header-not-allowed", "The gateway sets this header itself",
                             f"{name} is set by the gateway or by a request field, not through headers", field=where)
        text = encode_text(value, where)
        if len(name) + 2 + len(text.partition("\r\n")[0]) > MAX_LINE:
            raise ApiProblem(422, "header-invalid", "A custom header is too long", "a header line holds at most 998 characters",
                             field=where)
        out.append(f"{name}: {text}")
    return out


def _text_part(text: str, subtype: str) -> bytes:
    if "\r" in text:   # the regex only when there is a CR to fold (most texts have none: 2% of a send's CPU)
        text = _NEWLINES.sub("\n", text)
    raw = text.encode("utf-8")
    if raw.isascii() and max(map(len, raw.split(b"\n"))) <= MAX_LINE - 2:
        body, cte = raw.replace(b"\n", CRLF), "7bit"
        charset = "us-ascii"
    else:
        body, cte = binascii.b2a_qp(raw, istext=True).replace(b"\n", CRLF), "quoted-printable"
        charset = "utf-8"
    head = f"Content-Type: text/{subtype}; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    return head.encode("ascii") + body + (b"" if body.endswith(CRLF) else CRLF)


def _param(key: str, value: str) -> str:
    """A MIME parameter: quoted when ASCII, RFC 2231 (utf-8'') otherwise."""
    if value.isascii() and '"' not in value and "\\" not in value:
        return f'{key}="{value}"'
    return f"{key}*=utf-8''{quote(value, safe='')}"


def _attachment(index: int, item: Any) -> bytes:
    field = f"attachments[{index}]"
    try:
        raw = binascii.a2b_base64(item.content, strict_mode=True)
    except (binascii.Error, ValueError):
        raise ApiProblem(422, "invalid-request", "The request is not valid", "content is not base64 (RFC 4648, no line breaks)",
                         field=f"{field}.content") from None
    filename = _clean(item.filename, f"{field}.filename")
    lines = [f"Content-Type: {item.content_type}; {_param('name', filename)}"]
    if item.content_id:
        lines.append(f"Content-ID: <{_clean(item.content_id, f'{field}.content_id')}>")
        lines.append(f"Content-Disposition: inline; {_param('filename', filename)}")
    else:
        lines.append(f"Content-Disposition: attachment; {_param('filename', filename)}")
    lines.append("Content-Transfer-Encoding: base64")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + base64.encodebytes(raw).replace(b"\n", CRLF)


def _multipart(subtype: str, parts: Iterable[bytes]) -> bytes:
    # "=_" never occurs in quoted-printable or base64 text, and 96 random bits not in 7bit text.
    boundary = "=_gw" + secrets.token_hex(12)
    mark = f"--{boundary}\r\n".encode("ascii")
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode("ascii")]
    for part in parts:
        out += [mark, part]
    out.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


def body(text: str | None, html: str | None, attachments: Sequence[Any]) -> bytes:
    """The MIME entity (its Content-* header fields, a blank line, the content)."""
    alternatives = []
    if text is not None or html is None:
        alternatives.append(_text_part(text or "", "plain"))
    if html is not None:
        alternatives.append(_text_part(html, "html"))
    entity = alternatives[0] if len(alternatives) == 1 else _multipart("alternative", alternatives)
    inline = [(i, a) for i, a in enumerate(attachments) if a.content_id]
    attached = [(i, a) for i, a in enumerate(attachments) if not a.content_id]
    if inline:
        entity = _multipart("related", [entity, *(_attachment(i, a) for i, a in inline)])
    if attached:
        entity = _multipart("mixed", [entity, *(_attachment(i, a) for i, a in attached)])
    return entity


def message(*, now: float, sender: tuple[str, str], to: Sequence[tuple[str, str]], cc: Sequence[tuple[str, str]],
            reply_to: tuple[str, str] | None, subject: str, in_reply_to: str | None, extra: dict[str, str],
            text: str | None, html: str | None, attachments: Sequence[Any]) -> bytearray:
    """The whole message, CRLF lines, as one buffer (prepared in place afterwards)."""
    lines = [f"From: {mailbox(sender[0], sender[1], 'from')}", f"Date: {local_date(int(now))}"]
    if to:
        lines.append(f"To: {address_list(to, 'to')}")
    if cc:
        lines.append(f"Cc: {address_list(cc, 'cc')}")
    if reply_to is not None:
        lines.append(f"Reply-To: {mailbox(reply_to[0], reply_to[1], 'reply_to')}")
    if subject:
        lines.append(f"Subject: {encode_text(subject, 'subject')}")
    if in_reply_to:
        parent = f"<{_clean(in_reply_to.strip('<>'), 'in_reply_to')}>"
        # References from our records replace this one when the parent is ours (submission/channel.py).
        lines += [f"In-Reply-To: {parent}", f"References: {parent}"]
    lines += custom_headers(extra)
    lines.append("MIME-Version: 1.0")
    head = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    out = bytearray(head)
    out += body(text, html, attachments)
    return out
