"""Who may receive here: the one definition, used at RCPT by the MX listener and by the processor
to find the tenant, use case and channel address of a spooled row.

    resolve(store, address, rules)   parse -> one store read (store.recipients.facts) -> decide
    decide(parsed, facts, rules)     pure: a Target, or an SMTPError carrying the reply

What is accepted (everything else is refused at RCPT, so nothing is ever accepted and then bounced):

    kind         address                                           tenant / use case
    address      a channel address, enabled, direction inbound      its own
                 or both, on a receiving domain (below)
    postmaster   postmaster@ a receiving domain (RFC 5321 4.5.1)    the domain's tenant, the catch-all use case
                 (unless a channel address of that name exists)     (None when there is none)
    catchall     any other local part of a receiving domain whose   the domain's tenant, catchall_usecase_id
                 catchall_usecase_id is set
    return_path  bounces@ or bounces+TAG@ (VERP, gateway/verp.py)   the tenant of <domain>; spooled with
                 of <return_path_prefix>.<domain>                   tenant None (the gateway's own address)
    unsubscribe  unsubscribe@ / unsubscribe+...@ of a return-path   as return_path; tenant None on the mailto domain
                 domain or of unsubscribe.mailto_domain
    feedback     fbl@, fbl+...@ or abuse@ of a return-path domain   as return_path (ARF complaints)
    postmaster   postmaster@ of a return-path domain                the tenant of <domain>
    postmaster   postmaster@ of mailto_domain or a hostname of      None (the operator's)
                 the gateway itself (Rules.hostnames)

A *receiving domain* is a tenant domain that is verified (or failing: it was verified and one of its
records fails now; mail for it is not refused for that) with ``inbound_enabled``, of an enabled
tenant. Return-path domains receive whether or not inbound is on: bounces and complaints of what
we sent must always come back.

Refusals:

    550 5.7.1  Relaying denied          a domain that does not receive here (foreign, pending, inbound off),
                                        a domain literal, and every relay trick: percent hack (u%other@ours),
                                        bang path (other!u@ours), source route (@a,@b:u@ours), a quoted local
                                        part holding @, % or !
    550 5.1.1  No such user here        a receiving (or return-path) domain, unknown local part, no catch-all
    550 5.2.1  Mailbox disabled         a disabled channel address, or one of a disabled tenant (no catch-all
                                        fallback: the operator switched that address off)
    550 5.2.1  Mailbox does not         a channel address with direction outbound (send-only)
               receive mail

Addresses are matched case-insensitively, in ``suppression.normalise_address``'s spelling (the one
channel_addresses.address is stored in), the domain also as its IDNA A-label. A quoted local part
that needs no quotes ("jdoe"@ours) is the same mailbox as jdoe@ours (RFC 5321 4.1.2).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import idna

from .. import verp
from ..errors import InvalidArgument, SMTPError
from ..submission.ratelimit import TtlCache
from ..suppression import normalise_address
from ..unsubscribe.mailto import LOCAL_PART as UNSUBSCRIBE_LOCAL

KINDS = ("address", "catchall", "return_path", "feedback", "unsubscribe", "postmaster")
OWN_KINDS = frozenset({"return_path", "feedback", "unsubscribe"})   # spooled with tenant None
RECEIVING_STATES = frozenset({"verified", "failing"})
POSTMASTER = "postmaster"
FEEDBACK_LOCALS = frozenset({"fbl", "abuse"})

_ATOM = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_ROUTING = frozenset("@%!")


def relaying_denied(reason: str) -> SMTPError:
    return SMTPError(550, "5.7.1", "Relaying denied", reason)


def unknown_user(reason: str) -> SMTPError:
    return SMTPError(550, "5.1.1", "No such user here", reason)


def mailbox_disabled(reason: str) -> SMTPError:
    return SMTPError(550, "5.2.1", "Mailbox disabled, not accepting messages", reason)


def send_only(reason: str) -> SMTPError:
    return SMTPError(550, "5.2.1", "Mailbox does not receive mail", reason)


@dataclass(frozen=True, kw_only=True)
class Rules:
    """The configuration the rules read (``from_config`` takes it from the daemon's Config)."""
    return_path_prefix: str = "bounces"              # domains.return_path_prefix
    mailto_domain: str = ""                          # unsubscribe.mailto_domain
    hostnames: tuple[str, ...] = ()                  # the gateway's own names: postmaster@ them is accepted

    @classmethod
    def from_config(cls, config: Any) -> "Rules":
        names = {config.daemon.hostname, config.domains.mx_hostname}
        return cls(return_path_prefix=config.domains.return_path_prefix,
                   mailto_domain=config.unsubscribe.mailto_domain.lower().rstrip("."),
                   hostnames=tuple(sorted(n.lower().rstrip(".") for n in names if n)))


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where one accepted recipient goes."""
    kind: str                       # one of KINDS
    address: str                    # the recipient in the one spelling
    tenant_id: int | None = None    # None: nobody's but the gateway's (postmaster of its own names, mailto domain)
    domain_id: int | None = None    # the tenant domain (for return-path kinds: the domain it is the return path of)
    usecase_id: int | None = None
    address_id: int | None = None
    dmarc_reject: bool = False      # the tenant refuses DMARC-reject failures at the final dot (tenants.dmarc_reject)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def spool_tenant(self) -> int | None:
        """The tenant_id of the spooled row this recipient goes into (None for the gateway's own addresses)."""
        return None if self.kind in OWN_KINDS else self.tenant_id


@dataclass(frozen=True)
class Parsed:
    local: str                      # lower case; unquoted when the quotes were not needed
    domain: str                     # lower case A-label, no trailing dot
    candidates: tuple[str, ...] = field(default=())   # domain names to read: itself, and its base if a return path

    @property
    def address(self) -> str:
        return f"{self.local}@{self.domain}"


class _Store(Protocol):
    recipients: Any


def parse(address: str, rules: Rules) -> Parsed:
    """The recipient split and checked for relay tricks; SMTPError (550 5.7.1) when it is one."""
    raw = address.strip()
    if raw.startswith("<") and raw.endswith(">"):
        raw = raw[1:-1].strip()
    if raw.startswith("@"):
        raise relaying_denied(f"source route in {address[:100]!r}")
    local, at, domain = raw.rpartition("@")
    if not at or not local or not domain:
        raise SMTPError(501, "5.1.3", "Syntax error in recipient address", f"not local@domain: {address[:100]!r}")
    if domain.startswith("["):
        raise relaying_denied(f"domain literal {domain[:60]!r}")
    local = _local(local, address)
    try:
        domain = normalise_address(f"x@{domain}").partition("@")[2]
        if not domain.isascii():
            domain = idna.encode(domain, uts46=True).decode("ascii")
    except (InvalidArgument, idna.IDNAError, UnicodeError, ValueError):
        raise relaying_denied(f"domain {domain[:60]!r} is not a domain name") from None
    candidates = [domain]
    prefix = rules.return_path_prefix.lower() + "."
    if domain.startswith(prefix) and len(domain) > len(prefix):
        candidates.append(domain[len(prefix):])
    return Parsed(local, domain, tuple(candidates))


def _local(local: str, address: str) -> str:
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _ROUTING & set(inner):
            raise relaying_denied(f"quoted local part with a routing character: {address[:100]!r}")
        inner = inner.lower()
        return inner if _ATOM.match(inner) else '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if "%" in local:
        raise relaying_denied(f"percent hack: {address[:100]!r}")
    if "!" in local:
        raise relaying_denied(f"bang path: {address[:100]!r}")
    if "@" in local or '"' in local:
        raise relaying_denied(f"routing in the local part: {address[:100]!r}")
    return local.lower()


def _base(local: str) -> str:
    return local.split(verp.SEPARATOR, 1)[0]


def decide(parsed: Parsed, facts: dict[str, Any], rules: Rules) -> Target:
    """Pure: the Target for ``parsed`` given the store's facts, or SMTPError with the reply."""
    local, domain, address = parsed.local, parsed.domain, parsed.address
    domains = facts.get("domains") or {}
    row = domains.get(domain)
    if row is not None:
        return _tenant_domain(parsed, row, facts.get("address"))
    if len(parsed.candidates) > 1:
        base = domains.get(parsed.candidates[1])
        if base is not None and base["state"] in RECEIVING_STATES:
            return _return_path(parsed, base)
    if rules.mailto_domain and domain == rules.mailto_domain:
        if _base(local) == UNSUBSCRIBE_LOCAL:
            return Target(kind="unsubscribe", address=address)
        if local == POSTMASTER:
            return Target(kind="postmaster", address=address)
        raise unknown_user(f"{address}: not an address of the mailto domain")
    if domain in rules.hostnames:
        if local == POSTMASTER:
            return Target(kind="postmaster", address=address)
        raise unknown_user(f"{address}: only postmaster@ the gateway's own name receives")
    raise relaying_denied(f"{domain} is not a domain received here")


def _tenant_domain(parsed: Parsed, row: dict[str, Any], found: dict[str, Any] | None) -> Target:
    address = parsed.address
    if row["state"] not in RECEIVING_STATES:
        raise relaying_denied(f"{row['name']} is {row['state']}")
    if not row["inbound_enabled"]:
        raise relaying_denied(f"{row['name']}: inbound is off")
    common = {"address": address, "tenant_id": row["tenant_id"], "domain_id": row["id"],
              "dmarc_reject": bool(row.get("dmarc_reject"))}
    if found is not None and found["tenant_id"] == row["tenant_id"]:
        if not row["tenant_enabled"]:
            raise mailbox_disabled(f"{address}: tenant {row['tenant_id']} disabled")
        if not found["enabled"]:
            raise mailbox_disabled(f"{address}: channel address {found['id']} disabled")
        if found["direction"] not in ("inbound", "both"):
            raise send_only(f"{address}: channel address {found['id']} is {found['direction']}")
        return Target(kind="address", usecase_id=found["usecase_id"], address_id=found["id"], **common)
    if not row["tenant_enabled"]:
        raise mailbox_disabled(f"{address}: tenant {row['tenant_id']} disabled")
    if parsed.local == POSTMASTER:
        return Target(kind="postmaster", usecase_id=row["catchall_usecase_id"], **common)
    if row["catchall_usecase_id"] is not None:
        return Target(kind="catchall", usecase_id=row["catchall_usecase_id"], **common)
    raise unknown_user(f"{address}: no such channel address, no catch-all")


def _return_path(parsed: Parsed, base: dict[str, Any]) -> Target:
    local = _base(parsed.local)
    common = {"address": parsed.address, "tenant_id": base["tenant_id"], "domain_id": base["id"]}
    if local == verp.BOUNCE_LOCAL:
        return Target(kind="return_path", **common)
    if local == UNSUBSCRIBE_LOCAL:
        return Target(kind="unsubscribe", **common)
    if local in FEEDBACK_LOCALS:
        return Target(kind="feedback", **common)
    if parsed.local == POSTMASTER:
        return Target(kind="postmaster", **common)
    raise unknown_user(f"{parsed.address}: not an address of the return-path domain")


class Resolver:
    """``resolve`` for the RCPT hook, with what the store said about an address kept for ``ttl``
    seconds (bounded: the oldest entries go first), so a busy MX reads each address once per
    interval. A change (an address added or disabled, inbound switched) applies within ``ttl``."""

    def __init__(self, facts: Callable[[str, Sequence[str]], Awaitable[dict[str, Any]]], rules: Rules, *, ttl: float = 5.0,
                 return_path: Callable[[str], Awaitable[Any]] | None = None):
        self.rules = rules
        self._facts = facts
        self._return_path = return_path   # Keyring.return_path: a tagged bounce address must carry our MAC
        self._cache = TtlCache(self._load, ttl)

    async def _load(self, key: tuple[str, tuple[str, ...]]) -> dict[str, Any]:
        return await self._facts(key[0], key[1])

    def configure(self, rules: Rules, ttl: float) -> None:
        self.rules = rules
        self._cache.ttl = ttl
        self._cache.clear()

    async def resolve(self, address: str) -> Target:
        parsed = parse(address, self.rules)
        facts = await self._cache.get((parsed.address, parsed.candidates))  # type: ignore[arg-type]
        target = decide(parsed, facts, self.rules)
        if target.kind == "return_path" and verp.SEPARATOR in parsed.local:
            # A forged tag could suppress a stranger (gateway/verp.py): refused here, never spooled.
            if self._return_path is None or await self._return_path(parsed.address) is None:
                raise unknown_user(f"{parsed.address}: a return path this gateway did not make")
        return target


async def resolve(store: _Store, address: str, rules: Rules) -> Target:
    """The Target of ``address``; SMTPError (the RCPT reply) when it may not receive here. A store
    failure propagates as it is (the caller answers 451 4.3.0)."""
    parsed = parse(address, rules)
    facts = await store.recipients.facts(parsed.address, parsed.candidates)
    return decide(parsed, facts, rules)
