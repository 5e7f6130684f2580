"""Use cases, credentials, authentication, tenant isolation and the CLI's bad-input behaviour."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.services.usecases import UsecaseService
from tests.support.daemon import AdminError, running_daemon
from tests.support.dns import dns_overrides
from tests.support.tenancy import sending_setup


@pytest.fixture
async def gw(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        yield d, dns_server


def service(d) -> UsecaseService:
    return next(s for s in d.daemon.services if isinstance(s, UsecaseService))


async def refused(d, code, method, **params) -> str:
    with pytest.raises(AdminError) as info:
        await d.call(method, **params)
    assert info.value.code == code, info.value.message
    return info.value.message


async def test_authenticate_returns_the_context_and_refuses_the_rest(gw):
    d, dns = gw
    setup = await sending_setup(d, dns)
    svc = service(d)
    ctx = await svc.authenticate(setup["username"], setup["password"])
    assert ctx["name"] == "receipts" and ctx["kind"] == "transactional" and ctx["route"] == "direct"
    assert ctx["tenant"] == "acme" and ctx["tenant_enabled"] and ctx["outbound_enabled"] and ctx["monthly_quota"] == 0
    assert (ctx["domain"], ctx["domain_state"], ctx["senders"]) == ("acme.test", "verified", ["app@acme.test"])
    assert ctx["return_path_domain"] == "bounces.acme.test"
    assert await svc.authenticate(setup["username"], setup["password"] + "x") is None
    assert await svc.authenticate("nobody", setup["password"]) is None
    assert await svc.authenticate("", "") is None
    await svc.usage.flush()  # last use is recorded in the background, off the AUTH reply path
    listed = await d.call("usecase.credentials.list", tenant="acme", usecase="receipts")
    assert listed[0]["last_used_at"] is not None
    await d.call("usecase.credentials.revoke", tenant="acme", usecase="receipts", username=setup["username"])
    assert await svc.authenticate(setup["username"], setup["password"]) is None
    assert (await svc.context(setup["usecase_id"]))["tenant"] == "acme"


async def test_unknown_username_costs_a_hash_verification(gw):
    d, dns = gw
    setup = await sending_setup(d, dns)
    svc = service(d)
    assert await svc.authenticate("no-such-user", "guess") is None
    assert svc.passwords.checked == 1  # checked against the dummy hash, as a known username would be
    assert await svc.authenticate(setup["username"], "guess") is None
    assert svc.passwords.checked == 2


async def test_password_is_shown_once_and_stored_as_a_keyed_hash(gw):
    d, dns = gw
    setup = await sending_setup(d, dns)
    assert len(setup["password"]) >= 32
    row = await d.store.usecases.credential(setup["username"])
    assert row["password_hash"].startswith("$hmac-sha256$") and setup["password"] not in row["password_hash"]
    key = await d.store.usecases.credential_key("00" * 32)
    assert len(key) == 32 and key != bytes(32)  # made by the migration, not the fallback given here
    expected = hmac.new(key, setup["password"].encode(), hashlib.sha256).hexdigest()
    assert row["password_hash"] == f"$hmac-sha256${expected}"
    everything = json.dumps([
        await d.call("usecase.credentials.list", tenant="acme", usecase="receipts"),
        await d.call("usecase.show", tenant="acme", name="receipts"),
        await d.call("usecase.list"),
    ])
    assert setup["password"] not in everything and "hmac" not in everything and "password" not in everything
    assert key.hex() not in everything + json.dumps(await d.call("status"))


async def test_usecase_validation(gw):
    d, dns = gw
    await sending_setup(d, dns)
    base = dict(tenant="acme", domain="acme.test", name="news", entity="Acme", kind="marketing", senders=["news@acme.test"])
    assert "not on the domain" in await refused(d, "invalid", "usecase.add", **{**base, "senders": ["news@other.example"]})
    assert "not on the domain" in await refused(d, "invalid", "usecase.add", **{**base, "senders": ["x@evilacme.test"]})
    assert "already has a use case" in await refused(d, "conflict", "usecase.add", **{**base, "name": "receipts"})
    assert "kind" in await refused(d, "invalid", "usecase.add", **{**base, "kind": "spam"})
    assert "use case name" in await refused(d, "invalid", "usecase.add", **{**base, "name": "Bad Name"})
    assert "no tenant" in await refused(d, "not_found", "usecase.add", **{**base, "tenant": "ghost"})
    assert "no connector" in await refused(d, "not_found", "usecase.add", **{**base, "route": "connector:nope"})
    await d.call("domain.add", tenant="acme", domain="pending.test")
    assert "not verified" in await refused(d, "conflict", "usecase.add", **{**base, "domain": "pending.test",
                                                                              "senders": ["x@pending.test"]})
    made = await d.call("usecase.add", **{**base, "senders": ["News@Acme.test", "news@mail.acme.test", "news@acme.test"]})
    assert made["senders"] == ["News@acme.test", "news@acme.test", "news@mail.acme.test"]
    updated = await d.call("usecase.update", tenant="acme", name="news", new_name="newsletter", kind="transactional",
                           add_senders=["x@acme.test"], remove_senders=["News@acme.test"], rate_limit=60)
    assert (updated["name"], updated["kind"], updated["rate_limit"]) == ("newsletter", "transactional", 60)
    assert updated["senders"] == ["news@acme.test", "news@mail.acme.test", "x@acme.test"]
    assert "nothing to change" in await refused(d, "invalid", "usecase.update", tenant="acme", name="newsletter")
    before = await d.call("usecase.show", tenant="acme", name="newsletter")
    await refused(d, "invalid", "usecase.update", tenant="acme", name="newsletter", entity="ok", add_senders=["y@other.example"])
    assert await d.call("usecase.show", tenant="acme", name="newsletter") == before  # nothing changed
    await d.call("usecase.delete", tenant="acme", name="newsletter")
    assert [u["name"] for u in await d.call("usecase.list", tenant="acme")] == ["receipts"]


async def test_domain_add_refusals_and_delete_in_use(gw):
    d, dns = gw
    setup = await sending_setup(d, dns)
    await d.call("tenant.add", name="other")
    assert "another tenant" in await refused(d, "conflict", "domain.add", tenant="other", domain="ACME.test.")
    assert "another tenant" in await refused(d, "conflict", "domain.add", tenant="other", domain="sub.acme.test")
    assert "already has" in await refused(d, "conflict", "domain.add", tenant="acme", domain="acme.test")
    assert "reserved" in await refused(d, "invalid", "domain.add", tenant="acme", domain="shop.example.com")
    assert "invalid domain" in await refused(d, "invalid", "domain.add", tenant="acme", domain="no_underscores.test")
    assert "no tenant" in await refused(d, "not_found", "domain.add", tenant="ghost", domain="ghost.test")
    assert "DKIM" in await refused(d, "invalid", "domain.add", tenant="acme", domain="x.test", dkim="dsa")
    message = await refused(d, "conflict", "domain.delete", domain="acme.test")
    assert "use case receipts" in message
    assert await d.store.domains.signing_keys("acme.test")
    await d.call("usecase.delete", tenant="acme", name=setup["usecase"])
    assert (await d.call("domain.delete", domain="acme.test"))["deleted"]
    assert await d.store.db.read(lambda c: c.execute("SELECT count(*) FROM dkim_keys").fetchone()[0]) == 0  # private keys gone too
    assert [x["name"] for x in await d.call("domain.list")] == []


async def test_private_keys_are_in_the_store_and_in_no_answer(gw):
    """No key file (every node reads the key from the store); the PEM is never shown to a caller."""
    d, dns = gw
    await d.call("tenant.add", name="acme")
    added = await d.call("domain.add", tenant="acme", domain="acme.test", dkim="both")
    assert len(added["keys"]) == 2
    rows = await d.store.db.read(lambda c: [dict(r) for r in c.execute("SELECT key_path, private_pem FROM dkim_keys")])
    assert len(rows) == 2 and all(r["key_path"] == "" and r["private_pem"].startswith("-----BEGIN PRIVATE KEY-----") for r in rows)
    assert not (d.daemon.paths.state_dir / "keys").exists()
    shown = json.dumps([added, await d.call("domain.show", domain="acme.test"), await d.call("domain.list")])
    assert "PRIVATE KEY" not in shown and "key_path" not in shown and "private_pem" not in shown


async def test_idna_domain_is_stored_as_a_labels(gw):
    d, dns = gw
    await d.call("tenant.add", name="acme")
    added = await d.call("domain.add", tenant="acme", domain="Bücher.test.")
    assert (added["name"], added["unicode"]) == ("xn--bcher-kva.test", "bücher.test")
    assert (await d.call("domain.show", domain="bücher.test"))["name"] == "xn--bcher-kva.test"


async def test_tenant_isolation(gw):
    d, dns = gw
    a = await sending_setup(d, dns, tenant="alpha", domain="alpha.test", sender="app@alpha.test")
    b = await sending_setup(d, dns, tenant="beta", domain="beta.test", sender="app@beta.test", usecase="billing")
    snapshot = [await d.call("domain.show", domain="alpha.test"), await d.call("usecase.show", tenant="alpha", name="receipts"),
                await d.call("usecase.credentials.list", tenant="alpha", usecase="receipts")]
    as_beta = {"tenant": "beta"}
    for method, params in [
        ("domain.show", {"domain": "alpha.test"}), ("domain.records", {"domain": "alpha.test"}),
        ("domain.verify", {"domain": "alpha.test"}), ("domain.delete", {"domain": "alpha.test"}),
        ("domain.rotate_dkim", {"domain": "alpha.test"}),
        ("domain.remove_selector", {"domain": "alpha.test", "selector": a["selectors"][0]}),
        ("usecase.show", {"name": "receipts"}), ("usecase.delete", {"name": "receipts"}),
        ("usecase.update", {"name": "receipts", "entity": "stolen"}),
        ("usecase.credentials.list", {"usecase": "receipts"}), ("usecase.credentials.add", {"usecase": "receipts"}),
        ("usecase.credentials.revoke", {"usecase": "receipts", "username": a["username"]}),
        ("usecase.add", {"domain": "alpha.test", "name": "x", "entity": "x", "kind": "marketing", "senders": ["x@alpha.test"]}),
    ]:
        message = await refused(d, "not_found", method, **as_beta, **params)
        assert "alpha" not in message.replace("alpha.test", "") and "receipts" not in message.replace("'receipts'", "")
    # The same message for a domain that exists elsewhere and one that exists nowhere: nothing to enumerate.
    assert (await refused(d, "not_found", "domain.show", tenant="beta", domain="alpha.test")).replace("alpha.test", "X") == \
        (await refused(d, "not_found", "domain.show", tenant="beta", domain="nowhere.test")).replace("nowhere.test", "X")
    # beta's own sender list cannot name alpha's domain.
    await refused(d, "invalid", "usecase.update", tenant="beta", name="billing", add_senders=["ceo@alpha.test"])
    assert [x["name"] for x in await d.call("domain.list", tenant="beta")] == ["beta.test"]
    assert [u["name"] for u in await d.call("usecase.list", tenant="beta")] == ["billing"]
    # beta's credentials authenticate into beta only.
    ctx = await service(d).authenticate(b["username"], b["password"])
    assert (ctx["tenant"], ctx["domain"]) == ("beta", "beta.test")
    assert await service(d).authenticate(a["username"], b["password"]) is None
    after = [await d.call("domain.show", domain="alpha.test"), await d.call("usecase.show", tenant="alpha", name="receipts"),
             await d.call("usecase.credentials.list", tenant="alpha", usecase="receipts")]
    for before_item, after_item in zip(snapshot, after):
        for volatile in ("checked_at", "records", "last_outcome", "keys"):
            if isinstance(before_item, dict):
                before_item.pop(volatile, None), after_item.pop(volatile, None)
    assert snapshot[1:] == after[1:] and snapshot[0]["state"] == after[0]["state"] == "verified"


async def cli(d, *args):
    result = await asyncio.to_thread(CliRunner().invoke, main, ["--socket", str(d.daemon.paths.socket), *args])
    return result.exit_code, result.output


async def test_cli_flow_and_bad_input(gw):
    d, dns = gw
    await d.call("tenant.add", name="acme")
    code, out = await cli(d, "domain", "add", "acme", "acme.test", "--dkim", "both")
    assert code == 0 and "pending" in out
    code, zone = await cli(d, "domain", "records", "acme.test", "--format", "zone")
    assert code == 0 and "_domainkey.acme.test. 3600 IN TXT" in zone
    code, out = await cli(d, "domain", "verify", "acme.test")
    assert code == 1 and "missing" in out
    dns.load_zone(zone, origin="acme.test")
    code, out = await cli(d, "domain", "verify", "acme.test")
    assert code == 0 and "acme.test: verified" in out
    code, out = await cli(d, "usecase", "add", "acme", "--domain", "acme.test", "--name", "receipts", "--entity", "Acme",
                          "--kind", "transactional", "--from", "app@acme.test")
    assert code == 0, out
    code, out = await cli(d, "usecase", "credentials", "add", "acme", "receipts")
    assert code == 0 and out.count("password") >= 1
    password = next(line.split()[1] for line in out.splitlines() if line.startswith("password "))
    code, out = await cli(d, "usecase", "credentials", "list", "acme", "receipts")
    assert code == 0 and password not in out
    # Times for people: ISO 8601 UTC, not epoch floats.
    import re

    assert out.splitlines()[0].split() == ["USERNAME", "CREATED", "LAST", "USED", "REVOKED"]
    assert re.fullmatch(r"\S+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+-\s+-", out.splitlines()[1]), out
    code, out = await cli(d, "domain", "show", "acme.test")
    assert code == 0 and "use case receipts" in out and "retired" not in out
    before = await d.call("domain.list")
    for args, want in [
        (["domain", "add", "ghost", "ghost.test"], 1),
        (["domain", "add", "acme", "bad..name"], 2),
        (["domain", "add", "acme", "www.example.com"], 2),
        (["domain", "delete", "acme.test"], 1),
        (["usecase", "add", "acme", "--domain", "acme.test", "--name", "x", "--entity", "E", "--kind", "marketing",
          "--from", "x@elsewhere.example"], 2),
        (["usecase", "add", "acme", "--domain", "acme.test", "--name", "receipts", "--entity", "E", "--kind", "marketing",
          "--from", "x@acme.test"], 1),
    ]:
        code, out = await cli(d, *args)
        assert code == want, (args, out)
        assert out.startswith("gateway: ") and out.count("\n") == 1, out
    assert await d.call("domain.list") == before


async def test_domain_delete_refused_while_a_connector_sends_as_it(gw):
    d, dns = gw
    await d.call("tenant.add", name="acme")
    await d.call("domain.add", tenant="acme", domain="acme.test", dkim="ed25519")
    await d.call("connector.add", tenant="acme", name="relay", kind="smtp", host="127.0.0.1", port=2525, sender="app@acme.test")
    assert "connector relay" in await refused(d, "conflict", "domain.delete", domain="acme.test")
    assert (await d.call("domain.show", domain="acme.test"))["used_by"] == ["connector relay"]
