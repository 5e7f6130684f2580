"""The List-Unsubscribe (RFC 2369) and List-Unsubscribe-Post (RFC 8058) fields of one recipient's copy.

    List-Unsubscribe: <https://mail.example.com/u/TOKEN>,
     <mailto:unsubscribe@bounces.example.com?subject=unsubscribe%20TOKEN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

The token carries the address, so the fields differ per recipient and are added at delivery time,
just before DKIM signing (the signer signs and oversigns both). The mailto form puts the token in the
subject, not in the local part: a token with an address in it is longer than the 64 octets RFC 5321
allows a local part, and relays may change a local part's case, never a subject's.

A message that already carries these fields from the app loses them: RFC 8058 wants exactly one
HTTPS URI, and a second List-Unsubscribe would leave receivers to pick one. The app learns of every
unsubscribe from the ``unsubscribed`` event instead.
"""

from __future__ import annotations

import re

ONE_CLICK = b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
_OURS = re.compile(rb"(?i)list-unsubscribe(-post)?[ \t]*:")


def unsubscribe_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/u/{token}"


def mailto_uri(mailto_address: str, token: str) -> str:
    return f"mailto:{mailto_address}?subject=unsubscribe%20{token}"


def fields(url: str, mailto: str | None) -> bytes:
    """Both header fields, CRLF-terminated and folded between the URIs (each line under 998 octets)."""
    value = f"<{url}>" + (f",\r\n <{mailto}>" if mailto else "")
    if any(c in value for c in "\0\t") or any(ord(c) > 126 for c in value):
        raise ValueError("an unsubscribe URI must be printable ASCII")
    return f"List-Unsubscribe: {value}\r\n".encode("ascii") + ONE_CLICK


def without_fields(message: bytes) -> bytes:
    """``message`` (CRLF) without any List-Unsubscribe or List-Unsubscribe-Post field, folded lines included."""
    end = message.find(b"\r\n\r\n")
    head, rest = (message, b"") if end < 0 else (message[:end + 2], message[end + 2:])
    if b"unsubscribe" not in head.lower():
        return message
    out: list[bytes] = []
    dropping = False
    lines = head.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        dropping = bool(_OURS.match(line))
        if not dropping:
            out.append(line)
    return b"".join(l + b"\r\n" for l in out) + rest


def with_fields(message: bytes, header_fields: bytes) -> bytes:
    """``message`` with the app's unsubscribe fields replaced by ``header_fields`` (put first)."""
    return header_fields + without_fields(message)
