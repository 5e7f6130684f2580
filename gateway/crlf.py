"""Line endings: the one definition of the characters that end or smuggle a line, and of CRLF form.

SMTP and header fields are line protocols: a CR, LF or NUL inside a command argument, an address or a
header value we write would end the line early or be read differently by the next hop (SMTP
smuggling, header injection). Every check for them, and every conversion of a message to CRLF line
endings, calls this module.
"""

from __future__ import annotations

import re

LINE_BREAKERS = "\r\n\0"   # has_line_breakers spells them out: any change goes to both
_EOL = re.compile(rb"\r\n|\r|\n")


def has_line_breakers(value: str | bytes) -> bool:
    """True when ``value`` holds a CR, LF or NUL. Three substring searches in C: every address and
    command line of a delivery asks (an address: 0.18 against 0.67 us for a generator over LINE_BREAKERS)."""
    if isinstance(value, bytes):
        return b"\r" in value or b"\n" in value or b"\0" in value
    return "\r" in value or "\n" in value or "\0" in value


def only_crlf(data: bytes) -> bool:
    """Every line ending in ``data`` is CRLF: no bare CR, no bare LF."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") == crlf and data.count(b"\r") == crlf


def to_crlf(data: bytes) -> bytes:
    """``data`` with every line ending (CRLF, bare CR, bare LF) as CRLF; the same object when it already is."""
    return data if only_crlf(data) else _EOL.sub(b"\r\n", data)
