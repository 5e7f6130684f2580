"""Submission policy: small pure predicates on plain values, each raising one ``SMTPError``.

Every check names why it fired in the error's private ``reason`` (logged), while the client gets a
short public text with the right code. The listener calls them at the SMTP step where RFC 5321 wants
the answer: account and sender at MAIL, recipients at RCPT, content at the final dot.

    code  enhanced  when
    501   5.5.2     CR, LF or NUL inside a command argument
    553   5.1.7     malformed sender address (RFC 5321 grammar, RFC 6531 with SMTPUTF8, lengths)
    553   5.1.3     malformed recipient address
    553   5.6.7     non-ASCII address in a transaction that did not declare SMTPUTF8
    553   5.7.1     MAIL FROM or header From not one of the use case's senders (nor one of its
                    channel addresses); a channel address of another use case
    550   5.7.1     use case / tenant / outbound disabled, domain not verified or failing;
                    sender a disabled or receive-only (direction inbound) channel address
    451   4.7.0     use case's rate limit reached
    452   4.5.3     tenant's monthly quota reached; recipients beyond the limit
    552   5.3.4     SIZE or message (or its header) over the limit
    550   5.6.0     bare CR or LF, NUL in the message; no From header; a field RFC 5322 allows once
                    given twice; a field we read that is not UTF-8 (gateway/headers.py)
    554   5.4.6     too many Received headers (a loop)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import idna

from ..crlf import has_line_breakers, only_crlf
from ..errors import InvalidArgument, SMTPError
from ..numbers import ascii_number  # protocol.py reads it as policy.ascii_number
from ..suppression import normalise_address

# RFC 5321 4.1.2, extended by RFC 6531 3.3: atext and qtext also take any non-ASCII character
# (UTF8-non-ascii; we leave out C1 controls and Unicode white space), sub-domain takes U-labels
# (checked through their A-label form, IDNA 2008 with UTS #46 mapping as gateway/domains/names.py).
_UTF8 = r"[^\x00-\x9f\s\ufeff]"
_ATEXT = rf"(?:[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]|{_UTF8})"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|{_UTF8}|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
LOCAL_PART = re.compile(rf"^(?:{_DOT_STRING}|{_QUOTED})$")
DOMAIN = re.compile(rf"^(?:{_DOMAIN}|{_LITERAL})$")

MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_PATH = 254
NEEDS_SMTPUTF8 = "non-ASCII address without SMTPUTF8"


def size_param(options: list[str]) -> int | None:
    """The SIZE= value among MAIL FROM's parameters (RFC 1870), or None when absent or not a number."""
    for opt in options:
        key, _, value = opt.partition("=")
        if key.upper() == "SIZE":
            return ascii_number(value)
    return None



def check_command_argument(arg: str | bytes | None) -> None:
    """Nothing but the line's own CRLF may end a command: no CR, LF or NUL inside it (smuggling)."""
    if not arg:
        return
    if has_line_breakers(arg):
        raise SMTPError(501, "5.5.2", "CR, LF and NUL are not allowed in commands", "control character in command argument")


def mailbox_problem(address: str, *, utf8: bool = False) -> str | None:
    """Why ``address`` is not an RFC 5321 Mailbox (RFC 6531 when ``utf8``), or None when it is one.

    Lengths are octets of the UTF-8 form, the domain's in its A-label form (what DNS and the
    remote's limits see)."""
    if has_line_breakers(address):
        return "CR, LF or NUL in address"
    if not address.isascii() and not utf8:
        return NEEDS_SMTPUTF8
    if len(address.encode("utf-8")) > MAX_PATH:
        return f"address longer than {MAX_PATH} octets"
    local, at, domain = address.rpartition("@")
    if not at:
        return "not an RFC 5321 mailbox"
    if len(local.encode("utf-8")) > MAX_LOCAL:
        return f"local part longer than {MAX_LOCAL} octets"
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            return "domain is not a valid internationalised domain name"
    if len(domain) > MAX_DOMAIN:
        return f"domain longer than {MAX_DOMAIN} octets"
    if not (LOCAL_PART.match(local) and DOMAIN.match(domain)):
        return "not an RFC 5321 mailbox"
    return None


def _check_syntax(address: str, utf8: bool, what: str, enhanced: str, public: str) -> None:
    problem = mailbox_problem(address, utf8=utf8)
    if problem == NEEDS_SMTPUTF8:
        raise SMTPError(553, "5.6.7", "Must declare SMTPUTF8 to send a non-ASCII address", f"{what} {address!r}: {problem}")
    if problem:
        raise SMTPError(553, enhanced, public, f"{what} {address!r}: {problem}")


def check_sender_syntax(address: str, *, utf8: bool = False) -> None:
    _check_syntax(address, utf8, "MAIL FROM", "5.1.7", "Sender address is not valid")


def check_recipient_syntax(address: str, *, utf8: bool = False) -> None:
    _check_syntax(address, utf8, "RCPT TO", "5.1.3", "Recipient address is not valid")


def normalise(address: str) -> str:
    return address.strip().lower()


def sender_allowed(address: str, senders: Iterable[str]) -> bool:
    """``address`` is one of ``senders`` (case-insensitive); an entry '@domain' allows the whole domain."""
    addr = normalise(address)
    domain = "@" + addr.rpartition("@")[2]
    for s in senders:
        s = normalise(s)
        if s == addr or (s.startswith("@") and s == domain):
            return True
    return False


def check_envelope_sender(address: str, senders: Iterable[str]) -> None:
    if not sender_allowed(address, senders):
        raise SMTPError(553, "5.7.1", "Sender address not allowed for this login", f"MAIL FROM {address} not in the use case's senders")


def check_header_senders(addresses: list[str], senders: Iterable[str]) -> None:
    """Every address in the From header is one of the senders; exactly one From header is present."""
    if not addresses:
        raise SMTPError(550, "5.6.0", "Message must have one From header with an address", "no From address")
    senders = list(senders)
    for a in addresses:
        if not sender_allowed(a, senders):
            raise SMTPError(553, "5.7.1", "From header address not allowed for this login", f"header From {a} not in the use case's senders")


def address_key(address: str) -> str:
    """The one spelling channel addresses are stored in (suppression.normalise_address)."""
    try:
        return normalise_address(address)
    except InvalidArgument:
        return normalise(address)


def channel_sender(address: str, ctx: Mapping[str, Any], what: str = "MAIL FROM") -> dict[str, Any] | None:
    """The channel address record when ``address`` is one of the tenant's (``ctx['addresses']``, read
    with the cached context) and it may send through this use case; None when it is no channel
    address. A disabled one, a receive-only one and one of another use case are refused."""
    record = (ctx.get("addresses") or {}).get(address_key(address))
    if record is None:
        return None
    if not record["enabled"]:
        raise SMTPError(550, "5.7.1", "Sender address disabled", f"{what} {address}: channel address disabled")
    if record["direction"] == "inbound":
        raise SMTPError(550, "5.7.1", "Sender address does not send (receive only)", f"{what} {address}: channel address is inbound only")
    usecase_id = ctx["usecase_id"] if "usecase_id" in ctx else ctx.get("id")
    if record["usecase_id"] != usecase_id:
        # Its copy, footer and threads belong to its own use case: it sends through that one only.
        raise SMTPError(553, "5.7.1", "Sender address not allowed for this login", f"{what} {address}: channel address of another use case")
    return dict(record)


def check_sender(address: str, ctx: Mapping[str, Any]) -> dict[str, Any] | None:
    """MAIL FROM: a channel address that may send (its record returned), or one of the senders."""
    record = channel_sender(address, ctx)
    if record is None:
        check_envelope_sender(address, ctx.get("senders") or ())
    return record


def check_from(addresses: list[str], ctx: Mapping[str, Any]) -> dict[str, Any] | None:
    """Header From as ``check_header_senders``, channel addresses allowed; the first one's record."""
    if not addresses:
        raise SMTPError(550, "5.6.0", "Message must have one From header with an address", "no From address")
    found = None
    for a in addresses:
        record = channel_sender(a, ctx, "header From")
        if record is None and not sender_allowed(a, ctx.get("senders") or ()):
            raise SMTPError(553, "5.7.1", "From header address not allowed for this login", f"header From {a} not in the use case's senders")
        found = found or record
    return found


def check_account(ctx: Mapping[str, Any]) -> None:
    """The use case may send now: enabled, tenant and its outbound enabled, domain verified."""
    if not ctx.get("enabled", True):
        raise SMTPError(550, "5.7.1", "Sending is disabled for this login", f"use case {ctx.get('name')} disabled")
    if not ctx.get("tenant_enabled", True):
        raise SMTPError(550, "5.7.1", "Sending is disabled for this account", f"tenant {ctx.get('tenant')} disabled")
    if not ctx.get("outbound_enabled", True):
        raise SMTPError(550, "5.7.1", "Outbound mail is disabled for this account", f"tenant {ctx.get('tenant')} outbound disabled")
    state = ctx.get("domain_state")
    if state != "verified":
        raise SMTPError(550, "5.7.1", "Sending domain is not verified", f"domain {ctx.get('domain')} is {state}")


def check_size(declared: int | None, limit: int) -> None:
    if declared is not None and declared > limit:
        raise SMTPError(552, "5.3.4", "Message size exceeds fixed maximum message size", f"SIZE={declared} over {limit}")


def check_recipient_count(have: int, limit: int) -> None:
    """Called before adding one more recipient: RFC 5321 4.5.3.1.8 says 452 for the excess."""
    if have >= limit:
        raise SMTPError(452, "4.5.3", "Too many recipients", f"more than {limit} recipients")


def check_quota(used: int, quota: int) -> None:
    if quota and used >= quota:
        raise SMTPError(452, "4.5.3", "Monthly message quota reached", f"{used} of {quota} messages this month")


def rate_limited(usecase: str) -> SMTPError:
    return SMTPError(451, "4.7.0", "Rate limit exceeded, try again later", f"use case {usecase} over its rate limit")


def check_line_endings(data: bytes) -> None:
    """Only CRLF line endings and no NUL: bare CR or LF is how SMTP smuggling hides a second message."""
    if not only_crlf(data):
        raise SMTPError(550, "5.6.0", "Message contains bare CR or LF line endings", "bare CR or LF in DATA")
    if b"\x00" in data:
        raise SMTPError(550, "5.6.0", "Message contains NUL characters", "NUL in DATA")


def check_received_count(count: int, limit: int) -> None:
    if count > limit:
        raise SMTPError(554, "5.4.6", "Too many Received headers: mail loop detected", f"{count} Received headers, limit {limit}")


def message_too_big(limit: int) -> SMTPError:
    return SMTPError(552, "5.3.4", "Message size exceeds fixed maximum message size", f"message over {limit} bytes")


