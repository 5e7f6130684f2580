"""Channel addresses over the admin socket and the CLI: round trips, refusals, tenant isolation,
what deleting a use case or tenant does, and the inbound switches of domains and tenants."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner

from gateway.cli import main
from tests.support.daemon import AdminError, running_daemon
from tests.support.dns import dns_overrides
from tests.support.tenancy import sending_setup


@pytest.fixture
async def gw(tmp_path, dns_server):
    async with running_daemon(tmp_path, dns_overrides(dns_server)) as d:
        yield d, dns_server


async def cli(d, *args):
    result = await asyncio.to_thread(CliRunner().invoke, main, ["--socket", str(d.daemon.paths.socket), *args])
    return result.exit_code, result.output


async def refused(d, code, method, **params) -> str:
    with pytest.raises(AdminError) as info:
        await d.call(method, **params)
    assert info.value.code == code, info.value.message
    return info.value.message


async def test_cli_round_trip(gw, tmp_path):
    d, dns = gw
    await sending_setup(d, dns)
    footer = tmp_path / "footer.html"
    footer.write_text("<p>Acme support &mdash; caf\u00e9</p>\n", encoding="utf-8")
    code, out = await cli(d, "address", "add", "acme", "Support@ACME.test", "--usecase", "receipts", "--display-name", "Acme Support",
                          "--reply-copy", "Desk@Acme.Test", "--footer-html", f"@{footer}", "--footer-text", "-- \nAcme",
                          "--vcard", "--json")
    assert code == 0, out
    record = json.loads(out)
    assert record["address"] == "support@acme.test" and record["reply_copy"] == "desk@acme.test"
    assert record["footer_html"] == footer.read_text(encoding="utf-8") and record["footer_text"] == "-- \nAcme"
    assert record["direction"] == "both" and record["enabled"] and record["vcard"] and record["usecase"] == "receipts"
    code, out = await cli(d, "address", "list", "acme")
    assert code == 0 and "support@acme.test" in out and "receipts" in out
    code, out = await cli(d, "address", "update", "acme", "support@acme.test", "--disabled", "--direction", "inbound",
                          "--reply-copy", "", "--no-vcard")
    assert code == 0, out
    shown = await d.call("address.show", tenant="acme", address="SUPPORT@acme.test")
    assert (shown["enabled"], shown["direction"], shown["reply_copy"], shown["vcard"]) == (False, "inbound", "", False)
    assert shown["footer_text"] == "-- \nAcme"  # untouched by an update that did not name it
    code, out = await cli(d, "address", "show", "acme", "support@acme.test")
    assert code == 0 and "inbound" in out
    code, out = await cli(d, "address", "delete", "acme", "support@acme.test")
    assert code == 0 and "deleted channel address support@acme.test" in out
    code, out = await cli(d, "address", "show", "acme", "support@acme.test")
    assert code == 1 and "no channel address" in out
    kinds = [e["kind"] for e in await d.store.events.list(subject="support@acme.test")]
    assert kinds == ["address_added", "address_updated", "address_deleted"], kinds


async def test_refusals(gw):
    d, dns = gw
    await sending_setup(d, dns)
    await sending_setup(d, dns, domain="other.test", usecase="news", sender="news@other.test")
    base = {"tenant": "acme", "usecase": "receipts"}
    assert "no domain 'elsewhere.test'" in await refused(d, "not_found", "address.add", address="a@elsewhere.test", **base)
    # A subdomain is not the domain: the MX and the records are per domain.
    assert "no domain" in await refused(d, "not_found", "address.add", address="a@sub.acme.test", **base)
    assert "not of the domain" in await refused(d, "conflict", "address.add", address="a@other.test", **base)
    assert "no use case" in await refused(d, "not_found", "address.add", tenant="acme", usecase="ghost", address="a@acme.test")
    for bad in ["not-an-address", "a b@acme.test", "a@acme.test\r\nBcc: x@y", "<a@acme.test>,b@acme.test"]:
        await refused(d, "invalid", "address.add", address=bad, **base)
    await refused(d, "invalid", "address.add", address="a@acme.test", direction="sideways", **base)
    await refused(d, "invalid", "address.add", address="a@acme.test", reply_copy="A@acme.test", **base)
    await refused(d, "invalid", "address.add", address="a@acme.test", reply_copy="x@y\r\nz", **base)
    await refused(d, "invalid", "address.add", address="a@acme.test", footer_text="x" * 4001, **base)
    await refused(d, "invalid", "address.add", address="a@acme.test", header_html="\x1b[31m", **base)
    await d.call("address.add", address="a@acme.test", **base)
    assert "already exists" in await refused(d, "conflict", "address.add", address="A@acme.test", **base)
    await refused(d, "invalid", "address.update", tenant="acme", address="a@acme.test")
    assert "not of the domain" in await refused(d, "conflict", "address.update", tenant="acme", address="a@acme.test", usecase="news")
    # Deleting the use case is refused while an address is on it; the tenant cannot go either.
    assert "channel address" in await refused(d, "conflict", "usecase.delete", tenant="acme", name="receipts")
    assert "channel address a@acme.test" in await refused(d, "conflict", "tenant.delete", name="acme")
    for args in (["address", "add", "acme", "b@acme.test", "--usecase", "receipts", "--header-text", "@/nonexistent/file"],
                 ["address", "add", "acme", "b@acme.test", "--usecase", "receipts", "--direction", "up"]):
        code, out = await cli(d, *args)
        assert code == 2 and out.startswith("gateway: ") and out.count("\n") == 1, out
    await d.call("address.delete", tenant="acme", address="a@acme.test")
    await d.call("usecase.delete", tenant="acme", name="receipts")


async def test_other_tenants_address_is_not_found(gw):
    d, dns = gw
    await sending_setup(d, dns)
    await sending_setup(d, dns, tenant="beta", domain="beta.test", sender="app@beta.test")
    await d.call("address.add", tenant="acme", address="support@acme.test", usecase="receipts")
    for method, extra in (("address.show", {}), ("address.delete", {}), ("address.update", {"display_name": "x"})):
        message = await refused(d, "not_found", method, tenant="beta", address="support@acme.test", **extra)
        assert message == "tenant 'beta' has no channel address 'support@acme.test'"
    # beta cannot put an address on acme's domain, or use acme's use case.
    await refused(d, "not_found", "address.add", tenant="beta", address="x@acme.test", usecase="receipts")
    await refused(d, "not_found", "address.add", tenant="beta", address="x@beta.test", usecase="nope")
    assert await d.call("address.list", tenant="beta") == []
    assert [a["address"] for a in await d.call("address.list", tenant="acme")] == ["support@acme.test"]
    assert (await d.call("address.show", tenant="acme", address="support@acme.test"))["display_name"] == ""


async def test_inbound_switches(gw):
    d, dns = gw
    await sending_setup(d, dns)
    await sending_setup(d, dns, domain="other.test", usecase="news", sender="news@other.test")
    shown = await d.call("domain.show", domain="acme.test")
    assert (shown["inbound_enabled"], shown["catchall"]) == (False, None)
    code, out = await cli(d, "domain", "inbound", "acme.test", "--on", "--catchall", "receipts")
    assert code == 0 and "receipts" in out, out
    shown = await d.call("domain.show", domain="acme.test")
    assert (shown["inbound_enabled"], shown["catchall"]) == (True, "receipts")
    code, out = await cli(d, "domain", "show", "acme.test")
    assert code == 0 and "inbound_enabled" in out and "receipts" in out
    # The catch-all is a use case of this domain; a use case in use as one is not deleted from under it.
    assert "not of the domain" in await refused(d, "conflict", "domain.inbound", domain="acme.test", catchall="news")
    assert "catch-all" in await refused(d, "conflict", "usecase.delete", tenant="acme", name="receipts")
    await refused(d, "invalid", "domain.inbound", domain="acme.test")
    await refused(d, "invalid", "domain.inbound", domain="acme.test", catchall="receipts", no_catchall=True)
    await refused(d, "not_found", "domain.inbound", domain="acme.test", tenant="ghost", enabled=True)
    code, out = await cli(d, "domain", "inbound", "acme.test", "--off", "--no-catchall", "--json")
    assert code == 0, out
    assert json.loads(out)["inbound_enabled"] is False and json.loads(out)["catchall"] is None, out
    # tenant dmarc_reject
    assert (await d.call("tenant.show", name="acme"))["dmarc_reject"] is False
    code, out = await cli(d, "tenant", "update", "acme", "--dmarc-reject")
    assert code == 0 and "dmarc_reject" in out
    assert (await d.call("tenant.show", name="acme"))["dmarc_reject"] is True
    code, out = await cli(d, "tenant", "update", "acme", "--no-dmarc-reject", "--json")
    assert code == 0 and json.loads(out)["dmarc_reject"] is False
