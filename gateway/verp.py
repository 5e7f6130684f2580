"""VERP return paths: the envelope sender of every outbound copy names the message and the recipient,
and carries a MAC, so only the gateway can make one.

An asynchronous bounce (a DSN arriving hours later at the return path) then maps back to exactly one
queued message and one of its recipients, whatever the remote put (or failed to put) in the DSN body.

    return_path("bounces@example.com", "0h3k9x2a7mq4rt5b", 2, (3, secret))
        -> "bounces+0h3k9x2a7mq4rt5b.2.3.k4v7q2mz@example.com"
    decode("bounces+0h3k9x2a7mq4rt5b.2.3.k4v7q2mz@example.com")
        -> VerpTag(queue_id="0h3k9x2a7mq4rt5b", recipient_index=2, base="bounces@example.com", key_id=3, mac="k4v7q2mz")
    verify(tag, {3: secret}) -> True

Why the MAC: queue ids are time-ordered, so whoever receives one message from a tenant can guess the
tags of the copies sent next to it. Without a MAC a forged DSN to such a tag would suppress a
stranger's address. The MAC is HMAC-SHA256 over the tag and the base address with one of the
gateway's link keys (the keyring in the store, shared by every process and node, rotated with
``gateway unsubscribe-keys``), cut to 40 bits: guessing one takes about 2^39 forged bounces. Tags without
a MAC (sent by a version before this one) and tags whose MAC or key does not match are refused at
RCPT and never acted on (README "Bounces and complaints").

The recipient index is the 0-based position of the recipient in the message's recipient rows, ordered
by row id (the order the client gave them in RCPT TO). Queue ids are lower-case Crockford base32 and the
MAC lower-case RFC 4648 base32, so the tag is case-insensitive: some MTAs lower- or upper-case local
parts in DSNs, and decode copes.

Local parts stay within RFC 5321's 64 octets (base local part, '+', 16-character queue id, '.', index,
'.', key id, '.', 8-character MAC): a return path that would be longer is refused (ValueError) rather
than produced for a remote server to reject. ``decode`` lower-cases what it returns.

The delivery stage calls ``return_path(bounce_address(ctx["return_path_domain"]), queue_id, index, key)``
at send time; the MX's RCPT check and the inbound processor call ``decode`` and then ``verify``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

SEPARATOR = "+"
BOUNCE_LOCAL = "bounces"
MAX_LOCAL = 64

MAC_CHARS = 8   # 40 bits of base32
_TAG = re.compile(r"^(?P<qid>[0-9a-hjkmnp-tv-z]{8,26})\.(?P<index>\d{1,10})"
                  r"(?:\.(?P<kid>\d{1,9})\.(?P<mac>[a-z2-7]{%d}))?$" % MAC_CHARS)


@dataclass(frozen=True)
class VerpTag:
    queue_id: str
    recipient_index: int
    base: str  # the bounce address the tag was added to, e.g. bounces@example.com
    key_id: int | None = None   # the link key the MAC was made with (None: an unsigned tag, never trusted)
    mac: str = ""


def _mac(secret: bytes, queue_id: str, recipient_index: int, base: str) -> str:
    digest = hmac.new(secret, f"verp\0{queue_id}.{recipient_index}\0{base}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:5]).decode().lower()


def verify(tag: VerpTag, keys: Mapping[int, bytes]) -> bool:
    """True when ``tag`` carries a MAC made with one of ``keys`` (key id -> secret) for its own queue
    id, index and base address."""
    if tag.key_id is None or tag.key_id not in keys:
        return False
    return hmac.compare_digest(_mac(keys[tag.key_id], tag.queue_id, tag.recipient_index, tag.base), tag.mac)


def bounce_address(domain: str, local: str = BOUNCE_LOCAL) -> str:
    """The domain's bounce address, the base every VERP return path is built on."""
    return f"{local}@{domain.lower().rstrip('.')}"


def return_path(base: str, queue_id: str, recipient_index: int, key: tuple[int, bytes]) -> str:
    """The envelope sender for one recipient of one message: ``local+qid.index.kid.mac@domain``,
    signed with ``key`` (key id, secret)."""
    local, at, domain = base.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"bounce address must be local@domain, got {base!r}")
    if SEPARATOR in local:
        raise ValueError(f"bounce address local part must not contain {SEPARATOR!r}: {base!r}")
    if recipient_index < 0:
        raise ValueError("recipient index must be 0 or more")
    qid = queue_id.lower()
    if not _TAG.match(f"{qid}.{recipient_index}"):
        raise ValueError(f"not a queue id: {queue_id!r}")
    key_id, secret = key
    normal = f"{local.lower()}@{domain.lower()}"
    tagged = f"{local}{SEPARATOR}{qid}.{recipient_index}.{key_id}.{_mac(secret, qid, recipient_index, normal)}"
    if len(tagged) > MAX_LOCAL:
        raise ValueError(f"VERP local part would be {len(tagged)} octets, over {MAX_LOCAL}: shorten {local!r}")
    return f"{tagged}@{domain}"


def decode(address: str) -> VerpTag | None:
    """The tag in a return path, or None when the address carries none (or a malformed one)."""
    address = address.strip().strip("<>")
    local, at, domain = address.rpartition("@")
    if not at or SEPARATOR not in local:
        return None
    base_local, _, tag = local.partition(SEPARATOR)
    m = _TAG.match(tag.lower())
    if not m or not base_local:
        return None
    kid = m.group("kid")
    return VerpTag(queue_id=m.group("qid"), recipient_index=int(m.group("index")), base=f"{base_local.lower()}@{domain.lower()}",
                   key_id=int(kid) if kid is not None else None, mac=m.group("mac") or "")
