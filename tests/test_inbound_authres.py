"""SPF, DKIM, DMARC and ARC of received mail against the tests' real DNS server, and the
Authentication-Results header parsed back with an independent RFC 8601 parser (authres)."""

from __future__ import annotations

import asyncio
import base64
import re
import time

import authres as authres_parser
import dkim
import dns.asyncresolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.inbound.authres import authenticate, header_fields, summarise, with_header
from gateway.inbound.dnscache import DnsCache
from gateway.inbound.signatures import MAX_SIGNATURES

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


async def test_spf_ptr_and_the_mx_name_bound(dns_server):
    dns_server.add("acme.test", "TXT", "v=spf1 ptr -all")
    dns_server.add("25.2.0.192.in-addr.arpa", "PTR", "mail.acme.test.")
    dns_server.add("mail.acme.test", "A", CLIENT)
    assert (await check(dns_server)).spf == "pass"
    dns_server.set("mail.acme.test", "A", "192.0.2.99")  # the name does not lead back: not validated
    assert (await check(dns_server)).spf == "fail"
    dns_server.set("acme.test", "TXT", "v=spf1 mx -all")
    dns_server.add("acme.test", "MX", *(f"{i} mx{i}.acme.test." for i in range(11)))
    verdict = await check(dns_server)
    assert verdict.spf == "permerror" and "MX names" in verdict.reasons["spf"]


async def test_dns_errors_are_not_cached_negative_answers_are(dns_server):
    dns = cache(dns_server)
    dns_server.servfail("acme.test", "TXT")
    assert (await check(dns_server, dns=dns)).spf == "temperror"
    dns_server.heal()
    dns_server.add("acme.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    assert (await check(dns_server, dns=dns)).spf == "pass"
    asked = dns_server.queried("_dmarc.acme.test", "TXT")
    await check(dns_server, dns=dns)
    assert dns_server.queried("_dmarc.acme.test", "TXT") == asked  # its NXDOMAIN is kept for the SOA's TTL


async def test_spf_null_sender_checks_helo(dns_server):
    dns_server.add("mail.acme.test", "TXT", f"v=spf1 ip4:{CLIENT} -all")
    verdict = await check(dns_server, mail_from="")
    assert (verdict.spf, verdict.spf_domain) == ("pass", "mail.acme.test")
    assert parsed(verdict)[("spf", "pass")] == {("smtp", "helo"): "mail.acme.test"}


async def test_spf_null_sender_with_an_address_literal_helo_is_none(dns_server):
    verdict = await check(dns_server, mail_from="", helo="[192.0.2.25]")
    assert verdict.spf == "none"
    assert dns_server.queries == [] or all(not n.startswith("192.0.2.25") for n, _ in dns_server.queries)


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
    unreadable = signed.replace(b" bh=", b" bh=!!", 1)  # an invalid signature costs no key lookup
    dns_server.heal()
    asked = dns_server.queried("gone._domainkey.acme.test", "TXT")
    assert (await check(dns_server, unreadable)).dkim == [("neutral", "acme.test", "gone")]
    assert dns_server.queried("gone._domainkey.acme.test", "TXT") == asked


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


def ed25519_key():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed), "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode()


# RFC 8301 refuses keys below 1,024 bits and cryptography will not make one: this 768-bit key was
# made once with `openssl genrsa -traditional 768`, for this test only.
SMALL_KEY = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIIBygIBAAJhALhkwcwK5KzwrHkze2ih+toCRHhnvIB30Z0eUXb9umebxKFk6nnE
r6GRRSQYIOcscwW6vsnacZJahA/YGnDb+zxag2hPJbDA7Z/Z35ngr06sBfhP6X6q
h1I7XcoCVEUDewIDAQABAmBfd7MqvD0XGOiDO9daHfstolzm5fafoOmC6m6NJ+K5
v9k3InOPpfi0suzUOjXW2pi1kj6a2hgmFs9pNR5ornpzBNLoLLBifZ7A5pEqKxcs
+2h/bDJkZTVm24ZQqlpXH5kCMQDkA3m0iNUzXqCNoreW5+VRPrYkuJ9neHE/ezG8
PIGj9RstivRzKETTFb0yEKHWCqcCMQDPBq0+uA2V9IGV5XH1GahIQuBh4hK8yvZi
wlRRyGnAopScJx98sqFopjAnMNTJ3w0CMENt9675DDu9zzMznKFnALzvE8R2SMW7
q5n/X6zwI9KN6LSmNDZeAUR/WE0W+BUpXwIxAJms0x0jcrJFdYvXbegKy6gYPIds
UYxi/NICfqTWp+mexcHEKNNfpgEQm937mXjgYQIwHdlOOIgRzj8oQGCxlBauFjEU
XGYgHXyEC/pQgzKzJDfoVI4keXxY3tnfVdyWG1it
-----END RSA PRIVATE KEY-----
"""


def small_rsa_key():
    public = serialization.load_pem_private_key(SMALL_KEY, password=None).public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return SMALL_KEY, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


async def test_dkim_key_kinds_and_signature_variants(dns_server, key):
    pem, record = key
    seed, ed_record = ed25519_key()
    small_pem, small_record = small_rsa_key()
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    dns_server.add("ed._domainkey.acme.test", "TXT", ed_record)
    dns_server.add("small._domainkey.acme.test", "TXT", small_record)
    dns_server.add("revoked._domainkey.acme.test", "TXT", "v=DKIM1; k=rsa; p=")
    dns_server.add("web._domainkey.acme.test", "TXT", record.replace("k=rsa;", "k=rsa; s=tlsrpt;"))
    base = message()
    ed = dkim.sign(base, b"ed", b"acme.test", seed, signature_algorithm=b"ed25519-sha256") + base
    assert (await check(dns_server, ed)).dkim == [("pass", "acme.test", "ed")]
    assert (await check(dns_server, ed.replace(b"Hello.", b"Hi."))).dkim[0][0] == "fail"
    length = dkim.sign(base, b"sel", b"acme.test", pem, length=True) + base
    assert (await check(dns_server, length + b"-- \r\nAppended by a list\r\n")).dkim[0][0] == "pass"
    sha1 = dkim.sign(base, b"sel", b"acme.test", pem, signature_algorithm=b"rsa-sha1") + base
    assert (await check(dns_server, sha1)).dkim[0][0] == "fail"  # RFC 8301
    expired = sign(base, pem).replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; x=1000000000;", 1)
    assert (await check(dns_server, expired)).dkim[0][0] == "fail"
    assert (await check(dns_server, sign(base, small_pem, selector="small"))).dkim[0][0] == "permerror"
    assert (await check(dns_server, sign(base, pem, selector="revoked"))).dkim[0][0] == "permerror"
    assert (await check(dns_server, sign(base, pem, selector="web"))).dkim[0][0] == "permerror"
    wrong_type = sign(base, pem).replace(b"s=sel", b"s=ed")
    assert (await check(dns_server, wrong_type)).dkim[0][0] == "permerror"
    no_from = re.sub(rb"h=[^;]*;", b"h=to : subject;", sign(base, pem), count=1)
    assert (await check(dns_server, no_from)).dkim[0][0] == "neutral"


async def test_dkim_verdicts_agree_with_dkimpy(dns_server, key):
    """Our verifier (dkimpy's canonicalization, OpenSSL's RSA) against dkimpy's own verify."""
    pem, record = key
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    base = message(body="Line one.\r\n  indented  line \t\r\n\r\n\r\n")
    cases = []
    for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple"), (b"simple", b"relaxed")):
        signed = dkim.sign(base, b"sel", b"acme.test", pem, canonicalize=canon,
                           include_headers=[b"from", b"to", b"subject", b"date", b"from"]) + base
        cases += [signed, signed.replace(b"  indented  line", b" indented line"), signed.replace(b"Subject: Question",
                  b"Subject:  Question"), signed.replace(b"Subject: Question", b"subject:Question"),
                  signed.replace(b"\r\n\r\nLine", b"\r\nFrom: Mallory <m@evil.test>\r\n\r\nLine"),
                  signed.replace(b"Line one.", b"Line 1.")]
    records = {b"sel._domainkey.acme.test.": record.encode()}
    for raw in cases:
        expected = "pass" if dkim.verify(raw, dnsfunc=lambda name, timeout=5: records.get(name)) else "fail"
        assert (await check(dns_server, raw)).dkim[0][0] == expected, raw
    assert {"pass", "fail"} <= {(await check(dns_server, raw)).dkim[0][0] for raw in cases}


async def test_large_message_is_verified_off_the_loop_with_the_same_result(dns_server, key):
    pem, record = key
    dns_server.add("sel._domainkey.acme.test", "TXT", record)
    big = sign(message(body="x" * 76 + "\r\n" * 1 + ("y" * 998 + "\r\n") * 400), pem)
    assert len(big) > 300_000
    assert (await check(dns_server, big)).dkim[0][0] == "pass"
    assert (await check(dns_server, big[:-10] + b"tampered\r\n")).dkim[0][0] == "fail"


HOSTILE = [
    b"",
    b"\r\n\r\n",
    b"no header section at all",
    b"From\r\n\r\nbody",
    b"From: <>\r\nDKIM-Signature: v=1; a=rsa-sha256; d=acme.test; s=sel; h=from; bh=!!; b=??\r\n\r\nx",
    b"DKIM-Signature: v=1; a=rsa-sha256; d=ac(me.test; s=sel; h=from; bh=AAAA; b=AAAA\r\nFrom: a@acme.test\r\n\r\n",
    b"DKIM-Signature: " + b"a=" * 5000 + b"\r\nFrom: a@acme.test\r\n\r\n",
    b"From: =?utf-8?q?=FF=FE?= <a@\xff\xfe.test>, \"x\" <@>, group: b@acme.test;\r\n\r\n",
    b"From: a@" + b"very-long-label" * 30 + b".test\r\n\r\n",
    b"\x00\x01\x02: \xff\r\n continuation without field\r\nFrom: a@acme.test\r\n\r\n\x00",
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=relay.test; s=arc; b=AAAA\r\nFrom: a@acme.test\r\n\r\n",
    b"ARC-Seal: i=99; cv=pass\r\n" * 12 + b"From: a@acme.test\r\n\r\n",
]


@pytest.mark.parametrize("raw", HOSTILE)
async def test_hostile_messages_get_a_verdict_not_an_exception(dns_server, raw):
    dns_server.add("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    verdict = await check(dns_server, raw)
    assert verdict.spf == "none" and verdict.header.startswith(ME + ";")
    authres_parser.AuthenticationResultsHeader.parse_value(verdict.header)
    stored = with_header(raw, verdict)
    assert stored.startswith(b"Authentication-Results: " + ME.encode() + b";")


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


async def test_dmarc_of_an_internationalised_from_domain_asks_its_a_labels(dns_server):
    dns_server.add("_dmarc.xn--bcher-kva.test", "TXT", "v=DMARC1; p=reject")
    verdict = await check(dns_server, message(sender="info@bücher.test"), mail_from="x@elsewhere.test")
    assert (verdict.from_domain, verdict.dmarc, verdict.reject_by_dmarc) == ("xn--bcher-kva.test", "fail", True)


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
