"""A small, bounded MIME reader for reports (DSN, ARF): headers, parts, decoded text.

The standard library's ``email`` parser builds a full object tree and costs about a millisecond a
report; a bounce needs only its headers, the boundaries and two or three parts. This reader splits
on boundaries and decodes only the parts asked for, at a fraction of the cost (scripts/score_bounces.py
measures it). It never raises on malformed input: what it cannot make sense of is simply absent.

Bounds: at most MAX_DEPTH levels of multipart nesting, MAX_PARTS parts, and the first MAX_BYTES of
the message; header values keep their unfolded text.
"""

from __future__ import annotations

import binascii
import functools
import quopri
import re
from dataclasses import dataclass, field

MAX_DEPTH = 5
MAX_PARTS = 50
MAX_BYTES = 1024 * 1024

# Searched after CRLF -> LF: a pattern that starts with an optional \r is tried at every position,
# one that starts with \n is found by a fast scan (half the cost of headers()).
_FOLD = re.compile(r"\n[ \t]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))')


@dataclass
class Part:
    headers: dict[str, str]           # lower-cased name -> first value, unfolded
    body: bytes                       # still transfer-encoded
    parts: list["Part"] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    # Parsed once per part (a report's walk asks each part several times); a Part's headers are not
    # changed after parsing.
    @functools.cached_property
    def content_type(self) -> str:
        return (self.get("content-type", "text/plain").split(";", 1)[0].strip().lower()) or "text/plain"

    @functools.cached_property
    def _content_params(self) -> dict[str, str]:
        return _params(self.get("content-type"))

    def param(self, name: str, header: str = "content-type") -> str:
        params = self._content_params if header == "content-type" else _params(self.get(header))
        return params.get(name, "")

    def decoded(self) -> bytes:
        cte = self.get("content-transfer-encoding").strip().lower()
        try:
            if cte == "base64":
                return binascii.a2b_base64(self.body)
            if cte == "quoted-printable":
                return quopri.decodestring(self.body)
        except (binascii.Error, ValueError):
            return b""
        return self.body

    def text(self) -> str:
        charset = self.param("charset") or "utf-8"
        data = self.decoded()
        try:
            return data.decode(charset, "replace")
        except (LookupError, ValueError):   # an unknown charset, or a name with a NUL in it
            return data.decode("utf-8", "replace")

    def walk(self):
        yield self
        for p in self.parts:
            yield from p.walk()


def _params(value: str) -> dict[str, str]:
    """A header's parameters, {lower name: value} (the first of a repeated name)."""
    out: dict[str, str] = {}
    for m in _PARAM.finditer(value):
        out.setdefault(m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3))
    return out


def headers(raw: str) -> dict[str, str]:
    """'Name: value' lines (folded lines joined) -> {lower name: first value}."""
    out: dict[str, str] = {}
    if "\r" in raw:
        raw = raw.replace("\r\n", "\n")
    if "\n " in raw or "\n\t" in raw:
        raw = _FOLD.sub(" ", raw)
    for line in raw.splitlines():
        name, sep, value = line.partition(":")
        if sep and name and " " not in name:
            out.setdefault(name.strip().lower(), value.strip())
    return out


def header_blocks(data: bytes) -> list[dict[str, str]]:
    """The blank-line separated header blocks of a message/delivery-status body."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return [h for h in (headers(b) for b in re.split(r"\n[ \t]*\n", text)) if h]


def _split(data: bytes) -> tuple[dict[str, str], bytes]:
    if data.startswith((b"\r\n", b"\n")):   # a part without headers
        return {}, data[2:] if data.startswith(b"\r\n") else data[1:]
    # The first blank line (\r?\n\r?\n): one search that stops there (two bytes.find, one for each
    # line ending, scanned the whole part for the one it does not use).
    m = _BLANK_LINE.search(data)
    if m is None:
        return headers(data.decode("utf-8", "replace")), b""
    k = m.start()
    start = k - 1 if k and data[k - 1:k] == b"\r" else k
    return headers(data[:start].decode("utf-8", "replace")), data[m.end():]


def _pieces(body: bytes, delim: bytes) -> list[bytes]:
    """The parts between boundary lines (found with bytes.find: a regex compiled per boundary costs
    more than the whole parse); the close delimiter ends the list, a missing one is tolerated."""
    pieces, last, pos = [], -1, 0
    while True:
        i = body.find(delim, pos)
        if i == -1:
            break
        pos = i + len(delim)
        if i and body[i - 1:i] != b"\n":
            continue   # not at the start of a line
        eol = body.find(b"\n", pos)
        rest = body[pos:eol if eol != -1 else len(body)].rstrip(b"\r \t")
        if rest not in (b"", b"--"):
            continue   # a longer boundary that starts with this one
        if last != -1:
            pieces.append(body[last:i - 1 if i else 0].removesuffix(b"\r"))
        if rest == b"--":
            return pieces
        last = eol + 1 if eol != -1 else len(body)
    if last != -1:
        pieces.append(body[last:])
    return pieces


def parse(data: bytes, *, depth: int = 0, budget: list[int] | None = None) -> Part:
    """The message's part tree (multiparts split, message/rfc822 parsed one level down)."""
    budget = budget if budget is not None else [MAX_PARTS]
    hdrs, body = _split(data[:MAX_BYTES] if depth == 0 else data)
    part = Part(hdrs, body)
    ctype = part.content_type
    if depth >= MAX_DEPTH:
        return part
    if ctype.startswith("multipart/"):
        boundary = part.param("boundary")
        if boundary:
            pieces = _pieces(body, b"--" + boundary.encode("utf-8", "replace"))
            for piece in pieces:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
                part.parts.append(parse(piece, depth=depth + 1, budget=budget))
    elif ctype == "message/rfc822" and budget[0] > 0:
        # A returned message: its headers are what a report is matched by; its body is not read.
        budget[0] -= 1
        inner_headers, inner_body = _split(part.decoded())
        part.parts.append(Part(inner_headers, inner_body))
    return part
