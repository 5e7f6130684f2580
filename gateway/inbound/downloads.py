"""Attachment URLs: a signed token names one attachment of one received message of one tenant, and
when the URL stops working.

    <web.public_url>/inbound/attachments/<token>
    token   = gateway/tokens.py's seal over
              version (1) | key id | tenant id | inbound row id | position | expires (unix seconds)
              every number a varint: ~40 characters
    domain  = "gateway-attachment\\0": an unsubscribe token never verifies here, nor the reverse

The keys are the gateway's link keys (``unsubscribe_keys``, through unsubscribe/links.py's
Keyring): the newest signs, every key not retired verifies, so rotation works as for unsubscribe
links. The URL is the authority (the tenant's application fetches it without a login), so it
expires; webhook payloads mint fresh ones for every POST. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..tokens import InvalidToken, read_varint, seal, unseal, varint

VERSION = 1
DOMAIN_SEPARATION = b"gateway-attachment\0"
MAX_TOKEN_CHARS = 128
PATH = "/inbound/attachments/{token}"

__all__ = ["Download", "InvalidToken", "mint", "verify", "url", "PATH"]


@dataclass(frozen=True)
class Download:
    key_id: int
    tenant_id: int
    row_id: int         # inbound_messages.id
    position: int       # inbound_attachments.position
    expires: int        # unix seconds


def mint(claim: Download, secret: bytes) -> str:
    payload = (bytes([VERSION]) + varint(claim.key_id) + varint(claim.tenant_id) + varint(claim.row_id)
               + varint(claim.position) + varint(claim.expires))
    return seal(payload, secret, DOMAIN_SEPARATION)


def verify(token: str, keys: Mapping[int, bytes]) -> Download:
    """The claim, once its tag checks out (expiry is the caller's to judge: it answers differently)."""
    key_id, payload, pos = unseal(token, keys, DOMAIN_SEPARATION, version=VERSION, max_chars=MAX_TOKEN_CHARS)
    tenant_id, pos = read_varint(payload, pos)
    row_id, pos = read_varint(payload, pos)
    position, pos = read_varint(payload, pos)
    expires, pos = read_varint(payload, pos)
    if pos != len(payload):
        raise InvalidToken("trailing bytes")
    return Download(key_id, tenant_id, row_id, position, expires)


def url(public_url: str, token: str) -> str:
    return public_url.rstrip("/") + PATH.format(token=token)
