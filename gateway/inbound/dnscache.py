"""The DNS that message authentication asks: dnspython's async resolver behind a small TTL cache.

An MX that checks SPF, DKIM and DMARC on every message asks the same few names again and again
(a big sender's SPF includes, its DKIM selectors, its _dmarc record), so answers are kept for their
TTL (capped at ``max_ttl``), negative answers (NXDOMAIN, NODATA) for the SOA's negative TTL (capped
at ``max_negative_ttl``), in a bounded LRU of ``size`` entries. Concurrent questions for the same
name and type share one query. Errors (SERVFAIL, timeouts) are not kept: the next message asks again.

Every lookup ends within the resolver's lifetime (``[dns] timeout``) and never raises: it answers
``Answer("error", ...)``, which the SPF, DKIM and DMARC code turn into ``temperror``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from ..config import DnsConfig
from ..resolver import make_resolver


@dataclass(frozen=True)
class Answer:
    status: str                     # ok | void (NXDOMAIN or NODATA) | error
    values: tuple = ()              # TXT: bytes (strings joined); A/AAAA: str; MX: (pref, host); PTR: host
    nxdomain: bool = False
    detail: str = ""


class DnsCache:
    """See the module docstring. One per daemon (or per benchmark); not shared between loops."""

    def __init__(self, resolver: dns.asyncresolver.Resolver, *, size: int = 4096, max_ttl: float = 3600.0,
                 max_negative_ttl: float = 300.0, clock=time.monotonic):
        self.resolver = resolver
        self.resolver.cache = None  # ours sits above it; two caches would disagree on expiry
        self.size = size
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self.clock = clock
        self._entries: OrderedDict[tuple[str, int], tuple[float, Answer]] = OrderedDict()
        self._pending: dict[tuple[str, int], asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_config(cls, config: DnsConfig, **kwargs) -> "DnsCache":
        return cls(make_resolver(config), **kwargs)

    @property
    def timeout(self) -> float:
        return float(self.resolver.lifetime)

    async def txt(self, name: str) -> Answer:
        return await self.query(name, dns.rdatatype.TXT)

    async def addresses(self, name: str, version: int) -> Answer:
        return await self.query(name, dns.rdatatype.A if version == 4 else dns.rdatatype.AAAA)

    async def mx(self, name: str) -> Answer:
        return await self.query(name, dns.rdatatype.MX)

    async def ptr(self, ip: str) -> Answer:
        return await self.query(dns.reversename.from_address(ip).to_text(), dns.rdatatype.PTR)

    async def query(self, name: str, rdtype: int) -> Answer:
        key = (name.rstrip(".").lower(), int(rdtype))
        entry = self._entries.get(key)
        if entry is not None:
            if entry[0] > self.clock():
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            del self._entries[key]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self.misses += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            answer, ttl = await self._ask(key[0], key[1])
        except BaseException as exc:  # cancelled: whoever shares the query sees an error, not a hang
            future.set_result(Answer("error", detail=f"lookup abandoned: {type(exc).__name__}"))
            raise
        finally:
            self._pending.pop(key, None)
        if not future.done():
            future.set_result(answer)
        if ttl > 0:
            self._entries[key] = (self.clock() + ttl, answer)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return answer

    async def _ask(self, name: str, rdtype: int) -> tuple[Answer, float]:
        try:
            qname = dns.name.from_text(name + ".")
        except dns.exception.DNSException as exc:
            return Answer("void", detail=f"not a domain name: {exc}"), 0.0
        try:
            # A timeout above the resolver's own: dnspython keeps to its lifetime, this keeps to ours.
            async with asyncio.timeout(self.timeout + 0.5):
                result = await self.resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            return Answer("void", nxdomain=True, detail="NXDOMAIN"), self._negative_ttl(exc.responses().values())
        except (dns.exception.Timeout, TimeoutError):
            return Answer("error", detail=f"no answer within {self.timeout:g}s"), 0.0
        except dns.resolver.NoNameservers:
            return Answer("error", detail="SERVFAIL or refused by every nameserver"), 0.0
        except dns.exception.DNSException as exc:
            return Answer("error", detail=f"{type(exc).__name__}: {exc}"), 0.0
        if result.rrset is None:
            return Answer("void", detail="NODATA"), self._negative_ttl([result.response])
        values = tuple(_value(rdtype, rd) for rd in result.rrset)
        return Answer("ok", values), min(float(result.rrset.ttl), self.max_ttl)

    def _negative_ttl(self, responses) -> float:
        for response in responses:
            for rrset in getattr(response, "authority", ()):
                if rrset.rdtype == dns.rdatatype.SOA:
                    return float(min(rrset.ttl, rrset[0].minimum, self.max_negative_ttl))
        return min(60.0, self.max_negative_ttl)


def _value(rdtype: int, rd):
    if rdtype == dns.rdatatype.TXT:
        return b"".join(rd.strings)
    if rdtype == dns.rdatatype.MX:
        return (rd.preference, rd.exchange.to_text(omit_final_dot=True).lower())
    if rdtype == dns.rdatatype.PTR:
        return rd.target.to_text(omit_final_dot=True).lower()
    return rd.to_text()
