"""DMARC (RFC 7489): the From domain's policy, and whether SPF or DKIM vouch for that domain.

Our own, small: the libraries on PyPI either do their own (synchronous) DNS (``dmarc``,
``checkdmarc``) or judge records rather than messages. The organizational domain comes from the
Public Suffix List (``publicsuffixlist``, which ships the list; no download at run time).

Policy discovery (6.6.3): TXT at _dmarc.<From domain>, else at _dmarc.<organizational domain>;
exactly one ``v=DMARC1`` record counts (none or several: no policy). A record at the
organizational domain applies its ``sp=`` (else ``p=``) to a subdomain. ``pct`` below 100 samples:
a message outside the sample gets the next milder policy (6.6.4). A DNS error is ``temperror``,
and so is a failure whose aligned identifiers could not be checked because DNS did not answer:
an MX must not reject mail for a resolver's hiccup.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from .dnscache import DnsCache

POLICIES = ("none", "quarantine", "reject")
MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True)
class Record:
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    at: str = ""          # the domain whose _dmarc name answered


@dataclass(frozen=True)
class DmarcResult:
    result: str           # pass | fail | none | temperror | permerror
    policy: str           # the policy to apply: reject | quarantine | none, '' when no record
    from_domain: str
    reason: str = ""
    record: Record | None = None


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # read-only once loaded; loading takes a while, so once, on first use


@functools.lru_cache(maxsize=4096)  # the same few sender domains, message after message
def organizational_domain(domain: str) -> str:
    """The registrable domain (3.2): one label below the longest public suffix; the name itself
    when it is a public suffix (or has nothing above one)."""
    domain = domain.rstrip(".").lower()
    return _suffixes().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    identifier, from_domain = identifier.rstrip(".").lower(), from_domain.rstrip(".").lower()
    if not identifier or not from_domain:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def parse_record(text: str, at: str) -> Record | None:
    """A v=DMARC1 record; None when it is not one, or is broken beyond the rua rescue of 6.6.3."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1" or not text.lstrip().startswith("v"):
        return None
    p = tags.get("p", "").lower()
    sp = tags.get("sp", p).lower()
    if p not in POLICIES or sp not in POLICIES:
        if "rua" not in tags:
            raise ValueError(f"_dmarc.{at}: p={tags.get('p', '')!r} sp={tags.get('sp', '')!r} is not a policy")
        p = sp = "none"  # 6.6.3: a broken policy with a report address counts as p=none
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    return Record(p, sp, adkim, aspf, pct, at)


async def discover(dns: DnsCache, from_domain: str) -> tuple[str, Record | None, str]:
    """(status ok|none|temperror|permerror, record, reason) for the From domain (6.6.3)."""
    org = organizational_domain(from_domain)
    for at in dict.fromkeys((from_domain, org)):
        answer = await dns.txt(f"_dmarc.{at}")
        if answer.status == "error":
            return "temperror", None, f"_dmarc.{at}: {answer.detail}"
        texts = [v.decode("ascii", "replace") for v in answer.values]
        candidates = [t for t in texts if t.strip().startswith("v=DMARC1")]
        if len(candidates) > 1:
            return "none", None, f"_dmarc.{at} publishes {len(candidates)} records"
        if candidates:
            try:
                record = parse_record(candidates[0], at)
            except ValueError as exc:
                return "permerror", None, str(exc)
            if record is not None:
                return "ok", record, ""
    return "none", None, f"no DMARC record for {from_domain}"


def judge(discovered: tuple[str, Record | None, str], from_domain: str, *, spf: str, spf_domain: str,
          dkim: list[tuple[str, str, str]], sample=random.random) -> DmarcResult:
    """The DMARC result for one From domain from its discovered policy, the SPF result (for
    ``spf_domain``) and the DKIM results ((result, d, s) per signature)."""
    status, record, reason = discovered
    if status != "ok" or record is None:
        return DmarcResult(status, "", from_domain, reason)
    subdomain = record.at != from_domain
    policy = record.sp if subdomain else record.p
    if record.pct < 100 and sample() * 100 >= record.pct:
        policy = MILDER[policy]
    dkim_aligned = [(r, d) for r, d, _ in dkim if aligned(d, from_domain, record.adkim)]
    spf_aligned = aligned(spf_domain, from_domain, record.aspf)
    if any(r == "pass" for r, _ in dkim_aligned):
        return DmarcResult("pass", policy, from_domain, "aligned DKIM pass", record)
    if spf == "pass" and spf_aligned:
        return DmarcResult("pass", policy, from_domain, "aligned SPF pass", record)
    if (spf_aligned and spf == "temperror") or any(r == "temperror" for r, _ in dkim_aligned):
        return DmarcResult("temperror", policy, from_domain, "an aligned identifier could not be checked", record)
    return DmarcResult("fail", policy, from_domain, "no aligned SPF or DKIM pass", record)
