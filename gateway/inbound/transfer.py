"""Content-Transfer-Encoding: a MIME leaf's body bytes as they travel, and the bytes they stand for.

A ``Payload`` is a view into the received message (no copy) plus its transfer encoding; it decodes
in bounded chunks on demand, so a 25 MB attachment is never held decoded and encoded at once: the
file store writes it chunk by chunk (``AttachmentFiles.put(payload.chunks())``).

Decoding never raises. Broken input (characters outside the base64 alphabet, missing padding, data
after the padding, an unknown encoding) decodes as far as it can and says what was wrong in
``defects``, as a mail client shows a damaged attachment instead of losing it.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterator

# Encoded bytes decoded per step: big enough that the per-chunk overhead vanishes, small enough that
# peak memory stays a few MiB whatever the part's size.
CHUNK = 1 << 20

_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_DELETE = bytes(sorted(set(range(256)) - set(_B64_ALPHABET)))
_WHITESPACE = b" \t\r\n"
# What a base64 body may hold besides the alphabet without that being a defect.
_B64_EXPECTED = _B64_ALPHABET + b"=" + _WHITESPACE
IDENTITY = ("7bit", "8bit", "binary", "")


class Payload:
    """The body of one MIME leaf: ``source`` as received, decoded by ``encoding`` when read."""

    __slots__ = ("source", "encoding")

    def __init__(self, source: bytes | memoryview, encoding: str):
        self.source = source
        self.encoding = encoding.strip().lower()

    def chunks(self, defects: list[str] | None = None) -> Iterator[bytes]:
        """The decoded bytes in chunks of at most about ``CHUNK``; problems are appended to ``defects``."""
        sink = [] if defects is None else defects
        if self.encoding == "base64":
            yield from _base64(self.source, sink)
        elif self.encoding == "quoted-printable":
            yield from _quoted_printable(self.source)
        else:
            if self.encoding not in IDENTITY:
                sink.append(f"unknown Content-Transfer-Encoding {self.encoding[:40]!r}, kept as sent")
            for start in range(0, len(self.source), CHUNK):
                yield bytes(self.source[start:start + CHUNK])

    def read(self, defects: list[str] | None = None) -> bytes:
        return b"".join(self.chunks(defects))


def _line_chunks(source: bytes | memoryview) -> Iterator[bytes | memoryview]:
    """``source`` cut into pieces of about ``CHUNK`` bytes that end at a line end (quoted-printable's
    soft line breaks and base64's groups must not be cut in the middle of a line)."""
    view = memoryview(source)
    start, n = 0, len(view)
    while start < n:
        end = min(start + CHUNK, n)
        if end < n:
            newline = bytes(view[end:min(end + 4096, n)]).find(b"\n")
            end = n if newline < 0 else end + newline + 1
        yield view[start:end]
        start = end


def _base64(source: bytes | memoryview, defects: list[str]) -> Iterator[bytes]:
    carry = b""
    stray = padded = after_padding = False
    for piece in _line_chunks(source):
        raw = bytes(piece)
        stray = stray or bool(raw.translate(None, _B64_EXPECTED))
        segments = raw.split(b"=")
        for i, segment in enumerate(segments):
            clean = segment.translate(None, _B64_DELETE)
            if clean and padded:
                after_padding, padded = True, False  # two encodings glued together: decode both
            data = carry + clean
            if i < len(segments) - 1:  # '=' follows: this encoding ends here
                carry, padded = b"", True
                if data:
                    yield from _final(data, defects, padded=True)
            else:
                usable = len(data) - len(data) % 4
                carry = data[usable:]
                if usable:
                    yield binascii.a2b_base64(data[:usable])
    if stray:
        defects.append("base64: characters outside the alphabet ignored")
    if after_padding:
        defects.append("base64: data after the padding")
    if carry:
        yield from _final(carry, defects, padded=False)


def _final(data: bytes, defects: list[str], *, padded: bool) -> Iterator[bytes]:
    """The last group of one encoding (``data`` has no '='), completed with the padding it needs."""
    rest = len(data) % 4
    if rest == 1:
        defects.append("base64: truncated, a final incomplete character dropped")
        data, rest = data[:-1], 0
    elif rest and not padded:
        defects.append("base64: missing padding")
    if data:
        yield binascii.a2b_base64(data + b"=" * ((4 - rest) % 4))


def _quoted_printable(source: bytes | memoryview) -> Iterator[bytes]:
    # binascii keeps an '=' that starts no valid escape as it is, which is what clients show.
    for piece in _line_chunks(source):
        yield binascii.a2b_qp(bytes(piece))
