"""VERP return paths: the envelope sender of every outbound copy names the message and the recipient.

An asynchronous bounce (a DSN arriving hours later at the return path) then maps back to exactly one
queued message and one of its recipients, whatever the remote put (or failed to put) in the DSN body.

    return_path("bounces@example.com", "0h3k9x2a7mq4rt5b", 2)
        -> "bounces+0h3k9x2a7mq4rt5b.2@example.com"
    decode("bounces+0h3k9x2a7mq4rt5b.2@example.com")
        -> VerpTag(queue_id="0h3k9x2a7mq4rt5b", recipient_index=2, base="bounces@example.com")

The recipient index is the 0-based position of the recipient in the message's recipient rows, ordered
by row id (the order the client gave them in RCPT TO). Queue ids are lower-case Crockford base32, so
the tag is case-insensitive: some MTAs lower- or upper-case local parts in DSNs, and decode copes.

Local parts stay within RFC 5321's 64 octets (base local part, '+', 16-character queue id, '.',
index): a return path that would be longer is refused (ValueError) rather than produced for a remote
server to reject. ``decode`` lower-cases what it returns.

The delivery stage calls ``return_path(bounce_address(ctx["return_path_domain"]), queue_id, index)``
at send time (the use case context names the return-path domain, e.g. bounces.example.com); the
inbound classifier calls ``decode`` on a DSN's envelope recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEPARATOR = "+"
BOUNCE_LOCAL = "bounces"
MAX_LOCAL = 64

_TAG = re.compile(r"^(?P<qid>[0-9a-hjkmnp-tv-z]{8,26})\.(?P<index>\d{1,10})$")


@dataclass(frozen=True)
class VerpTag:
    queue_id: str
    recipient_index: int
    base: str  # the bounce address the tag was added to, e.g. bounces@example.com


def bounce_address(domain: str, local: str = BOUNCE_LOCAL) -> str:
    """The domain's bounce address, the base every VERP return path is built on."""
    return f"{local}@{domain.lower().rstrip('.')}"


def return_path(base: str, queue_id: str, recipient_index: int) -> str:
    """The envelope sender for one recipient of one message: ``local+qid.index@domain``."""
    local, at, domain = base.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"bounce address must be local@domain, got {base!r}")
    if SEPARATOR in local:
        raise ValueError(f"bounce address local part must not contain {SEPARATOR!r}: {base!r}")
    if recipient_index < 0:
        raise ValueError("recipient index must be 0 or more")
    qid = queue_id.lower()
    tagged = f"{local}{SEPARATOR}{qid}.{recipient_index}"
    if not _TAG.match(f"{qid}.{recipient_index}"):
        raise ValueError(f"not a queue id: {queue_id!r}")
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
    return VerpTag(queue_id=m.group("qid"), recipient_index=int(m.group("index")), base=f"{base_local.lower()}@{domain.lower()}")
