"""Who a received message is really from, when a mailbox forwarded it to us (pure).

A tenant that points its own mailbox (support@acme.example at Gmail, Microsoft 365, Exchange or a
Postfix server) at a gateway address by auto-forwarding hands us mail whose envelope sender is the
forwarder's (rewritten so SPF passes at the forwarder) and whose From is the customer's, unchanged.
``attribute`` says who wrote it (``sender``) and which mailbox forwarded it (``forwarded_by``).

Signals, the first that is present wins (nearest the original author of the forward first):

    Resent-From / Resent-Sender    a "redirect"/"bounce" by a client or server (RFC 5322 3.6.6)
    X-Forwarded-For                Gmail auto-forward: "<forwarding mailbox> <new recipient>"
    X-MS-Exchange-Inbox-Rules-Loop Microsoft 365 and Exchange inbox-rule forwards and redirects
    X-MS-Exchange-ForwardingLoop   Microsoft 365 mailbox forwarding: "<mailbox>;<tenant id>"
    envelope user+caf_=...@gmail   Gmail's forwarding envelope sender
    envelope user+SRS=...@domain   Microsoft 365's SRS envelope sender
    envelope SRS0= / SRS1=         postsrsd and other Shevek-format SRS (forwarder from
                                   Delivered-To or the Received "for" clause)

``sender`` is the From address (auto-forwarding leaves From alone); without a usable From it is
the envelope sender with SRS undone. These are claims by whoever sent the message: they name
the forwarder for the tenant's application, they authorise nothing (SRS hashes are not checked:
the forwarder's secret is not ours). A message without a signal has ``forwarded_by`` ''.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass

SRS_SEPARATORS = "=+-"
ADDRESS = re.compile(r"^[^\s@<>()\[\],;:\"]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")
MAX_SRS_DEPTH = 5
_headers = email.parser.BytesHeaderParser(policy=email.policy.compat32)


@dataclass(frozen=True)
class Origin:
    sender: str             # the original sender (From's address; else the envelope sender, SRS undone)
    forwarded_by: str = ""  # the mailbox that forwarded it to us, '' when not forwarded (or not named)
    envelope_sender: str = ""  # MAIL FROM with SRS, Gmail's caf_ and Microsoft's +SRS= undone
    signal: str = ""        # what said it was forwarded: resent, gmail, exchange, srs, ''


def srs_decode(address: str) -> str | None:
    """The original address an SRS0/SRS1 (Shevek format) address stands for, or None.

    SRS0=HHH=TT=orig.domain=local@forwarder   -> local@orig.domain
    SRS1=HHH=first.forwarder==HHH=TT=orig.domain=local@second.forwarder
        -> SRS0=HHH=TT=orig.domain=local@first.forwarder -> local@orig.domain
    """
    current = address.strip().strip("<>")
    for _ in range(MAX_SRS_DEPTH):
        local, at, host = current.rpartition("@")
        if not at or len(local) < 5 or local[:4].upper() not in ("SRS0", "SRS1") or local[4] not in SRS_SEPARATORS:
            return None
        rest = local[5:]
        if local[:4].upper() == "SRS0":
            parts = rest.split("=", 3)
            if len(parts) != 4 or not all(parts[2:]):
                return None
            return f"{parts[3]}@{parts[2]}"
        # SRS1: hash=first-forwarder=<separator><the SRS0 rest>
        parts = rest.split("=", 2)
        if len(parts) != 3 or not parts[1] or not parts[2] or parts[2][0] not in SRS_SEPARATORS:
            return None
        current = f"SRS0{parts[2]}@{parts[1]}"
    return None


def envelope_original(mail_from: str) -> tuple[str, str, str]:
    """(original envelope sender, forwarding mailbox or '', signal) for a MAIL FROM address."""
    address = mail_from.strip().strip("<>")
    local, _, domain = address.rpartition("@")
    decoded = srs_decode(address)
    if decoded:
        return decoded, "", "srs"
    m = re.fullmatch(r"(.+)\+caf_=(.+)=(.+)", local)
    if m and domain:
        # Gmail (and Workspace domains): <mailbox>+caf_=<new local>=<new domain>@<mailbox domain>;
        # the original sender is not in it
        return "", f"{m.group(1)}@{domain}", "gmail"
    m = re.fullmatch(r"(.+)\+SRS=[^=]+=[^=]+=([^=]+)=(.+)", local, re.I)
    if m:
        return f"{m.group(3)}@{m.group(2)}", f"{m.group(1)}@{domain}", "srs"
    return address, "", ""


def _addresses(values: Iterable[str]) -> list[str]:
    found = []
    for _, address in email.utils.getaddresses([v for v in values if v]):
        address = _clean(address)
        if address and address not in found:
            found.append(address)
    return found


def _clean(address: str) -> str:
    address = address.strip().strip("<>")
    if not ADDRESS.match(address) or len(address) > 254:
        return ""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def attribute(message: bytes, *, mail_from: str, recipients: Iterable[str] = ()) -> Origin:
    """See the module docstring. ``recipients`` are the envelope recipients (our addresses): a
    forwarder is never one of them."""
    head = _headers.parsebytes(message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0] + b"\n")
    ours = {a.lower() for a in (r.strip().strip("<>") for r in recipients) if a}

    def other(addresses: list[str]) -> str:
        return next((a for a in addresses if a.lower() not in ours), "")

    original, envelope_forwarder, envelope_signal = envelope_original(mail_from)
    from_addresses = _addresses(str(v) for v in head.get_all("From", []))
    sender = from_addresses[0] if from_addresses else _clean(original) or original

    resent = _addresses([str(head.get("Resent-From", "")) or str(head.get("Resent-Sender", ""))])
    if other(resent):
        return Origin(sender, other(resent), original, "resent")
    gmail = _addresses(a for v in head.get_all("X-Forwarded-For", []) for a in str(v).split())
    if other(gmail):
        return Origin(sender, other(gmail), original, "gmail")
    exchange = _addresses(str(v).split(";")[0] for name in ("X-MS-Exchange-Inbox-Rules-Loop", "X-MS-Exchange-ForwardingLoop")
                          for v in head.get_all(name, []))
    if other(exchange):
        return Origin(sender, other(exchange), original, "exchange")
    if envelope_signal:
        forwarder = _clean(envelope_forwarder) if envelope_forwarder else ""
        if not forwarder:
            named = _addresses(str(v) for v in head.get_all("Delivered-To", []))
            named += _addresses(m.group(1) for v in head.get_all("Received", [])
                                for m in [re.search(r"\bfor\s+<([^>\s]+)>", str(v))] if m)
            forwarder = other(named)
        return Origin(sender, forwarder, original, envelope_signal)
    return Origin(sender, "", original, "")
