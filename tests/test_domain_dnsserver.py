"""The test DNS server itself: what other tests rely on it to answer."""

from __future__ import annotations

import time

import dns.asyncresolver
import dns.exception
import dns.resolver
import pytest


def resolver(server, timeout=0.5, tcp=False):
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [server.host]
    r.port = server.port
    r.lifetime = timeout
    r.timeout = timeout
    return r


async def test_answers_records_of_every_type(dns_server):
    dns_server.add("acme.test", "MX", "10 mx.acme.test.")
    dns_server.add("mx.acme.test", "A", "127.0.0.1")
    dns_server.add("mx.acme.test", "AAAA", "::1")
    dns_server.add("acme.test", "TXT", "v=spf1 -all")
    dns_server.add("null.test", "MX", "0 .")
    r = resolver(dns_server)
    assert [rd.exchange.to_text() for rd in await r.resolve("acme.test", "MX")] == ["mx.acme.test."]
    assert [rd.address for rd in await r.resolve("mx.acme.test", "A")] == ["127.0.0.1"]
    assert [rd.address for rd in await r.resolve("mx.acme.test", "AAAA")] == ["::1"]
    assert [b"".join(rd.strings) for rd in await r.resolve("acme.test", "TXT")] == [b"v=spf1 -all"]
    (null,) = await r.resolve("null.test", "MX")
    assert (null.preference, null.exchange.to_text()) == (0, ".")


async def test_nxdomain_and_nodata_differ(dns_server):
    dns_server.add("a.b.acme.test", "TXT", "x")
    r = resolver(dns_server)
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("nothing.acme.test", "TXT")
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("a.b.acme.test", "MX")  # exists, other type
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("b.acme.test", "TXT")  # empty non-terminal
    dns_server.remove("a.b.acme.test")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("b.acme.test", "TXT")


async def test_changes_take_effect_at_once_and_cname_is_followed(dns_server):
    r = resolver(dns_server)
    dns_server.set("x.test", "TXT", "one")
    dns_server.set("x.test", "TXT", "two")
    assert [b"".join(rd.strings) for rd in await r.resolve("x.test", "TXT")] == [b"two"]
    dns_server.add("alias.test", "CNAME", "x.test.")
    answer = await r.resolve("alias.test", "TXT")
    assert answer.canonical_name.to_text() == "x.test."
    assert [b"".join(rd.strings) for rd in answer] == [b"two"]


async def test_large_txt_truncates_to_tcp(dns_server):
    value = "v=DKIM1; k=rsa; p=" + "A" * 1500
    dns_server.add("big.test", "TXT", value)
    r = resolver(dns_server)
    (rd,) = await r.resolve("big.test", "TXT")
    assert b"".join(rd.strings).decode() == value
    assert all(len(s) <= 255 for s in rd.strings)


async def test_servfail_and_timeout(dns_server):
    dns_server.add("broken.test", "TXT", "x")
    dns_server.servfail("broken.test")
    dns_server.drop("slow.test", "TXT")
    r = resolver(dns_server, timeout=0.3)
    with pytest.raises(dns.resolver.NoNameservers):
        await r.resolve("broken.test", "TXT")
    started = time.monotonic()
    with pytest.raises(dns.exception.Timeout):
        await r.resolve("slow.test", "TXT")
    assert time.monotonic() - started >= 0.25
    dns_server.heal()
    assert len(await r.resolve("broken.test", "TXT")) == 1
    assert dns_server.queried("broken.test", "TXT") >= 2


def test_zone_text_loads(dns_server):
    dns_server.load_zone('@ 300 IN TXT "v=spf1 " "-all"\nmail 300 IN A 127.0.0.2\n', origin="zone.test")
    assert dns_server.records("zone.test", "TXT") == ["v=spf1 -all"]
    r = dns.resolver.Resolver(configure=False)
    r.nameservers, r.port = [dns_server.host], dns_server.port
    assert [rd.address for rd in r.resolve("mail.zone.test", "A")] == ["127.0.0.2"]
