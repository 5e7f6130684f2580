"""SPF check_host() (RFC 7208 4) for mail we receive: is ``ip`` allowed to send for ``domain``?

Our own evaluator, not pyspf. pyspf is synchronous (its DNS goes through a module-level lookup
function and a per-query cache), so on the event loop it needs a thread per check and asks DNS
afresh for every message. Measured back to back on this shared 2-core machine, one core, a
record with one include then mx and ip4 terms, the tests' DNS server on loopback: pyspf 2.0.14 in
a thread 154 checks/s (5,655 us CPU each, the DNS server's share included;
``scripts/bench_authres.py --pyspf``), this evaluator on a warm DnsCache 6,881 checks/s (121 us
CPU; ``--spf-only``), against the MX's 1,500 msg/s target. The record grammar is shared with domain
verification (gateway/domains/spf.py ``parse``); what differs is that a receiver walks only the
path the client's address takes.

Bounds (4.6.4): at most 10 DNS-querying terms (include, a, mx, ptr, exists, redirect) in the whole
evaluation, at most 2 of them void (NXDOMAIN or no answer), at most 10 names per mx and ptr; past
a bound the result is ``permerror``. Any DNS error is ``temperror``; the caller bounds the time.
Macros (7) are expanded in full, except %{p}, which is "unknown" (7.3 allows it: it is slow and
deprecated).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..domains.spf import MAX_LOOKUPS, MAX_MX, MAX_VOID, PermError, TempError, Term, is_spf, parse
from .dnscache import DnsCache

RESULTS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
MACRO = re.compile(r"%\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}", re.I)


@dataclass(frozen=True)
class SpfResult:
    result: str          # pass | fail | softfail | neutral | none | temperror | permerror
    domain: str          # the domain whose policy was checked (MAIL FROM's, or HELO's for a null sender)
    identity: str        # "mailfrom" or "helo"
    reason: str = ""
    lookups: int = 0


def identity(mail_from: str, helo: str) -> tuple[str, str, str]:
    """(sender, domain, identity kind) checked for this envelope (2.2, 2.4): the MAIL FROM address,
    or postmaster@HELO when the reverse-path is null."""
    sender = mail_from.strip().strip("<>")
    if "@" in sender:
        local, _, domain = sender.rpartition("@")
        return f"{local or 'postmaster'}@{domain}", domain.rstrip(".").lower(), "mailfrom"
    domain = helo.strip().strip("[]").rstrip(".").lower()
    return f"postmaster@{domain}", domain, "helo"


async def check(dns: DnsCache, *, client_ip: str, mail_from: str, helo: str) -> SpfResult:
    sender, domain, kind = identity(mail_from, helo)
    try:
        ip = ipaddress.ip_address(client_ip.strip("[]"))
    except ValueError:
        return SpfResult("permerror", domain, kind, f"client address {client_ip!r} is not an IP address")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not _valid_domain(domain) or _is_ip(domain):
        return SpfResult("none", domain, kind, "not a multi-label domain name (4.3)")
    walk = _Walk(dns, ip, sender, helo.strip().strip("[]").lower())
    try:
        result = await walk.check_host(domain, top=True)
    except (PermError, TempError) as stop:  # the evaluation ends there, whatever the recursion depth
        result = "permerror" if isinstance(stop, PermError) else "temperror"
        return SpfResult(result, domain, kind, str(stop), walk.lookups)
    return SpfResult(result, domain, kind, walk.reason, walk.lookups)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _valid_domain(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) >= 2 and len(domain) <= 253 and all(0 < len(label) <= 63 for label in labels)


class _Walk:
    def __init__(self, dns: DnsCache, ip, sender: str, helo: str):
        self.dns = dns
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.lookups = 0
        self.voids = 0
        self.reason = ""

    def count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise PermError(f"more than {MAX_LOOKUPS} DNS-querying terms at {term} (RFC 7208 4.6.4)")

    def void(self, name: str) -> None:
        self.voids += 1
        if self.voids > MAX_VOID:
            raise PermError(f"more than {MAX_VOID} void lookups at {name} (RFC 7208 4.6.4)")

    async def record(self, domain: str) -> str | None:
        answer = await self.dns.txt(domain)
        if answer.status == "error":
            raise TempError(f"{domain} TXT: {answer.detail}")
        records = [text for text in (v.decode("ascii", "replace") for v in answer.values) if is_spf(text)]
        if len(records) > 1:
            raise PermError(f"{domain} publishes {len(records)} SPF records (RFC 7208 3.2)")
        return records[0] if records else None

    async def check_host(self, domain: str, top: bool = False) -> str:
        record = await self.record(domain)
        if record is None:
            if top:
                self.reason = f"{domain} publishes no SPF record"
                return "none"
            raise PermError(f"{domain} (include or redirect target) publishes no SPF record")
        try:
            terms, redirect = parse(record)
        except PermError as exc:
            raise PermError(f"{domain}: {exc}") from None
        for term in terms:
            if await self.matches(term, domain):
                self.reason = f"{term.text()} in {domain}"
                return RESULTS[term.qualifier]
        if redirect:
            self.count(f"redirect={redirect}")
            target = self.expand(redirect, domain)
            if not _valid_domain(target):
                raise PermError(f"redirect={redirect} is not a domain")
            return await self.check_host(target)
        self.reason = f"no term of {domain} matched"
        return "neutral"

    async def matches(self, term: Term, domain: str) -> bool:
        kind = term.kind
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            prefix = term.cidr4 if kind == "ip4" else term.cidr6
            net = ipaddress.ip_network(f"{term.target}/{prefix}" if prefix is not None else term.target, strict=False)
            return net.version == self.ip.version and self.ip in net
        self.count(term.text())
        target = self.expand(term.target, domain) if term.target else domain
        if kind == "include":
            result = await self.check_host(target)
            if result == "none":
                raise PermError(f"include:{target} publishes no SPF record")
            return result == "pass"
        if kind == "a":
            return self.within(await self.addresses(target, count_void=True), term)
        if kind == "exists":
            return bool(await self.addresses(target, count_void=True, version=4))
        if kind == "mx":
            answer = await self.dns.mx(target)
            self.fail_on_error(answer, f"{target} MX")
            hosts = [host for _, host in sorted(answer.values) if host not in ("", ".")]
            if not answer.values:
                self.void(target)
            if len(hosts) > MAX_MX:
                raise PermError(f"mx:{target} has more than {MAX_MX} MX names (RFC 7208 4.6.4)")
            for host in hosts:
                if self.within(await self.addresses(host), term):
                    return True
            return False
        if kind == "ptr":
            return await self.ptr_matches(target)
        return False

    async def addresses(self, name: str, *, count_void: bool = False, version: int | None = None) -> list[str]:
        answer = await self.dns.addresses(name, version or self.ip.version)
        self.fail_on_error(answer, name)
        if not answer.values and count_void:
            self.void(name)
        return list(answer.values)

    @staticmethod
    def fail_on_error(answer, what: str) -> None:
        if answer.status == "error":
            raise TempError(f"{what}: {answer.detail}")

    def within(self, addresses: list[str], term: Term) -> bool:
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        for address in addresses:
            try:
                net = ipaddress.ip_network(f"{address}/{prefix}" if prefix is not None else address, strict=False)
            except ValueError:
                continue
            if net.version == self.ip.version and self.ip in net:
                return True
        return False

    async def ptr_matches(self, target: str) -> bool:
        """5.5: a validated name of the client (PTR, then forward-confirmed) equal to or below target."""
        answer = await self.dns.ptr(str(self.ip))
        if answer.status != "ok":
            return False  # a PTR error is "no match", not temperror (5.5)
        for name in list(answer.values)[:MAX_MX]:
            if name == target or name.endswith("." + target):
                forward = await self.dns.addresses(name, self.ip.version)
                if forward.status == "ok" and str(self.ip) in forward.values:
                    return True
        return False

    def expand(self, spec: str, domain: str) -> str:
        """Section 7 macro expansion of a domain-spec, truncated to 253 characters from the left."""
        if "%" not in spec:
            return spec.rstrip(".").lower()
        out, i = [], 0
        while i < len(spec):
            c = spec[i]
            if c != "%":
                out.append(c)
                i += 1
                continue
            nxt = spec[i + 1 : i + 2]
            if nxt == "%":
                out.append("%")
            elif nxt == "_":
                out.append(" ")
            elif nxt == "-":
                out.append("%20")
            elif nxt == "{":
                m = MACRO.match(spec, i)
                if not m:
                    raise PermError(f"bad macro in {spec!r} (RFC 7208 7.1)")
                out.append(self.macro(m, domain))
                i = m.end()
                continue
            else:
                raise PermError(f"bad macro in {spec!r} (RFC 7208 7.1)")
            i += 2
        expanded = "".join(out).rstrip(".").lower()
        while len(expanded) > 253 and "." in expanded:
            expanded = expanded.split(".", 1)[1]
        return expanded

    def macro(self, m: re.Match, domain: str) -> str:
        letter, digits, reverse, delimiters = m.group(1).lower(), m.group(2), m.group(3), m.group(4) or "."
        local, _, sender_domain = self.sender.rpartition("@")
        if letter == "s":
            value = self.sender
        elif letter == "l":
            value = local
        elif letter == "o":
            value = sender_domain
        elif letter == "d":
            value = domain
        elif letter == "i":
            value = self.ip.exploded if self.ip.version == 4 else ".".join(self.ip.exploded.replace(":", ""))
        elif letter == "v":
            value = "in-addr" if self.ip.version == 4 else "ip6"
        elif letter == "h":
            value = self.helo
        elif letter == "p":
            value = "unknown"
        else:  # c, r, t: only allowed in exp= (7.2), which we do not evaluate
            raise PermError(f"macro %{{{letter}}} outside exp= (RFC 7208 7.2)")
        parts = re.split("[" + re.escape(delimiters) + "]", value)
        if reverse:
            parts.reverse()
        if digits:
            if int(digits) == 0:
                raise PermError("macro transformer of 0 labels (RFC 7208 7.1)")
            parts = parts[-int(digits):]
        return ".".join(parts)
