"""Pure parts of domains: names, addresses, SPF parsing and merging, record rendering."""

from __future__ import annotations

import ipaddress

import dns.zone
import pytest

from gateway.config import Config, parse_config
from gateway.domains import spf
from gateway.domains.names import normalise_address, normalise_domain
from gateway.domains.records import Settings, plan, split_txt, zone
from gateway.errors import InvalidArgument

RESERVED = Config().domains.reserved


@pytest.mark.parametrize("raw, expected", [
    ("Acme-Mail.COM", "acme-mail.com"),
    ("mail.acme-mail.com.", "mail.acme-mail.com"),
    ("  shop.acme.de ", "shop.acme.de"),
    ("bücher.de", "xn--bcher-kva.de"),
    ("BÜCHER.de", "xn--bcher-kva.de"),
    ("xn--bcher-kva.de", "xn--bcher-kva.de"),
    ("例え.jp", "xn--r8jz45g.jp"),
])
def test_domains_are_normalised(raw, expected):
    assert normalise_domain(raw, reserved=RESERVED) == expected


@pytest.mark.parametrize("raw, why", [
    ("", "empty"), ("localhost", "two labels"), ("com", "two labels"), ("a..b.com", "label"),
    ("-a.com", "label"), ("a-.com", "label"), ("a_b.com", "label"), ("user@a.com", "'@'"), ("a b.com", "space"),
    ("192.0.2.1", "IP address"), ("a.123", "numeric"), ("x" * 64 + ".com", "label"), ("a." * 130 + "com", "253"),
    ("xn--zz.com", "A-label"), ("a.c\r\nom", "control"),
])
def test_invalid_domains_are_refused(raw, why):
    with pytest.raises(InvalidArgument, match=why):
        normalise_domain(raw, reserved=RESERVED)


@pytest.mark.parametrize("raw", ["acme.test", "example.com", "mail.example.org", "x.invalid", "printer.local", "a.localhost", "foo.onion"])
def test_reserved_domains_are_refused(raw):
    with pytest.raises(InvalidArgument, match="reserved"):
        normalise_domain(raw, reserved=RESERVED)


@pytest.mark.parametrize("raw, expected", [
    ("App@Acme.Example", "App@acme.example"), ("a.b+tag@x.example", "a.b+tag@x.example"), ("me@bücher.de", "me@xn--bcher-kva.de"),
])
def test_addresses_are_normalised(raw, expected):
    assert normalise_address(raw) == expected


@pytest.mark.parametrize("raw", ["nobody", "@x.example", "a..b@x.example", "a b@x.example", "<a@x.example>", "a@x", "a\n@x.example"])
def test_invalid_addresses_are_refused(raw):
    with pytest.raises(InvalidArgument):
        normalise_address(raw)


@pytest.mark.parametrize("existing, expected", [
    ("v=spf1 include:_spf.google.com ~all", "v=spf1 include:_spf.google.com include:_spf.gw.example ~all"),
    ("v=spf1 mx -all", "v=spf1 mx include:_spf.gw.example -all"),
    ("v=spf1 a redirect=_spf.corp.example", "v=spf1 a include:_spf.gw.example redirect=_spf.corp.example"),
    ("v=spf1 ip4:192.0.2.1", "v=spf1 ip4:192.0.2.1 include:_spf.gw.example"),
    ("v=spf1 include:_spf.gw.example ~all", "v=spf1 include:_spf.gw.example ~all"),
])
def test_spf_merge_keeps_one_record(existing, expected):
    assert spf.merge(existing, ["include:_spf.gw.example"]) == expected


def test_spf_parse_and_evaluate():
    terms, redirect = spf.parse("v=spf1 ip4:192.0.2.0/24 -ip6:2001:db8::/32 a/24 mx:mail.example//64 ?exists:%{i}.x.example ~all exp=x")
    assert [t.kind for t in terms] == ["ip4", "ip6", "a", "mx", "exists", "all"]
    assert terms[2].cidr4 == 24 and terms[3].cidr6 == 64 and terms[1].qualifier == "-"
    assert redirect is None
    policy = spf.Policy("x.example", "", terms, None, addresses={"x.example": ["198.51.100.1"]})
    assert spf.evaluate(policy, ipaddress.ip_address("192.0.2.9"), "h") == "pass"
    assert spf.evaluate(policy, ipaddress.ip_address("198.51.100.200"), "h") == "pass"  # a/24
    assert spf.evaluate(policy, ipaddress.ip_address("2001:db8::1"), "h") == "fail"
    assert spf.evaluate(policy, ipaddress.ip_address("203.0.113.1"), "h") == "softfail"
    with pytest.raises(spf.PermError):
        spf.parse("v=spf1 foo:bar -all")
    with pytest.raises(spf.PermError):
        spf.parse("v=spf1 ip4:300.1.1.1 -all")


def settings(**domains):
    return Settings.from_config(parse_config({"daemon": {"hostname": "gw.example"},
                                              "domains": {"spf_include": "_spf.gw.example", "mx_hostname": "mx.gw.example", **domains}}))


DOMAIN = {"name": "shop.example", "verification_token": "tok", "state": "pending",
          "keys": [{"selector": "s1", "algorithm": "rsa", "public_key": "A" * 392, "state": "pending"}]}


def test_plan_lists_every_record():
    records = {r.purpose: r for r in plan(DOMAIN, settings())}
    assert records["verification"].name == "_gateway.shop.example" and records["verification"].value == "gateway-verification=tok"
    assert records["spf"].value == "v=spf1 include:_spf.gw.example ~all"
    assert records["dkim"].name == "s1._domainkey.shop.example" and records["dkim"].required
    assert records["dmarc"].value == "v=DMARC1; p=none; rua=mailto:dmarc-reports@shop.example"
    assert "quarantine" in records["dmarc"].note
    assert records["mx"].value == "10 mx.gw.example." and not records["mx"].required
    assert (records["return_path_mx"].name, records["return_path_mx"].required) == ("bounces.shop.example", True)
    assert records["return_path_spf"].value == "v=spf1 include:_spf.gw.example -all"
    assert "bimi" not in records
    with_bimi = {r.purpose: r for r in plan(DOMAIN, settings(bimi_logo_url="https://{domain}/logo.svg", require_mx=True))}
    assert with_bimi["bimi"].value == "v=BIMI1; l=https://shop.example/logo.svg;" and not with_bimi["bimi"].required
    assert with_bimi["mx"].required


def test_plan_merges_existing_spf_and_keeps_existing_dmarc():
    records = {r.purpose: r for r in plan(DOMAIN, settings(), existing_spf="v=spf1 mx ~all", existing_dmarc="v=DMARC1; p=reject")}
    assert records["spf"].value == "v=spf1 mx include:_spf.gw.example ~all"
    assert "replaces" in records["spf"].note
    assert records["dmarc"].value == "v=DMARC1; p=reject"


def test_plan_without_include_lists_addresses():
    s = Settings.from_config(parse_config({"domains": {"sending_ips": ["192.0.2.1", "2001:db8::1"], "mx_hostname": "mx.gw.example"}}))
    assert s.spf_terms() == ["ip4:192.0.2.1", "ip6:2001:db8::1"]


def test_txt_split_and_zone_text_load_into_bind_parser():
    long_value = "v=DKIM1; k=rsa; p=" + "B" * 600
    assert [len(s) for s in split_txt(long_value)] == [255, 255, 108]
    records = plan({**DOMAIN, "keys": [{**DOMAIN["keys"][0], "public_key": "B" * 600}]}, settings())
    text = zone("shop.example", records)
    parsed = dns.zone.from_text(text, origin="shop.example.", relativize=False, check_origin=False)
    rdataset = parsed.find_rdataset("s1._domainkey.shop.example.", "TXT")
    (rd,) = rdataset
    assert b"".join(rd.strings).decode() == "v=DKIM1; k=rsa; p=" + "B" * 600
    assert all(len(s) <= 255 for s in rd.strings)
    assert parsed.find_rdataset("bounces.shop.example.", "MX")


def test_zone_comments_out_the_domain_mx_unless_inbound_is_wanted():
    # Pasted as told, a live MX for the domain itself would move its inbound mail to the gateway.
    text = zone("shop.example", plan(DOMAIN, settings()))
    parsed = dns.zone.from_text(text, origin="shop.example.", relativize=False, check_origin=False)
    assert parsed.get_rdataset("shop.example.", "MX") is None
    assert parsed.find_rdataset("bounces.shop.example.", "MX")  # the return path's MX stays live
    commented = [line for line in text.splitlines() if line.startswith(";") and " IN MX " in line]
    assert commented == ["; shop.example. 3600 IN MX 10 mx.gw.example."]
    reason = text.splitlines()[text.splitlines().index(commented[0]) - 1]
    assert reason.startswith(";") and "domains.require_mx" in reason and "inbound mail" in reason
    # With domains.require_mx the gateway is meant to receive the domain's mail: the record is live.
    wanted = dns.zone.from_text(zone("shop.example", plan(DOMAIN, settings(require_mx=True))), origin="shop.example.",
                                relativize=False, check_origin=False)
    assert [rd.exchange.to_text() for rd in wanted.find_rdataset("shop.example.", "MX")] == ["mx.gw.example."]
