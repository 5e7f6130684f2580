"""The DNS client: dnspython's async resolver pointed at the configured nameservers, no cache.

Every question is asked afresh (verification must see what is published now, not what a cache
remembers) and every outcome becomes an ``Answer``: ``ok`` with values, ``nxdomain`` or ``nodata``
(the name has nothing of that type: a missing record), or ``error`` (timeout, SERVFAIL, refused:
we do not know, which is not the same as missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.exception
import dns.rdatatype
import dns.resolver

from ..config import DnsConfig
from ..resolver import make_resolver


@dataclass(frozen=True)
class Answer:
    status: str                       # ok | nxdomain | nodata | error
    values: tuple = field(default=())  # TXT: joined text; MX: (preference, host); A/AAAA: addresses
    detail: str = ""                  # for errors: what went wrong
    canonical: str = ""               # the name the answer came from, after CNAMEs

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def absent(self) -> bool:
        return self.status in ("nxdomain", "nodata")


class Lookup:
    def __init__(self, config: DnsConfig):
        self.resolver = make_resolver(config)
        self.resolver.cache = None  # verification always asks DNS afresh
        # EDNS with a 1232-byte payload (DNS flag day 2020): DKIM keys fit in UDP, no fragmentation.
        self.resolver.use_edns(0, 0, 1232)

    async def query(self, name: str, rdtype: str) -> Answer:
        try:
            answer = await self.resolver.resolve(name.rstrip(".") + ".", rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer("nxdomain")
        except dns.resolver.NoAnswer:
            return Answer("nodata")
        except dns.exception.Timeout:
            return Answer("error", detail=f"timeout after {self.resolver.lifetime:g}s")
        except dns.resolver.NoNameservers as exc:
            return Answer("error", detail=_servfail_detail(exc))
        except dns.exception.DNSException as exc:
            return Answer("error", detail=str(exc) or type(exc).__name__)
        canonical = answer.canonical_name.to_text().rstrip(".")
        t = dns.rdatatype.from_text(rdtype)
        if t == dns.rdatatype.TXT:
            values = tuple(b"".join(rd.strings).decode("utf-8", "replace") for rd in answer)
        elif t == dns.rdatatype.MX:
            values = tuple(sorted((rd.preference, rd.exchange.to_text().rstrip(".").lower()) for rd in answer))
        elif t in (dns.rdatatype.A, dns.rdatatype.AAAA):
            values = tuple(rd.address for rd in answer)
        else:
            values = tuple(rd.to_text() for rd in answer)
        return Answer("ok", values, canonical=canonical)

    async def txt(self, name: str) -> Answer:
        return await self.query(name, "TXT")

    async def mx(self, name: str) -> Answer:
        return await self.query(name, "MX")


def _servfail_detail(exc: dns.resolver.NoNameservers) -> str:
    text = str(exc)
    return "SERVFAIL" if "SERVFAIL" in text else f"no nameserver answered: {text}"
