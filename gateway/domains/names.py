"""Domain names and sender addresses, normalised once at the boundary.

A domain is stored lower case, without the trailing dot, with Unicode labels converted to IDNA
A-labels (IDNA 2008 with UTS #46 mapping, as browsers and MTAs do). Sender addresses keep their
local part as given (RFC 5321: it is the receiving host's business) and get the same domain form.
"""

from __future__ import annotations

import ipaddress
import re

import idna

from ..errors import InvalidArgument
from ..crlf import has_line_breakers
from ..validate import shown

LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# RFC 5321 dot-atom local part; quoted local parts are legal but no sender we configure needs one.
ATEXT = r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]"
LOCAL_PART = re.compile(rf"^{ATEXT}+(\.{ATEXT}+)*$")


def normalise_domain(raw: str, *, reserved: tuple[str, ...] | list[str] = ()) -> str:
    """The stored form of a domain name, or InvalidArgument naming what is wrong."""
    if len(raw) > 1024:  # before IDNA work; a Unicode name is longer before it is encoded, so not 253 yet
        raise InvalidArgument(f"invalid domain name {shown(raw)}: longer than 253 characters")
    name = raw.strip()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidArgument("invalid domain name: empty")
    if has_line_breakers(name) or any(c in name for c in " \t@/\\"):
        raise InvalidArgument(f"invalid domain name {shown(raw)}: contains a space, '@', '/' or a control character")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise InvalidArgument(f"invalid domain name {shown(raw)}: an IP address is not a domain")
    try:
        name = idna.encode(name, uts46=True).decode("ascii") if not name.isascii() else name.lower()
    except idna.IDNAError as exc:
        raise InvalidArgument(f"invalid domain name {shown(raw)}: {exc}") from None
    labels = name.split(".")
    if len(labels) < 2:
        raise InvalidArgument(f"invalid domain name {shown(raw)}: needs at least two labels (like example.com)")
    if len(name) > 253:
        raise InvalidArgument(f"invalid domain name {shown(raw)}: longer than 253 characters")
    for label in labels:
        if not LABEL.match(label):
            raise InvalidArgument(
                f"invalid domain name {shown(raw)}: label {label!r} must be 1-63 letters, digits or '-', not starting or ending with '-'"
            )
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except idna.IDNAError as exc:
                raise InvalidArgument(f"invalid domain name {shown(raw)}: bad A-label {label!r}: {exc}") from None
    if labels[-1].isdigit():
        raise InvalidArgument(f"invalid domain name {shown(raw)}: the top-level label cannot be numeric")
    for suffix in reserved:
        suffix = suffix.strip(".").lower()
        if name == suffix or name.endswith("." + suffix):
            raise InvalidArgument(f"reserved domain name {name!r}: names under {suffix!r} cannot send mail (RFC 2606/6761)")
    return name


def is_within(name: str, domain: str) -> bool:
    """True when ``name`` is ``domain`` or one of its subdomains."""
    return name == domain or name.endswith("." + domain)


def normalise_address(raw: str) -> str:
    """A sender address: dot-atom local part, normalised domain."""
    if len(raw) > 1024:
        raise InvalidArgument(f"invalid address {shown(raw)}: longer than 254 characters")
    address = raw.strip()
    if has_line_breakers(address) or any(c in address for c in " \t<>"):
        raise InvalidArgument(f"invalid address {shown(raw)}: contains a space, '<', '>' or a control character")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise InvalidArgument(f"invalid address {shown(raw)}: expected local@domain")
    if len(local) > 64 or not LOCAL_PART.match(local):
        raise InvalidArgument(f"invalid address {shown(raw)}: the local part must be a dot-atom of at most 64 characters")
    try:
        domain = normalise_domain(domain)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid address {shown(raw)}: {exc.message}") from None
    address = f"{local}@{domain}"
    if len(address) > 254:
        raise InvalidArgument(f"invalid address {shown(raw)}: longer than 254 characters")
    return address


def display_domain(name: str) -> str:
    """The Unicode form of a stored name, for people (the A-label form stays the identity)."""
    try:
        return idna.decode(name)
    except idna.IDNAError:
        return name
