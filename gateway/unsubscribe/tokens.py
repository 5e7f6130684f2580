"""Unsubscribe tokens: who may be unsubscribed from what, signed so that nobody can forge or alter one.

    token = base64url(payload || tag)          (no padding; URL- and subject-safe)
    payload = version (1) | key id | tenant id | scope (0 usecase, 1 domain) | scope object id
              | use case id | issued-at (unix seconds) | address (UTF-8, the rest)
              every number an unsigned LEB128 varint, so a token for a short address is ~70 characters
    tag = HMAC-SHA256(key, "gateway-unsubscribe\\0" || payload), first 16 bytes (128 bits, RFC 2104 5)

The key id names one of the keys kept in the store (``unsubscribe_keys``): tokens are minted with the
newest key and verify with any key not retired, so keys rotate without breaking links already sent.
The signing (base64url, HMAC tag, varints) is gateway/tokens.py's, shared with the inbound
attachment URLs; the domain-separation string keeps the two kinds apart. Pure functions: keys come
in as a mapping {key id: secret}; nothing here reads the clock or the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..tokens import InvalidToken, read_varint, seal, unseal, varint

VERSION = 1
DOMAIN_SEPARATION = b"gateway-unsubscribe\0"
SCOPES = ("usecase", "domain")
# An address is at most 254 octets; the numbers at most ~40: anything longer is not ours.
MAX_TOKEN_CHARS = 512

__all__ = ["Claim", "InvalidToken", "mint", "verify", "SCOPES"]


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


def mint(claim: Claim, secret: bytes) -> str:
    """The token for ``claim``, signed with ``secret`` (the key ``claim.key_id`` names)."""
    if claim.scope not in SCOPES:
        raise ValueError(f"unknown unsubscribe scope {claim.scope!r}")
    payload = (bytes([VERSION]) + varint(claim.key_id) + varint(claim.tenant_id) + bytes([SCOPES.index(claim.scope)])
               + varint(claim.scope_id) + varint(claim.usecase_id) + varint(claim.issued_at) + claim.address.encode("utf-8"))
    return seal(payload, secret, DOMAIN_SEPARATION)


def verify(token: str, keys: Mapping[int, bytes]) -> Claim:
    """The claim a token carries, once its tag checks out under the key it names; InvalidToken otherwise."""
    key_id, payload, pos = unseal(token, keys, DOMAIN_SEPARATION, version=VERSION, max_chars=MAX_TOKEN_CHARS)
    # Signed by us from here on: what follows was written by mint(), but parse defensively anyway.
    tenant_id, pos = read_varint(payload, pos)
    if pos >= len(payload) or payload[pos] >= len(SCOPES):
        raise InvalidToken("bad scope")
    scope = SCOPES[payload[pos]]
    scope_id, pos = read_varint(payload, pos + 1)
    usecase_id, pos = read_varint(payload, pos)
    issued_at, pos = read_varint(payload, pos)
    try:
        address = payload[pos:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidToken("address is not UTF-8") from exc
    if "@" not in address:
        raise InvalidToken("no address")
    return Claim(key_id, tenant_id, scope, scope_id, usecase_id, issued_at, address)
