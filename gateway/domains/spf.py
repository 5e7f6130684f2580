"""SPF (RFC 7208) evaluated, not string-matched.

``check`` fetches a domain's policy and everything it reaches (include, redirect, a, mx, exists)
and reports:

- exactly one ``v=spf1`` record (two or more is a permerror, 3.2);
- the DNS-querying terms of the whole tree (include, a, mx, ptr, exists, redirect) at most 10, and
  at most 2 of them void (4.6.4). The whole tree is counted, not only the terms a given sender
  reaches, because a receiver checking some other address walks further: validators count the same;
- for each of our sending IPs, the check_host() result (4.6): ``pass`` is what we need;
- which terms are reachable, so "include:<ours>" can be found when no sending IP is configured.

Macros (section 7) are expanded for %{d} %{o} %{h}; a term whose domain needs the sender's address
or local part (%{i} %{s} %{l}...) counts as a lookup but cannot match during verification.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, field

from ..errors import RecordError
from .lookup import Lookup

MAX_LOOKUPS = 10
MAX_VOID = 2
MAX_MX = 10
LOOKUP_TERMS = {"include", "a", "mx", "ptr", "exists"}
MECHANISM = re.compile(r"^([+\-~?]?)(all|include|a|mx|ptr|ip4|ip6|exists)(?::([^/]+))?(?:/(\d+))?(?://(\d+))?$", re.I)
MODIFIER = re.compile(r"^([a-z][a-z0-9_.-]*)=(.*)$", re.I)
RESULTS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


class PermError(RecordError):
    """The policy is broken for every receiver."""


class TempError(RecordError):
    """DNS did not answer; we cannot tell."""


@dataclass
class Term:
    qualifier: str
    kind: str
    target: str | None = None
    cidr4: int | None = None
    cidr6: int | None = None

    def text(self) -> str:
        return f"{self.kind}:{self.target}" if self.target else self.kind


@dataclass
class Policy:
    domain: str
    record: str
    terms: list[Term]
    redirect: str | None
    children: dict[str, "Policy"] = field(default_factory=dict)      # include/redirect target -> policy
    addresses: dict[str, list[str]] = field(default_factory=dict)    # a/mx/exists target -> addresses


@dataclass
class Report:
    status: str                 # verified | missing | mismatch | error
    record: str | None = None   # the domain's SPF record as published
    detail: str = ""
    lookups: int = 0
    results: dict[str, str] = field(default_factory=dict)  # sending ip -> check_host result
    reachable: list[str] = field(default_factory=list)      # every term text in the tree


def is_spf(text: str) -> bool:
    return text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")


def parse(record: str) -> tuple[list[Term], str | None]:
    """The mechanisms of a record, and its redirect= (ignored when an 'all' is present, 6.1)."""
    terms: list[Term] = []
    redirect = None
    for part in record.split()[1:]:
        m = MECHANISM.match(part)
        if m:
            qualifier, kind, target, c4, c6 = m.groups()
            kind = kind.lower()
            if kind in ("include", "exists") and not target:
                raise PermError(f"{part!r} needs a domain")
            if kind in ("ip4", "ip6"):
                if not target:
                    raise PermError(f"{part!r} needs an address")
                try:
                    ipaddress.ip_network(f"{target}/{c4 or c6}" if (c4 or c6) else target, strict=False)
                except ValueError:
                    raise PermError(f"{part!r} is not a valid address") from None
            if kind == "ip6" and c4 and not c6:
                c4, c6 = None, c4  # ip6:net/len: the one prefix is the IPv6 one
            terms.append(Term(qualifier or "+", kind, target, int(c4) if c4 else None, int(c6) if c6 else None))
            continue
        m = MODIFIER.match(part)
        if m:
            if m.group(1).lower() == "redirect":
                if redirect is not None:
                    raise PermError("two redirect= modifiers")
                redirect = m.group(2)
            continue  # unknown modifiers are ignored (6)
        raise PermError(f"unknown term {part!r}")
    if any(t.kind == "all" for t in terms):
        redirect = None
    return terms, redirect


def expand(spec: str, domain: str, helo: str) -> str | None:
    """Expand the macros we can know without a sender; None when the spec needs one."""
    if "%" not in spec:
        return spec.rstrip(".").lower()
    out = spec.replace("%%", "%").replace("%_", " ").replace("%-", "%20")
    for letter, value in (("d", domain), ("o", domain), ("h", helo)):
        out = re.sub(r"%\{" + letter + r"\}", value, out, flags=re.I)
    return None if "%{" in out else out.rstrip(".").lower()


class _Walk:
    def __init__(self, lookup: Lookup, helo: str):
        self.lookup = lookup
        self.helo = helo
        self.lookups = 0
        self.voids = 0
        self.reachable: list[str] = []

    def count(self) -> None:
        self.lookups += 1

    async def policy(self, domain: str, top: bool) -> Policy | None:
        answer = await self.lookup.txt(domain)
        if answer.status == "error":
            raise TempError(f"{domain}: {answer.detail}")
        records = [v for v in answer.values if is_spf(v)]
        if not records:
            if top:
                return None
            self.voids += answer.absent
            raise PermError(f"{domain} (reached by include or redirect) has no SPF record")
        if len(records) > 1:
            raise PermError(f"{domain} publishes {len(records)} SPF records; exactly one is allowed (RFC 7208 3.2)")
        terms, redirect = parse(records[0])
        policy = Policy(domain, records[0], terms, redirect)
        jobs = []
        for term in terms:
            if term.kind in LOOKUP_TERMS:
                self.count()
            target = expand(term.target, domain, self.helo) if term.target else domain
            self.reachable.append(f"{term.kind}:{target}" if term.target else term.kind)
            if target is None or term.kind == "ptr":
                continue  # counted, but needs the sender to evaluate (ptr is deprecated, 5.5)
            if term.kind == "include":
                jobs.append((self._child, policy, target))
            elif term.kind in ("a", "exists"):
                jobs.append((self._addresses, policy, target, "A" if term.kind == "exists" else None))
            elif term.kind == "mx":
                jobs.append((self._mx, policy, target))
        if redirect:
            self.count()
            target = expand(redirect, domain, self.helo)
            self.reachable.append(f"redirect={target}")
            if target is not None:
                jobs.append((self._child, policy, target))
        if self.lookups > MAX_LOOKUPS:
            raise PermError(f"more than {MAX_LOOKUPS} DNS-querying terms ({self.lookups} so far; RFC 7208 4.6.4)")
        # Coroutines are made only now, so a PermError above leaves none un-awaited.
        await _gather([job[0](*job[1:]) for job in jobs])
        return policy

    async def _child(self, policy: Policy, target: str) -> None:
        policy.children[target] = await self.policy(target, top=False)

    async def _addresses(self, policy: Policy, target: str, only: str | None = None) -> list[str]:
        answers = await asyncio.gather(*(self.lookup.query(target, t) for t in ([only] if only else ["A", "AAAA"])))
        if any(a.status == "error" for a in answers):
            raise TempError(f"{target}: {next(a.detail for a in answers if a.status == 'error')}")
        found = [v for a in answers for v in a.values]
        if not found:
            self.voids += 1
        policy.addresses[target] = found
        return found

    async def _mx(self, policy: Policy, target: str) -> None:
        answer = await self.lookup.mx(target)
        if answer.status == "error":
            raise TempError(f"{target} MX: {answer.detail}")
        hosts = [h for _, h in answer.values if h]
        if not hosts:
            self.voids += 1
        if len(hosts) > MAX_MX:
            raise PermError(f"mx:{target} has more than {MAX_MX} MX names (RFC 7208 4.6.4)")
        scratch = Policy(target, "", [], None)
        await _gather([self._addresses(scratch, h) for h in hosts])
        policy.addresses[f"mx:{target}"] = [a for h in hosts for a in scratch.addresses.get(h, [])]


async def _gather(jobs: list) -> None:
    """Run jobs together; then raise the first PermError or TempError among them."""
    for outcome in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


def _in(ip: ipaddress._BaseAddress, addresses: list[str], term: Term) -> bool:
    for address in addresses:
        net = ipaddress.ip_address(address)
        if net.version != ip.version:
            continue
        prefix = term.cidr4 if ip.version == 4 else term.cidr6
        if ip in ipaddress.ip_network(f"{address}/{prefix if prefix is not None else net.max_prefixlen}", strict=False):
            return True
    return False


def evaluate(policy: Policy, ip: ipaddress._BaseAddress, helo: str) -> str:
    """check_host() on the fetched tree: pass, fail, softfail, neutral or permerror."""
    for term in policy.terms:
        target = expand(term.target, policy.domain, helo) if term.target else policy.domain
        if term.kind == "all":
            matched = True
        elif term.kind in ("ip4", "ip6"):
            prefix = term.cidr4 if term.kind == "ip4" else term.cidr6
            net = ipaddress.ip_network(f"{term.target}/{prefix}" if prefix is not None else term.target, strict=False)
            matched = net.version == ip.version and ip in net
        elif term.kind in ("a", "exists"):
            found = policy.addresses.get(target, []) if target else []
            matched = bool(found) if term.kind == "exists" else _in(ip, found, term)
        elif term.kind == "mx":
            matched = _in(ip, policy.addresses.get(f"mx:{target}", []), term)
        elif term.kind == "include":
            child = policy.children.get(target) if target else None
            if child is None:
                matched = False
            else:
                result = evaluate(child, ip, helo)
                if result == "permerror":
                    return result
                matched = result == "pass"
        else:  # ptr, or a term needing the sender
            matched = False
        if matched:
            return RESULTS[term.qualifier]
    if policy.redirect:
        target = expand(policy.redirect, policy.domain, helo)
        child = policy.children.get(target) if target else None
        return evaluate(child, ip, helo) if child else "neutral"
    return "neutral"


async def check(lookup: Lookup, domain: str, *, ips: list[str], wanted: list[str], helo: str) -> Report:
    """The domain's SPF against what we need: every IP in ``ips`` passes (when any are given),
    else every term in ``wanted`` (like 'include:_spf.gw.example') is reachable."""
    walk = _Walk(lookup, helo)
    try:
        policy = await walk.policy(domain, top=True)
    except TempError as exc:
        return Report("error", detail=str(exc), lookups=walk.lookups)
    except PermError as exc:
        top = await lookup.txt(domain)
        found = " | ".join(v for v in top.values if is_spf(v)) or None
        return Report("mismatch", found, f"permerror: {exc}", walk.lookups, reachable=walk.reachable)
    if policy is None:
        return Report("missing", detail="no v=spf1 record")
    if walk.lookups > MAX_LOOKUPS:
        return Report("mismatch", policy.record, f"permerror: {walk.lookups} DNS-querying terms, at most {MAX_LOOKUPS} "
                      "(RFC 7208 4.6.4)", walk.lookups, reachable=walk.reachable)
    report = Report("verified", policy.record, lookups=walk.lookups, reachable=walk.reachable)
    if walk.voids > MAX_VOID:
        report.status, report.detail = "mismatch", f"permerror: {walk.voids} void lookups, at most {MAX_VOID} (RFC 7208 4.6.4)"
        return report
    if ips:
        report.results = {ip: evaluate(policy, ipaddress.ip_network(ip, strict=False).network_address, helo) for ip in ips}
        bad = {ip: r for ip, r in report.results.items() if r != "pass"}
        if bad:
            report.status = "mismatch"
            report.detail = "does not authorise the gateway: " + ", ".join(f"{ip} -> {r}" for ip, r in bad.items())
    else:
        missing = [w for w in wanted if w.lower() not in report.reachable]
        if missing:
            report.status, report.detail = "mismatch", f"does not reach {', '.join(missing)}"
    if report.status == "verified":
        report.detail = f"{report.lookups} DNS-querying term(s) of {MAX_LOOKUPS}"
    return report


def merge(existing: str, ours: list[str]) -> str:
    """Our mechanisms added to an existing record, before its 'all' (or redirect=), keeping the rest."""
    parts = existing.split()
    have = {p.lower().lstrip("+") for p in parts[1:]}
    add = [m for m in ours if m.lower() not in have]
    if not add:
        return " ".join(parts)
    for i, part in enumerate(parts[1:], start=1):
        bare = part.lower().lstrip("+-~?")
        if bare == "all" or bare.startswith("redirect="):
            return " ".join(parts[:i] + add + parts[i:])
    return " ".join(parts + add)
