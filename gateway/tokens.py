"""Signed tokens: a short payload and an HMAC tag, base64url, for links the gateway hands out.

    token   = base64url(payload || tag)        (no padding; URL-safe, one spelling per token)
    payload = version (1 byte) | key id (varint) | what the token's kind puts after them
    tag     = HMAC-SHA256(key, domain || payload), first 16 bytes (128 bits, RFC 2104 5)

Each kind of token (unsubscribe links, inbound attachment URLs) has its own ``domain`` string, so a
token of one kind never verifies as another even under the same key. The key id names one of the
keys kept in the store: tokens are minted with the newest key and verify with any key not retired,
so keys rotate without breaking links already sent. Numbers are unsigned LEB128 varints (``varint``,
``read_varint``). Pure functions: keys come in as a mapping {key id: secret}; nothing here reads the
clock or the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping

from .errors import GatewayError

TAG_BYTES = 16
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidToken(GatewayError):
    """Not a token we issued (malformed, altered, or signed by an unknown or retired key). Web
    endpoints refuse it and change nothing; the reason is for the log only."""


def varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("token numbers are never negative")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(the number at ``pos``, the position after it); InvalidToken when truncated or oversized."""
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise InvalidToken("truncated or oversized number")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return n, pos
        shift += 7


def _tag(secret: bytes, domain: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, domain + payload, hashlib.sha256).digest()[:TAG_BYTES]


def seal(payload: bytes, secret: bytes, domain: bytes) -> str:
    """The token for ``payload`` (which starts with its version byte and key id)."""
    return base64.urlsafe_b64encode(payload + _tag(secret, domain, payload)).rstrip(b"=").decode("ascii")


def unseal(token: str, keys: Mapping[int, bytes], domain: bytes, *, version: int, max_chars: int) -> tuple[int, bytes, int]:
    """(key id, payload, position after the key id) once the tag checks out under the key the
    token names; InvalidToken otherwise."""
    if not token or len(token) > max_chars or not _B64URL.match(token) or len(token) % 4 == 1:
        raise InvalidToken("not a base64url token of a plausible length")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise InvalidToken("not in canonical form")  # stray bits in the last character: one token, one spelling
    if len(raw) < 1 + TAG_BYTES or raw[0] != version:
        raise InvalidToken("unknown token version")
    payload, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    key_id, pos = read_varint(payload, 1)
    secret = keys.get(key_id)
    if secret is None:
        raise InvalidToken(f"unknown or retired key id {key_id}")
    if not hmac.compare_digest(tag, _tag(secret, domain, payload)):
        raise InvalidToken("bad signature")
    return key_id, payload, pos
