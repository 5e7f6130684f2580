"""SPF, DKIM, DMARC and ARC of received mail against the tests' real DNS server, and the
Authentication-Results header parsed back with an independent RFC 8601 parser (authres)."""

from __future__ import annotations

import asyncio
import base64
import time

import authres as authres_parser
import dkim
import dns.asyncresolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.inbound.authres import MAX_SIGNATURES, authenticate, header_fields, summarise, with_header
from gateway.inbound.dnscache import DnsCache

ME = "mx.gateway.test"
CLIENT = "192.0.2.25"


@pytest.fixture(scope="module")
def key():
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def cache(server, timeout: float = 1.0, **kwargs) -> DnsCache:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [server.host], server.port
    resolver.timeout = resolver.lifetime = timeout
    return DnsCache(resolver, **kwargs)


def message(sender="alice@acme.test", body="Hello.\r\n", extra=""):
    return (f"From: Alice <{sender}>\r\nTo: support@help.gateway.test\r\nSubject: Question\r\n"
            f"Message-ID: <q1@acme.test>\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n{extra}\r\n{body}").encode()


def sign(raw: bytes, pem: bytes, domain="acme.test", selector="sel") -> bytes:
    signature = dkim.sign(raw, selector.encode(), domain.encode(), pem,
                          include_headers=[b"from", b"to", b"subject", b"message-id", b"date"])
    return signature + raw


async def check(server, raw=None, *, ip=CLIENT, mail_from="alice@acme.test", helo="mail.acme.test", dns=None, **kw):
    return await authenticate(message() if raw is None else raw, client_ip=ip, helo=helo, mail_from=mail_from,
                              resolver=dns or cache(server), authserv_id=ME, **kw)


def parsed(verdict):
    header = authres_parser.AuthenticationResultsHeader.parse_value(verdict.header)
    assert header.authserv_id == ME
    return {(r.method, r.result): {(p.type, p.name): p.value for p in r.properties} for r in header.results}


# ------------------------------------------------------------------------------------------- SPF

@pytest.mark.parametrize("record, ip, result", [
    (f"v=spf1 ip4:{CLIENT} -all", CLIENT, "pass"),
    ("v=spf1 ip4:192.0.2.0/24 -all", CLIENT, "pass"),
    ("v=spf1 ip4:198.51.100.1 -all", CLIENT, "fail"),
    ("v=spf1 ip4:198.51.100.1 ~all", CLIENT, "softfail"),
    ("v=spf1 ?all", CLIENT, "neutral"),
    ("v=spf1 ip4:198.51.100.1", CLIENT, "neutral"),
    ("v=spf1 a mx -all", CLIENT, "pass"),
    ("v=spf1 a:out.acme.test/24 -all", "192.0.2.99", "pass"),
    ("v=spf1 include:_spf.provider.test -all", CLIENT, "pass"),
    ("v=spf1 include:_spf.provider.test -all", "198.51.100.7", "fail"),
    ("v=spf1 redirect=_spf.provider.test", CLIENT, "pass"),
    ("v=spf1 exists:%{i}._ip.acme.test -all", CLIENT, "pass"),
    ("v=spf1 exists:%{ir}.%{l1r+-}._rev.%{d2} -all", CLIENT, "pass"),
    ("v=spf1 ip6:2001:db8::/32 -all", "2001:db8::25", "pass"),
    ("v=spf1 ip4:192.0.2.0/24 -all", f"::ffff:{CLIENT}", "pass"),
    ("v=spf1 -all", CLIENT, "fail"),
    ("v=spf1 ip4:192.0.2.300 -all", CLIENT, "permerror"),
    ("v=spf1 bogus:acme.test -all", CLIENT, "permerror"),
    ("v=spf1 include:nospf.acme.test -all", CLIENT, "permerror"),
    ("v=spf1 exists:%{z}.acme.test -all", CLIENT, "permerror"),
])
async def test_spf_results(dns_server, record, ip, result):
    dns_server.add("acme.test", "TXT", record)
    dns_server.add("acme.test", "A", CLIENT)
    dns_server.add("acme.test", "MX", "10 mail.acme.test.")
    dns_server.add("mail.acme.test", "A", "198.51.100.50")
    dns_server.add("out.acme.test", "A", "192.0.2.1")
    dns_server.add("_spf.provider.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    dns_server.add(f"{CLIENT}._ip.acme.test", "A", "127.0.0.2")
    dns_server.add("25.2.0.192.alice._rev.acme.test", "A", "127.0.0.2")
    dns_server.add("nospf.acme.test", "A", "192.0.2.1")
    verdict = await check(dns_server, ip=ip)
    assert (verdict.spf, verdict.spf_domain) == (result, "acme.test"), verdict.reasons
    assert ("spf", result) in parsed(verdict)
    assert parsed(verdict)[("spf", result)] == {("smtp", "mailfrom"): "alice@acme.test"}


async def test_spf_none_without_a_record_and_for_a_single_label_domain(dns_server):
    dns_server.add("acme.test", "A", CLIENT)
    assert (await check(dns_server)).spf == "none"
    assert (await check(dns_server, mail_from="root@localhost")).spf == "none"


async def test_spf_two_records_is_permerror(dns_server):
    dns_server.add("acme.test", "TXT", "v=spf1 -all", f"v=spf1 ip4:{CLIENT} -all")
    assert (await check(dns_server)).spf == "permerror"


async def test_spf_include_loop_is_stopped_by_the_lookup_limit(dns_server):
    dns_server.add("acme.test", "TXT", "v=spf1 include:loop.acme.test -all")
    dns_server.add("loop.acme.test", "TXT", "v=spf1 include:acme.test -all")
    verdict = await check(dns_server)
    assert verdict.spf == "permerror"
    assert "more than 10" in verdict.reasons["spf"]
    assert dns_server.queried("acme.test", "TXT") + dns_server.queried("loop.acme.test", "TXT") <= 2  # cached


async def test_spf_eleven_lookups_is_permerror_ten_is_not(dns_server):
    for i in range(11):
        dns_server.add(f"i{i}.acme.test", "TXT", "v=spf1 ?all" if i < 10 else f"v=spf1 ip4:{CLIENT} -all")
    dns_server.add("acme.test", "TXT", "v=spf1 " + " ".join(f"include:i{i}.acme.test" for i in range(11)) + " -all")
    verdict = await check(dns_server)
    assert verdict.spf == "permerror" and "4.6.4" in verdict.reasons["spf"]
    dns_server.set("acme.test", "TXT", "v=spf1 " + " ".join(f"include:i{i}.acme.test" for i in range(9)) + f" ip4:{CLIENT} -all")
    assert (await check(dns_server)).spf == "pass"


async def test_spf_third_void_lookup_is_permerror(dns_server):
    dns_server.add("acme.test", "TXT", f"v=spf1 a:v1.acme.test a:v2.acme.test ip4:{CLIENT} -all")
    assert (await check(dns_server)).spf == "pass"
    dns_server.set("acme.test", "TXT", f"v=spf1 a:v1.acme.test a:v2.acme.test mx:v3.acme.test ip4:{CLIENT} -all")
    verdict = await check(dns_server)
    assert verdict.spf == "permerror" and "void" in verdict.reasons["spf"]


async def test_spf_null_sender_checks_helo(dns_server):
    dns_server.add("mail.acme.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    verdict = await check(dns_server, mail_from="")
    assert (verdict.spf, verdict.spf_domain) == ("pass", "mail.acme.test")
    assert parsed(verdict)[("spf", "pass")] == {("smtp", "helo"): "mail.acme.test"}


async def test_spf_servfail_is_temperror(dns_server):
    dns_server.servfail("acme.test", "TXT")
    verdict = await check(dns_server)
    assert verdict.spf == "temperror"


async def test_spf_unanswered_query_is_temperror_within_the_timeout(dns_server):
    dns_server.add("acme.test", "TXT", "v=spf1 include:slow.acme.test -all")
    dns_server.drop("slow.acme.test", "TXT")
    started = time.monotonic()
    verdict = await check(dns_server, dns=cache(dns_server, timeout=0.3))
    assert verdict.spf == "temperror"
    assert time.monotonic() - started < 1.5


async def test_whole_evaluation_is_bounded_by_its_timeout(dns_server):
    dns_server.drop("acme.test")
    dns_server.drop("_dmarc.acme.test")
    started = time.monotonic()
    verdict = await check(dns_server, dns=cache(dns_server, timeout=5.0), timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert (verdict.spf, verdict.dmarc, verdict.reject_by_dmarc) == ("temperror", "temperror", False)


# ------------------------------------------------------------------------------------------- DKIM

async def test_dkim_pass_and_altered_body_fails(dns_server, key):
    pem, record = key
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    signed = sign(message(), pem)
    verdict = await check(dns_server, signed)
    assert verdict.dkim == [("pass", "acme.test", "sel")]
    props = parsed(verdict)[("dkim", "pass")]
    assert props[("header", "d")] == "acme.test" and props[("header", "s")] == "sel"
    assert len(props[("header", "b")]) == 8
    altered = signed.replace(b"Hello.", b"Hellp.")
    assert (await check(dns_server, altered)).dkim == [("fail", "acme.test", "sel")]
    assert (await check(dns_server, signed.replace(b"Subject: Question", b"Subject: Answer"))).dkim[0][0] == "fail"


async def test_dkim_missing_key_unreadable_signature_and_dns_error(dns_server, key):
    pem, record = key
    signed = sign(message(), pem, selector="gone")
    assert (await check(dns_server, signed)).dkim == [("permerror", "acme.test", "gone")]
    dns_server.servfail("gone._domainkey.acme.test")
    assert (await check(dns_server, signed)).dkim == [("temperror", "acme.test", "gone")]
    broken = b"DKIM-Signature: this is not a tag list\r\n" + message()
    assert (await check(dns_server, broken)).dkim[0][0] == "neutral"


async def test_every_signature_is_evaluated_up_to_the_bound(dns_server, key):
    pem, record = key
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    dns_server.add("sel._domainkey.relay.test", "TXT", record)
    raw = sign(sign(message(), pem, domain="relay.test"), pem)
    raw = raw.replace(b"Hello.", b"Hello.")  # both intact
    verdict = await check(dns_server, raw)
    assert verdict.dkim == [("pass", "acme.test", "sel"), ("pass", "relay.test", "sel")]
    many = message()
    for _ in range(MAX_SIGNATURES + 2):
        many = sign(many, pem)
    verdict = await check(dns_server, many)
    assert [r for r, _, _ in verdict.dkim] == ["pass"] * MAX_SIGNATURES + ["policy"] * 2


# ------------------------------------------------------------------------------------------- DMARC

async def test_dmarc_passes_on_aligned_dkim_when_spf_fails(dns_server, key):
    pem, record = key
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    dns_server.add("acme.test", "TXT", "v=spf1 -all")
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject; rua=mailto:d@acme.test")
    verdict = await check(dns_server, sign(message(), pem), mail_from="bounce@forwarder.test")
    assert (verdict.spf, verdict.dmarc, verdict.dmarc_policy, verdict.reject_by_dmarc) == ("none", "pass", "reject", False)
    assert parsed(verdict)[("dmarc", "pass")] == {("header", "from"): "acme.test"}


async def test_dmarc_fail_under_p_reject_is_a_reject(dns_server, key):
    pem, record = key
    dns_server.add("sel._domainkey.other.test", "TXT", record)
    dns_server.add("acme.test", "TXT", "v=spf1 ip4:198.51.100.1 -all")
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    verdict = await check(dns_server, sign(message(), pem, domain="other.test"))  # unaligned d=
    assert verdict.dkim == [("pass", "other.test", "sel")]
    assert (verdict.spf, verdict.dmarc, verdict.dmarc_policy, verdict.reject_by_dmarc) == ("fail", "fail", "reject", True)
    assert summarise(verdict.header) == verdict.summary() == {"spf": "fail", "dkim": "pass", "dmarc": "fail",
                                                              "header": verdict.header}
    dns_server.set("_dmarc.acme.test", "TXT", "v=DMARC1; p=quarantine")
    verdict = await check(dns_server, sign(message(), pem, domain="other.test"))
    assert (verdict.dmarc, verdict.dmarc_policy, verdict.reject_by_dmarc) == ("fail", "quarantine", False)


async def test_dmarc_passes_on_spf_aligned_in_relaxed_mode_only(dns_server):
    dns_server.add("bounces.acme.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    verdict = await check(dns_server, mail_from="b+1@bounces.acme.test")
    assert (verdict.spf, verdict.dmarc) == ("pass", "pass")
    dns_server.set("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject; aspf=s")
    verdict = await check(dns_server, mail_from="b+1@bounces.acme.test")
    assert (verdict.spf, verdict.dmarc, verdict.reject_by_dmarc) == ("pass", "fail", True)


async def test_dmarc_subdomain_uses_sp_of_the_organizational_domain(dns_server):
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
    raw = message(sender="news@mail.acme.test")
    verdict = await check(dns_server, raw, mail_from="x@elsewhere.test")
    assert (verdict.from_domain, verdict.dmarc, verdict.dmarc_policy) == ("mail.acme.test", "fail", "quarantine")
    assert dns_server.queried("_dmarc.mail.acme.test", "TXT") == 1 and dns_server.queried("_dmarc.acme.test", "TXT") == 1
    dns_server.add("_dmarc.mail.acme.test", "TXT", "v=DMARC1; p=none")  # the subdomain's own record wins
    verdict = await check(dns_server, raw, mail_from="x@elsewhere.test")
    assert (verdict.dmarc, verdict.dmarc_policy) == ("fail", "none")


async def test_dmarc_organizational_domain_under_a_multi_label_public_suffix(dns_server):
    dns_server.add("_dmarc.acme.co.uk", "TXT", "v=DMARC1; p=reject")
    verdict = await check(dns_server, message(sender="a@deep.sub.acme.co.uk"), mail_from="a@x.test")
    assert (verdict.dmarc, verdict.dmarc_policy) == ("fail", "reject")
    assert dns_server.queried("_dmarc.co.uk", "TXT") == 0 and dns_server.queried("_dmarc.sub.acme.co.uk", "TXT") == 0


async def test_dmarc_none_without_record_and_with_two_records(dns_server):
    assert (await check(dns_server)).dmarc == "none"
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject", "v=DMARC1; p=none")
    verdict = await check(dns_server)
    assert (verdict.dmarc, verdict.dmarc_policy, verdict.reject_by_dmarc) == ("none", "", False)


async def test_dmarc_broken_policy(dns_server):
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=block")
    assert (await check(dns_server)).dmarc == "permerror"
    dns_server.set("_dmarc.acme.test", "TXT", "v=DMARC1; p=block; rua=mailto:r@acme.test")
    verdict = await check(dns_server)
    assert (verdict.dmarc, verdict.dmarc_policy) == ("fail", "none")


async def test_dmarc_dns_trouble_is_never_a_reject(dns_server):
    dns_server.servfail("_dmarc.acme.test")
    verdict = await check(dns_server)
    assert (verdict.dmarc, verdict.reject_by_dmarc) == ("temperror", False)
    dns_server.heal()
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    dns_server.servfail("acme.test", "TXT")  # the aligned SPF identity cannot be checked
    verdict = await check(dns_server)
    assert (verdict.spf, verdict.dmarc, verdict.reject_by_dmarc) == ("temperror", "temperror", False)


async def test_dmarc_pct_zero_applies_the_milder_policy(dns_server):
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject; pct=0")
    verdict = await check(dns_server)
    assert (verdict.dmarc, verdict.dmarc_policy, verdict.reject_by_dmarc) == ("fail", "quarantine", False)


async def test_dmarc_two_from_domains_the_strictest_wins(dns_server):
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=none")
    dns_server.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=reject")
    dns_server.add("acme.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    raw = message(extra="From: Bank <security@bank.test>\r\n")
    verdict = await check(dns_server, raw)
    assert (verdict.from_domain, verdict.dmarc, verdict.reject_by_dmarc) == ("bank.test", "fail", True)


# ------------------------------------------------------------------------------------------- header

async def test_header_quotes_what_is_not_a_plain_value(dns_server):
    verdict = await check(dns_server, mail_from='"odd local;part"@acme.test')  # a quoted local-part is a pvalue
    assert parsed(verdict)[("spf", "none")] == {("smtp", "mailfrom"): '"odd local;part"@acme.test'}
    verdict = await check(dns_server, mail_from="semi;colon(x)@acme.test\r\nX-Injected: 1")
    results = parsed(verdict)
    assert set(results) == {("spf", "none"), ("dkim", "none"), ("dmarc", "none")}
    assert results[("spf", "none")][("smtp", "mailfrom")].startswith("semi;colon(x)@acme.test")
    assert "\r" not in verdict.header and "\n" not in verdict.header


async def test_with_header_removes_forged_results_and_keeps_everything_else(dns_server, key):
    pem, record = key
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    dns_server.add("arc._domainkey.relay.test", "TXT", record)
    forged = [b"Authentication-Results: MX.Gateway.Test; dkim=pass header.d=bank.test\r\n",
              b"Authentication-Results: (forged) \"mx.gateway.test\";\r\n\tspf=pass\r\n"]
    theirs = b"Authentication-Results: relay.test; spf=pass smtp.mailfrom=alice@acme.test\r\n"
    base = sign(message(), pem)
    arc_headers = b"".join(dkim.arc_sign(theirs + base, b"arc", b"relay.test", pem, b"relay.test"))
    raw = forged[0] + arc_headers + theirs + forged[1] + base
    verdict = await check(dns_server, raw)
    assert verdict.arc == "pass" and verdict.dkim[0][0] == "pass"
    assert parsed(verdict)[("arc", "pass")] == {}
    stored = with_header(raw, verdict)
    assert stored.startswith(b"Authentication-Results: mx.gateway.test;\r\n\tspf=")
    assert all(f not in stored for f in forged)
    assert arc_headers + theirs + base in stored  # ARC sets, the relay's results and the signed message, byte for byte
    assert stored.endswith(base)
    assert with_header(raw, verdict.header) == stored
    values = [v for n, v in header_fields(stored) if n == "authentication-results"]
    assert len(values) == 2
    # The stored copy still verifies: nothing signed was touched.
    again = await check(dns_server, stored)
    assert again.dkim[0][0] == "pass" and again.arc == "pass"


def test_with_header_keeps_lf_line_endings_and_a_header_only_message():
    lf = b"From: a@acme.test\nAuthentication-Results: mx.gateway.test; none\nSubject: x\n\nbody\n"
    out = with_header(lf, "mx.gateway.test; spf=pass smtp.mailfrom=a@acme.test; dmarc=none")
    assert out == (b"Authentication-Results: mx.gateway.test;\n\tspf=pass smtp.mailfrom=a@acme.test;\n\tdmarc=none\n"
                   b"From: a@acme.test\nSubject: x\n\nbody\n")
    assert with_header(b"Subject: x\r\n", "mx.gateway.test; none") == b"Authentication-Results: mx.gateway.test;\r\n\tnone\r\nSubject: x\r\n"


async def test_arc_broken_chain_is_fail(dns_server, key):
    pem, record = key
    dns_server.add("arc._domainkey.relay.test", "TXT", record)
    theirs = b"Authentication-Results: relay.test; spf=pass smtp.mailfrom=alice@acme.test\r\n"
    arc_headers = b"".join(dkim.arc_sign(theirs + message(), b"arc", b"relay.test", pem, b"relay.test"))
    verdict = await check(dns_server, arc_headers + theirs + message(body="Changed after sealing.\r\n"))
    assert verdict.arc == "fail"
    assert (await check(dns_server)).arc == "none"


# ------------------------------------------------------------------------------------------- cache

async def test_answers_are_cached_within_their_ttl_and_the_cache_is_bounded(dns_server, key):
    pem, record = key
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    dns_server.add("acme.test", "TXT", "v=spf1 include:_spf.provider.test -all")
    dns_server.add("_spf.provider.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    now = [0.0]
    dns = cache(dns_server, clock=lambda: now[0])
    raw = sign(message(), pem)
    first = await check(dns_server, raw, dns=dns)
    asked = len(dns_server.queries)
    verdicts = await asyncio.gather(*(check(dns_server, raw, dns=dns) for _ in range(20)))
    assert len(dns_server.queries) == asked and all(v == first for v in verdicts)
    assert first.dmarc == "pass"
    now[0] += dns_server.ttl + 1  # past the TTL: asked again
    await check(dns_server, raw, dns=dns)
    assert len(dns_server.queries) == 2 * asked
    small = cache(dns_server, size=2)
    await check(dns_server, raw, dns=small)
    assert len(small._entries) == 2


async def test_concurrent_questions_share_one_query(dns_server):
    dns_server.add("acme.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    dns = cache(dns_server)
    verdicts = await asyncio.gather(*(check(dns_server, dns=dns) for _ in range(10)))
    assert {v.spf for v in verdicts} == {"pass"}
    assert dns_server.queried("acme.test", "TXT") == 1
