"""Unsubscribe tokens: who may be unsubscribed from what, signed so that nobody can forge or alter one.

    token = base64url(payload || tag)          (no padding; URL- and subject-safe)
    payload = version (1) | key id | tenant id | scope (0 usecase, 1 domain) | scope object id
              | use case id | issued-at (unix seconds) | address (UTF-8, the rest)
              every number an unsigned LEB128 varint, so a token for a short address is ~70 characters
    tag = HMAC-SHA256(key, "gateway-unsubscribe\\0" || payload), first 16 bytes (128 bits, RFC 2104 5)

The key id names one of the keys kept in the store (``unsubscribe_keys``): tokens are minted with the
newest key and verify with any key not retired, so keys rotate without breaking links already sent.
Pure functions: keys come in as a mapping {key id: secret}; nothing here reads the clock or the store.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import GatewayError

VERSION = 1
TAG_BYTES = 16
DOMAIN_SEPARATION = b"gateway-unsubscribe\0"
SCOPES = ("usecase", "domain")
# An address is at most 254 octets; the numbers at most ~40: anything longer is not ours.
MAX_TOKEN_CHARS = 512
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidToken(GatewayError):
    """Not a token we issued (malformed, altered, or signed by an unknown or retired key). The web
    pages answer 400 and change nothing; the reason is for the log only."""


@dataclass(frozen=True)
class Claim:
    """What a token says: unsubscribe ``address`` of tenant ``tenant_id`` at ``scope``."""

    key_id: int
    tenant_id: int
    scope: str          # 'usecase' | 'domain'
    scope_id: int       # usecases.id or domains.id
    usecase_id: int     # the use case whose mail carried the link
    issued_at: int      # unix seconds
    address: str

    @property
    def suppression_scope(self) -> tuple[str, int]:
        return (self.scope, self.scope_id)


def _varint(n: int) -> bytes:
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


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
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


def _tag(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, DOMAIN_SEPARATION + payload, hashlib.sha256).digest()[:TAG_BYTES]


def mint(claim: Claim, secret: bytes) -> str:
    """The token for ``claim``, signed with ``secret`` (the key ``claim.key_id`` names)."""
    if claim.scope not in SCOPES:
        raise ValueError(f"unknown unsubscribe scope {claim.scope!r}")
    payload = (bytes([VERSION]) + _varint(claim.key_id) + _varint(claim.tenant_id) + bytes([SCOPES.index(claim.scope)])
               + _varint(claim.scope_id) + _varint(claim.usecase_id) + _varint(claim.issued_at) + claim.address.encode("utf-8"))
    return base64.urlsafe_b64encode(payload + _tag(secret, payload)).rstrip(b"=").decode("ascii")


def verify(token: str, keys: Mapping[int, bytes]) -> Claim:
    """The claim a token carries, once its tag checks out under the key it names; InvalidToken otherwise."""
    if not token or len(token) > MAX_TOKEN_CHARS or not _B64URL.match(token) or len(token) % 4 == 1:
        raise InvalidToken("not a base64url token of a plausible length")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("not base64url") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
        raise InvalidToken("not in canonical form")  # stray bits in the last character: one token, one spelling
    if len(raw) < 1 + TAG_BYTES or raw[0] != VERSION:
        raise InvalidToken("unknown token version")
    payload, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    key_id, pos = _read_varint(payload, 1)
    secret = keys.get(key_id)
    if secret is None:
        raise InvalidToken(f"unknown or retired key id {key_id}")
    if not hmac.compare_digest(tag, _tag(secret, payload)):
        raise InvalidToken("bad signature")
    # Signed by us from here on: what follows was written by mint(), but parse defensively anyway.
    tenant_id, pos = _read_varint(payload, pos)
    if pos >= len(payload) or payload[pos] >= len(SCOPES):
        raise InvalidToken("bad scope")
    scope = SCOPES[payload[pos]]
    scope_id, pos = _read_varint(payload, pos + 1)
    usecase_id, pos = _read_varint(payload, pos)
    issued_at, pos = _read_varint(payload, pos)
    try:
        address = payload[pos:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidToken("address is not UTF-8") from exc
    if "@" not in address:
        raise InvalidToken("no address")
    return Claim(key_id, tenant_id, scope, scope_id, usecase_id, issued_at, address)
