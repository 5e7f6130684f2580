"""review1: defects found reviewing issue 8's inbound work (MX, channel addresses, poller), each
with the test that showed it."""

from __future__ import annotations

import pytest

from gateway.config import Config
from gateway.errors import InvalidArgument
from gateway.inbound.recipients import Rules, resolve
from gateway.services.addresses import AddressService
from gateway.services.connectors import ConnectorService
from gateway.store import Store
from tests.support.inbound import channel_address, mx_listener, receiving_domain

RULES = Rules(return_path_prefix="bounces", mailto_domain="unsub.gateway.test", hostnames=("mx.gateway.test",))


@pytest.fixture
async def world(tmp_path):
    store = await Store.open(tmp_path / "gateway.db")
    acme = (await store.tenants.add("acme"))["id"]
    globex = (await store.tenants.add("globex"))["id"]
    w = {"store": store, "acme": acme, "globex": globex}
    w["acme.test"] = await receiving_domain(store, acme, "acme.test", usecase="helpdesk")
    w["globex.test"] = await receiving_domain(store, globex, "globex.test", usecase="support")
    w["idn"] = await receiving_domain(store, acme, "xn--bcher-kva.test", usecase="books")
    addresses = AddressService(store)
    await addresses.add("acme", "help@acme.test", "helpdesk")
    await addresses.add("globex", "ceo@globex.test", "support")
    yield w
    await store.close()


async def test_an_address_added_with_a_u_label_domain_is_found_by_either_spelling(world):
    """migration 0015: channel_addresses.address is stored normalised; the resolver must find it
    whichever form the RCPT uses."""
    w = world
    added = await AddressService(w["store"]).add("acme", "Info@Bücher.test", "books")
    assert added["address"] == "info@xn--bcher-kva.test"
    for spelling in ("info@bücher.test", "INFO@BÜCHER.TEST", "info@xn--bcher-kva.test", "Info@XN--BCHER-KVA.test"):
        got = await resolve(w["store"], spelling, RULES)
        assert (got.kind, got.address, got.tenant_id) == ("address", "info@xn--bcher-kva.test", w["acme"]), spelling


async def test_a_connectors_incoming_address_must_be_one_of_its_tenants_channel_addresses(world):
    """Polled mail is spooled with the connector's tenant and recipients [incoming.address]; the
    processor resolves that address with the MX resolver. A tenant naming another tenant's channel
    address there would inject its mailbox's mail into the other tenant's use case (the use case
    is checked against the tenant; the address was only checked for syntax)."""
    service = ConnectorService(world["store"], lambda: Config())
    with pytest.raises(InvalidArgument) as info:
        await service.add("acme", "box", "imap", host="imap.example.net", username="u", secret="pw",
                          address="ceo@globex.test")
    assert "ceo@globex.test" in str(info.value)
    with pytest.raises(InvalidArgument):
        await service.add("acme", "box2", "imap", host="imap.example.net", username="u", secret="pw",
                          address="nobody@acme.test")
    # The tenant's own address is fine.
    record = await service.add("acme", "box3", "imap", host="imap.example.net", username="u", secret="pw",
                               address="HELP@acme.test")
    assert record["settings"]["incoming"]["address"] == "help@acme.test"


# --------------------------------------------------------------------------- the MX listener


@pytest.fixture
async def mx_store(tmp_path):
    s = await Store.open(tmp_path / "gateway.db")
    acme = (await s.tenants.add("acme"))["id"]
    await channel_address(s, await receiving_domain(s, acme, "acme.test"), "help@acme.test")
    yield s
    await s.close()


@pytest.mark.parametrize("field", [b"From: Jos\xe9 Garc\xeda <jose@example.es>",
                                   b"Message-ID: <caf\xe9@example.es>",
                                   b"References: <a@example.es> <caf\xe9@example.es>"])
async def test_a_legacy_8bit_header_is_accepted_on_the_mx(tmp_path, mx_store, field):
    """Mail from the internet still comes with raw Latin-1 in From or in message ids (old MTAs, RFC
    6532 not followed). The MIME parser reads such fields leniently (mime._utf8_or_legacy) and keeps
    the defect; the MX must take the message rather than refuse it 550 5.6.0 the way submission
    refuses its own tenants' bad headers (Postfix accepts it too)."""
    raw = (field + b"\r\nTo: help@acme.test\r\nSubject: hola\r\n" +
           (b"" if field.startswith(b"From") else b"From: jose@example.es\r\n") + b"\r\nHola.\r\n")
    async with mx_listener(tmp_path, store=mx_store) as mx:
        async with mx.client() as smtp:
            errors, reply = await smtp.sendmail("jose@example.es", ["help@acme.test"], raw)
        assert reply.startswith("2.0.0 Ok: queued as ")
        assert len(mx.rows()) == 1
