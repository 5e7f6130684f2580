"""Where mail for a domain goes: MX records in preference order, the domain itself when it has none
(RFC 5321 5.1), nothing at all for a Null MX (RFC 7505).

Answers are cached for their TTL (bounded), so a run of messages to one domain costs one lookup.
Which failures are permanent: NXDOMAIN, a Null MX, a domain with neither MX nor address records.
Everything else (SERVFAIL, timeouts, refused, no nameserver answering) is temporary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from ..config import DnsConfig
from ..errors import DeliveryError
from ..resolver import make_resolver
from .reply import Reply

_CACHE_MAX = 10000
_NEGATIVE_TTL = 30.0


@dataclass(frozen=True)
class Destination:
    """One place to connect to: the MX host name (for logs and TLS SNI) and its addresses."""

    host: str
    addresses: tuple[str, ...]


class DestinationError(DeliveryError):
    """The domain cannot be delivered to now (temporary) or ever (permanent); ``reply`` says which."""

    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(reply.line)


class MxResolver:
    def __init__(self, config: DnsConfig, *, resolver: dns.asyncresolver.Resolver | None = None):
        self.resolver = resolver or make_resolver(config)
        self._cache: dict[str, tuple[float, list[Destination] | DestinationError]] = {}

    async def destinations(self, domain: str) -> list[Destination]:
        """Hosts to try, best first, each with its addresses; raises DestinationError."""
        domain = domain.lower().rstrip(".")
        now = time.monotonic()
        hit = self._cache.get(domain)
        if hit and hit[0] > now:
            if isinstance(hit[1], DestinationError):
                raise hit[1]
            return hit[1]
        try:
            result, ttl = await self._lookup(domain)
        except DestinationError as exc:
            if exc.reply.outcome == "bounced":
                self._remember(domain, now + _NEGATIVE_TTL, exc)
            raise
        self._remember(domain, now + ttl, result)
        return result

    def _remember(self, domain: str, until: float, value) -> None:
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[domain] = (until, value)

    async def _lookup(self, domain: str) -> tuple[list[Destination], float]:
        try:
            answer = await self.resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise DestinationError(Reply.permanent(f"domain {domain} does not exist", "5.1.2", code=550)) from None
        except dns.resolver.NoAnswer:
            # RFC 5321 5.1: no MX, the domain itself is the host (its A/AAAA records).
            addresses, ttl = await self._addresses(domain)
            if not addresses:
                raise DestinationError(Reply.permanent(f"domain {domain} has no MX and no address records", "5.1.2", code=550))
            return [Destination(domain, tuple(addresses))], ttl
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            raise DestinationError(Reply.temporary(f"MX lookup for {domain} failed: {type(exc).__name__}", "4.4.3")) from None
        except dns.exception.DNSException as exc:
            raise DestinationError(Reply.temporary(f"MX lookup for {domain} failed: {exc}", "4.4.3")) from None
        records = sorted(answer, key=lambda r: r.preference)
        if any(r.exchange == dns.name.root for r in records):
            # RFC 7505: the domain accepts no mail at all.
            raise DestinationError(Reply.permanent(f"domain {domain} accepts no mail (null MX)", "5.1.10", code=556))
        out: list[Destination] = []
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 300.0
        temporary: DestinationError | None = None
        for record in records:
            host = record.exchange.to_text(omit_final_dot=True).lower()
            try:
                addresses, a_ttl = await self._addresses(host)
            except DestinationError as exc:
                temporary = exc
                continue
            if addresses:
                out.append(Destination(host, tuple(addresses)))
                ttl = min(ttl, a_ttl)
        if not out:
            if temporary is not None:
                raise temporary
            raise DestinationError(Reply.temporary(f"no MX host of {domain} has an address", "4.4.4"))
        return out, max(1.0, ttl)

    async def _addresses(self, host: str) -> tuple[list[str], float]:
        """IPv4 then IPv6 addresses of a host; [] when it has none; DestinationError when DNS fails."""
        found: list[str] = []
        ttl = 300.0
        failure: Exception | None = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                failure = exc
                continue
            found += [r.address for r in answer]
            if answer.rrset is not None:
                ttl = min(ttl, float(answer.rrset.ttl))
        if not found and failure is not None:
            raise DestinationError(Reply.temporary(f"address lookup for {host} failed: {type(failure).__name__}", "4.4.3"))
        return found, ttl
