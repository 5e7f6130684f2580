"""Domain verification against a real authoritative DNS server on loopback, through the admin socket."""

from __future__ import annotations

import base64

import dkim
import dns.name
import pytest

from tests.support.daemon import AdminError, running_daemon
from tests.support.dns import GATEWAY_IP, dns_overrides
from tests.support.tenancy import publish_records, sending_setup


@pytest.fixture
async def gw(tmp_path, dns_server):
    overrides = dns_overrides(dns_server, timeout=1.5)  # 0.4 s timed out every lookup once in a full CI run (all records "error")
    overrides["domains"]["reverify_interval"] = 0.0  # tests drive rounds themselves
    async with running_daemon(tmp_path, overrides) as d:
        await d.call("tenant.add", name="acme")
        yield d, dns_server


async def added(d, dns, domain="acme.test", **kw):
    record = await d.call("domain.add", tenant="acme", domain=domain, **kw)
    await publish_records(d, dns, record["name"])
    return record


def by_purpose(result, purpose):
    return [r for r in result["records"] if r["purpose"] == purpose]


async def test_all_records_correct_verifies_and_activates_the_key(gw):
    d, dns = gw
    record = await added(d, dns)
    assert [k["state"] for k in record["keys"]] == ["pending"]
    result = await d.call("domain.verify", domain="acme.test")
    assert result["state"] == "verified", result
    assert {r["status"] for r in result["records"] if r["required"]} == {"verified"}
    # The zone text leaves the domain's own MX commented out (optional, no inbound): not published.
    assert [(r["required"], r["status"]) for r in by_purpose(result, "mx")] == [(False, "missing")]
    assert result["dmarc_policy"] == "none"
    assert by_purpose(result, "spf")[0]["ip_results"] == {GATEWAY_IP: "pass"}
    assert result["activated_selectors"] == [record["keys"][0]["selector"]]
    keys = await d.store.domains.signing_keys("acme.test")
    assert [k["selector"] for k in keys] == [record["keys"][0]["selector"]]
    assert result["duration_ms"] < 1000


async def test_every_query_is_fresh(gw):
    d, dns = gw
    await added(d, dns)
    await d.call("domain.verify", domain="acme.test")
    before = dns.queried("_dmarc.acme.test", "TXT")
    await d.call("domain.verify", domain="acme.test")
    assert dns.queried("_dmarc.acme.test", "TXT") == before + 1


@pytest.mark.parametrize("purpose", ["verification", "spf", "dkim", "dmarc", "return_path_mx", "return_path_spf"])
async def test_each_missing_required_record_is_reported_missing(gw, purpose):
    d, dns = gw
    await added(d, dns)
    records = (await d.call("domain.records", domain="acme.test"))["records"]
    target = next(r for r in records if r["purpose"] == purpose)
    dns.remove(target["name"], target["type"], target["value"] if target["type"] == "TXT" else None)
    result = await d.call("domain.verify", domain="acme.test")
    assert result["state"] == "pending"
    failed = [r for r in result["records"] if r["required"] and r["status"] != "verified"]
    assert [(r["purpose"], r["status"]) for r in failed] == [(purpose, "missing")]


async def test_optional_mx_missing_still_verifies(gw):
    d, dns = gw
    await added(d, dns)
    dns.remove("acme.test", "MX")
    result = await d.call("domain.verify", domain="acme.test")
    assert result["state"] == "verified"
    assert by_purpose(result, "mx")[0]["status"] == "missing"


async def test_dkim_key_mismatch_reports_the_found_value(gw):
    d, dns = gw
    record = await added(d, dns)
    selector = record["keys"][0]["selector"]
    other = "v=DKIM1; k=rsa; p=" + base64.b64encode(b"not our key").decode()
    dns.set(f"{selector}._domainkey.acme.test", "TXT", other)
    result = await d.call("domain.verify", domain="acme.test")
    (dkim_result,) = by_purpose(result, "dkim")
    assert dkim_result["status"] == "mismatch"
    assert dkim_result["found"] == other
    assert result["state"] == "pending"


async def test_dkim_delegated_by_cname(gw):
    d, dns = gw
    record = await added(d, dns)
    selector = record["keys"][0]["selector"]
    name = f"{selector}._domainkey.acme.test"
    value = dns.records(name, "TXT")[0]
    dns.remove(name)
    # The tenant delegates its selectors to a DNS provider's zone: selector CNAME -> provider name.
    dns.add(name, "CNAME", f"{selector}.acme.dkim.provider.test.")
    dns.add(f"{selector}.acme.dkim.provider.test", "TXT", value)
    result = await d.call("domain.verify", domain="acme.test")
    (dkim_result,) = by_purpose(result, "dkim")
    assert dkim_result["status"] == "verified"
    assert "via CNAME" in dkim_result["detail"]
    assert result["state"] == "verified"


async def test_two_spf_records_are_a_permerror(gw):
    d, dns = gw
    await added(d, dns)
    dns.add("acme.test", "TXT", "v=spf1 ip4:198.51.100.1 -all")
    result = await d.call("domain.verify", domain="acme.test")
    (spf_result,) = by_purpose(result, "spf")
    assert spf_result["status"] == "mismatch"
    assert "2 SPF records" in spf_result["detail"]
    assert result["state"] == "pending"


async def test_spf_over_ten_lookups_is_a_permerror(gw):
    d, dns = gw
    await added(d, dns)
    includes = []
    for i in range(11):
        dns.set(f"_spf{i}.other.test", "TXT", f"v=spf1 ip4:198.51.100.{i} -all")
        includes.append(f"include:_spf{i}.other.test")
    dns.set("acme.test", "TXT", f"v=spf1 include:_spf.gateway.test {' '.join(includes)} ~all")
    result = await d.call("domain.verify", domain="acme.test")
    (spf_result,) = by_purpose(result, "spf")
    assert spf_result["status"] == "mismatch"
    assert "4.6.4" in spf_result["detail"] and "permerror" in spf_result["detail"]


async def test_spf_reached_through_nested_includes(gw):
    d, dns = gw
    await added(d, dns)
    dns.set("acme.test", "TXT", "v=spf1 mx include:_spf.esp.test ~all")
    dns.set("_spf.esp.test", "TXT", "v=spf1 ip4:198.51.100.7 include:_spf2.esp.test -all")
    dns.set("_spf2.esp.test", "TXT", "v=spf1 include:_spf.gateway.test -all")
    result = await d.call("domain.verify", domain="acme.test")
    (spf_result,) = by_purpose(result, "spf")
    assert spf_result["status"] == "verified", spf_result
    assert spf_result["ip_results"] == {GATEWAY_IP: "pass"}
    assert spf_result["lookups"] == 4  # mx, 3 includes
    assert result["state"] == "verified"


async def test_spf_that_does_not_authorise_the_gateway(gw):
    d, dns = gw
    await added(d, dns)
    dns.set("acme.test", "TXT", f"v=spf1 -ip4:{GATEWAY_IP} include:_spf.gateway.test ~all")
    (spf_result,) = by_purpose(await d.call("domain.verify", domain="acme.test"), "spf")
    assert spf_result["status"] == "mismatch"
    assert f"{GATEWAY_IP} -> fail" in spf_result["detail"]


@pytest.mark.parametrize("failure", ["servfail", "drop"])
async def test_servfail_and_timeout_are_errors_not_missing(gw, failure):
    d, dns = gw
    await added(d, dns)
    assert (await d.call("domain.verify", domain="acme.test"))["state"] == "verified"
    getattr(dns, failure)("_dmarc.acme.test")
    result = await d.call("domain.verify", domain="acme.test")
    (dmarc_result,) = by_purpose(result, "dmarc")
    assert dmarc_result["status"] == "error"
    assert ("SERVFAIL" if failure == "servfail" else "timeout") in dmarc_result["detail"]
    assert result["outcome"] == "error"
    assert result["state"] == "verified"  # a resolver problem does not take the domain down


async def test_removed_record_turns_domain_failing_then_back(gw):
    d, dns = gw
    await added(d, dns)
    await d.call("domain.verify", domain="acme.test")
    dns.remove("bounces.acme.test", "MX")
    summary = await d.call("domain.reverify")
    assert summary["states"] == {"failing": 1}
    shown = await d.call("domain.show", domain="acme.test")
    assert shown["state"] == "failing"
    assert {r["purpose"]: r["last_status"] for r in shown["records"]}["return_path_mx"] == "missing"
    events = await d.store.events.list(subject="acme.test", kind="domain_failing")
    assert events and "bounces.acme.test MX" in events[0]["data"]["failed"]
    await publish_records(d, dns, "acme.test")
    assert (await d.call("domain.verify", domain="acme.test"))["state"] == "verified"


async def test_periodic_reverifier_marks_failing(tmp_path, dns_server):
    overrides = dns_overrides(dns_server, timeout=0.4)
    overrides["domains"]["reverify_interval"] = 0.1
    async with running_daemon(tmp_path, overrides) as d:
        setup = await sending_setup(d, dns_server)
        reverifier = next(c for c in d.daemon.components if c.name == "domain-reverifier").job  # under its lease (gateway/singleton.py)
        dns_server.remove("_dmarc.acme.test", "TXT")
        await reverifier.next_round()
        round_ = await reverifier.next_round()  # a whole round that began after the removal
        assert round_["checked"] == 1
        context = await d.store.usecases.context(setup["usecase_id"])
        assert context["domain_state"] == "failing"
        status = await d.call("status")
        assert status["domain_reverifier"]["rounds"] >= 2


async def test_generated_keys_sign_and_verify_with_dkimpy(gw):
    d, dns = gw
    record = await added(d, dns, dkim="both", selector="s1")
    assert sorted((k["selector"], k["algorithm"]) for k in record["keys"]) == [("s1", "rsa"), ("s1-ed", "ed25519")]
    assert (await d.call("domain.verify", domain="acme.test"))["state"] == "verified"
    message = b"From: app@acme.test\r\nTo: someone@example.net\r\nSubject: hi\r\n\r\nhello\r\n"

    def dnsfunc(name, timeout=5):
        values = dns.records(name.decode() if isinstance(name, bytes) else name, "TXT")
        return values[0].encode() if values else None

    from cryptography.hazmat.primitives import serialization

    for key in await d.store.domains.signing_keys("acme.test"):
        pem = key["private_pem"].encode()
        if key["algorithm"] == "rsa":
            private = serialization.load_pem_private_key(pem, None).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
            sig = dkim.sign(message, key["selector"].encode(), b"acme.test", private, include_headers=[b"from", b"to", b"subject"])
        else:
            raw = serialization.load_pem_private_key(pem, None).private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
            sig = dkim.sign(message, key["selector"].encode(), b"acme.test", base64.b64encode(raw),
                            signature_algorithm=b"ed25519-sha256", include_headers=[b"from", b"to", b"subject"])
        assert dkim.verify(sig + message, dnsfunc=dnsfunc), key
        assert not dkim.verify(sig + message.replace(b"hello", b"HELLO"), dnsfunc=dnsfunc)


async def test_dkim_verifies_through_the_dns_server_itself(gw):
    """dkimpy's own resolver path, pointed at the test server by a dnsfunc that asks it over UDP/TCP."""
    d, dns = gw
    await added(d, dns)
    await d.call("domain.verify", domain="acme.test")
    (key,) = await d.store.domains.signing_keys("acme.test")
    import dns.resolver as resolver_module
    from cryptography.hazmat.primitives import serialization

    resolver = resolver_module.Resolver(configure=False)
    resolver.nameservers, resolver.port = [dns.host], dns.port

    def dnsfunc(name, timeout=5):
        answer = resolver.resolve(dns_name(name), "TXT")
        return b"".join(answer[0].strings)

    private = serialization.load_pem_private_key(key["private_pem"].encode(), None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    message = b"From: app@acme.test\r\nSubject: x\r\n\r\nbody\r\n"
    signed = dkim.sign(message, key["selector"].encode(), b"acme.test", private) + message
    assert dkim.verify(signed, dnsfunc=dnsfunc)


def dns_name(name):
    return dns.name.from_text(name.decode() if isinstance(name, bytes) else name)


async def test_rotation_signs_with_new_key_only_once_verified(gw):
    d, dns = gw
    first = (await added(d, dns, selector="one"))["keys"][0]
    await d.call("domain.verify", domain="acme.test")
    rotated = await d.call("domain.rotate_dkim", domain="acme.test", selector="two")
    assert {k["selector"]: k["state"] for k in rotated["keys"]} == {"one": "active", "two": "pending"}
    # Not yet published: the domain stays verified, the old key keeps signing.
    result = await d.call("domain.verify", domain="acme.test")
    assert result["state"] == "verified"
    assert [k["selector"] for k in await d.store.domains.signing_keys("acme.test")] == ["one"]
    await publish_records(d, dns, "acme.test")
    result = await d.call("domain.verify", domain="acme.test")
    assert result["activated_selectors"] == ["two"]
    assert [k["selector"] for k in await d.store.domains.signing_keys("acme.test")] == ["two"]
    shown = await d.call("domain.show", domain="acme.test")
    assert {k["selector"]: k["state"] for k in shown["keys"]} == {"one": "retired", "two": "active"}
    with pytest.raises(AdminError, match="active"):
        await d.call("domain.remove_selector", domain="acme.test", selector="two")
    # Key "one" as a row from before the store held private keys: its old file goes with it.
    old_file = d.daemon.paths.state_dir / "keys" / "acme.test" / "one.rsa.abc123.pem"
    old_file.parent.mkdir(parents=True)
    old_file.write_text("-----BEGIN PRIVATE KEY-----\n")
    await d.store.db.write(lambda c: c.execute("UPDATE dkim_keys SET key_path = ? WHERE selector = 'one'", (str(old_file),)))
    await d.call("domain.remove_selector", domain="acme.test", selector=first["selector"])
    assert [k["selector"] for k in (await d.call("domain.show", domain="acme.test"))["keys"]] == ["two"]
    assert not old_file.exists() and not old_file.parent.exists()


@pytest.mark.parametrize("values, status, policy, detail", [
    (["v=DMARC1; p=quarantine; pct=50; rua=mailto:d@acme.test"], "verified", "quarantine", "policy p=quarantine, pct=50"),
    (["v=DMARC1;p=reject"], "verified", "reject", "policy p=reject"),
    (["v=DMARC1; p=bogus"], "mismatch", None, "unparseable"),
    (["v=DMARC1; rua=mailto:d@acme.test"], "mismatch", None, "unparseable"),  # no p= at all
    (["v=DMARC1; p=none", "v=DMARC1; p=reject"], "mismatch", None, "several DMARC records"),
    (["v=spf1 -all"], "missing", None, "no v=DMARC1 record"),  # a TXT there, but not DMARC
])
async def test_dmarc_edge_cases(gw, values, status, policy, detail):
    d, dns = gw
    await added(d, dns)
    dns.remove("_dmarc.acme.test", "TXT")
    for value in values:
        dns.add("_dmarc.acme.test", "TXT", value)
    result = await d.call("domain.verify", domain="acme.test")
    (dmarc,) = by_purpose(result, "dmarc")
    assert dmarc["status"] == status, dmarc
    assert detail in dmarc["detail"], dmarc
    assert result["dmarc_policy"] == policy
    assert result["state"] == ("verified" if status == "verified" else "pending")


async def test_dmarc_inherited_from_the_organisational_domain(gw):
    d, dns = gw
    await added(d, dns, domain="mail.acme.test")
    dns.remove("_dmarc.mail.acme.test", "TXT")
    dns.set("_dmarc.acme.test", "TXT", "v=DMARC1; p=reject")
    result = await d.call("domain.verify", domain="mail.acme.test")
    (dmarc,) = by_purpose(result, "dmarc")
    assert dmarc["status"] == "verified" and "inherited from acme.test" in dmarc["detail"], dmarc
    assert result["dmarc_policy"] == "reject" and result["state"] == "verified"


@pytest.mark.parametrize("record, extra, status, detail", [
    # redirect= is followed, and counts as a lookup
    ("v=spf1 redirect=_spf.corp.test", {"_spf.corp.test": "v=spf1 include:_spf.gateway.test -all"}, "verified", ""),
    # an include that leads nowhere is a permerror (RFC 7208 5.2), not a pass
    ("v=spf1 include:nospf.test include:_spf.gateway.test ~all", {}, "mismatch", "nospf.test"),
    # more than two void lookups (4.6.4)
    ("v=spf1 a:void1.test a:void2.test a:void3.test include:_spf.gateway.test ~all", {}, "mismatch", "void"),
])
async def test_spf_edge_cases(gw, record, extra, status, detail):
    d, dns = gw
    await added(d, dns)
    for name, value in extra.items():
        dns.set(name, "TXT", value)
    dns.set("acme.test", "TXT", record)
    (spf_result,) = by_purpose(await d.call("domain.verify", domain="acme.test"), "spf")
    assert spf_result["status"] == status, spf_result
    assert detail in (spf_result["detail"] or ""), spf_result
