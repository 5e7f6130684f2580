"""The recipient rules over a real store: every kind accepted, every refusal, every relay trick."""

from __future__ import annotations

import pytest

from gateway.errors import SMTPError
from gateway.inbound.recipients import Rules, Target, resolve
from gateway.store import Store
from gateway.config import StoreConfig
from tests.support.inbound import channel_address, receiving_domain, set_tenant_enabled

RULES = Rules(return_path_prefix="bounces", mailto_domain="unsub.gateway.test", hostnames=("mx.gateway.test",))


@pytest.fixture
async def world(tmp_path, store_url):
    store = await Store.open(tmp_path / "gateway.db", StoreConfig(url=store_url))
    acme = (await store.tenants.add("acme"))["id"]
    globex = (await store.tenants.add("globex"))["id"]
    w = {"store": store, "acme": acme, "globex": globex}
    w["acme.test"] = await receiving_domain(store, acme, "acme.test")                        # no catch-all
    w["shop.test"] = await receiving_domain(store, acme, "shop.test", catchall=True)
    w["off.test"] = await receiving_domain(store, acme, "off.test", inbound=False, catchall=True)
    w["pending.test"] = await receiving_domain(store, acme, "pending.test", state="pending", catchall=True)
    w["failing.test"] = await receiving_domain(store, acme, "failing.test", state="failing")
    w["globex.test"] = await receiving_domain(store, globex, "globex.test", catchall=True)
    w["help"] = await channel_address(store, w["acme.test"], "help@acme.test", direction="inbound")
    w["both"] = await channel_address(store, w["acme.test"], "sales@acme.test", direction="both")
    w["sendonly"] = await channel_address(store, w["acme.test"], "noreply@acme.test", direction="outbound")
    w["disabled"] = await channel_address(store, w["shop.test"], "old@shop.test", enabled=False)
    w["failing"] = await channel_address(store, w["failing.test"], "info@failing.test")
    yield w
    await store.close()


async def refused(w, address: str) -> SMTPError:
    with pytest.raises(SMTPError) as info:
        await resolve(w["store"], address, RULES)
    return info.value


async def test_channel_addresses_resolve_to_their_tenant_usecase_and_address(world):
    w = world
    got = await resolve(w["store"], "help@acme.test", RULES)
    assert got == Target(kind="address", address="help@acme.test", tenant_id=w["acme"], domain_id=w["acme.test"].id,
                         usecase_id=w["acme.test"].usecase_id, address_id=w["help"])
    assert got.spool_tenant == w["acme"]
    assert (await resolve(w["store"], "sales@acme.test", RULES)).address_id == w["both"]
    # A failing domain was verified and still receives.
    assert (await resolve(w["store"], "info@failing.test", RULES)).address_id == w["failing"]


@pytest.mark.parametrize("spelling", ["HELP@ACME.TEST", "<Help@Acme.Test>", "help@acme.test.", '"help"@acme.test', '"HeLp"@ACME.test'])
async def test_case_brackets_trailing_dot_and_needless_quotes_are_the_same_mailbox(world, spelling):
    got = await resolve(world["store"], spelling, RULES)
    assert (got.kind, got.address, got.address_id) == ("address", "help@acme.test", world["help"])


async def test_catchall_takes_any_other_local_part_and_unknown_users_get_5_1_1(world):
    w = world
    got = await resolve(w["store"], "Anyone.At.All@shop.test", RULES)
    assert (got.kind, got.tenant_id, got.usecase_id, got.address_id) == ("catchall", w["acme"], w["shop.test"].usecase_id, None)
    err = await refused(w, "nobody@acme.test")
    assert (err.code, err.enhanced, err.public) == (550, "5.1.1", "No such user here")


async def test_disabled_and_send_only_addresses_are_refused_5_2_1_without_catchall_fallback(world):
    w = world
    err = await refused(w, "old@shop.test")   # shop.test has a catch-all: a disabled address still refuses
    assert (err.code, err.enhanced, err.public) == (550, "5.2.1", "Mailbox disabled, not accepting messages")
    err = await refused(w, "noreply@acme.test")
    assert (err.code, err.enhanced, err.public) == (550, "5.2.1", "Mailbox does not receive mail")


async def test_a_disabled_tenant_receives_nothing_but_its_bounces(world):
    w = world
    await set_tenant_enabled(w["store"], w["acme"], False)
    for address in ("help@acme.test", "x@shop.test"):
        assert (await refused(w, address)).enhanced == "5.2.1"
    assert (await resolve(w["store"], "bounces+0h3k9x2a7mq4rt5b.0@bounces.acme.test", RULES)).kind == "return_path"


@pytest.mark.parametrize("address,why", [
    ("user@example.org", "foreign domain"),
    ("x@off.test", "inbound off"),
    ("x@pending.test", "domain not verified"),
    ("x@[127.0.0.1]", "domain literal"),
    ("user%example.org@acme.test", "percent hack"),
    ("help%example.org@shop.test", "percent hack on a catch-all domain"),
    ("example.org!user@shop.test", "bang path"),
    ("@relay.example.org,@other.example:user@shop.test", "source route"),
    ('"user@example.org"@shop.test', "quoted @"),
    ('"user%example.org"@shop.test', "quoted %"),
    ('"example.org!user"@shop.test', "quoted !"),
    ("bounces@bounces.pending.test", "return path of an unverified domain"),
    ("bounces@bounces.example.org", "return path of a foreign domain"),
])
async def test_relaying_is_denied(world, address, why):
    err = await refused(world, address)
    assert (err.code, err.enhanced, err.public) == (550, "5.7.1", "Relaying denied"), why


@pytest.mark.parametrize("address,kind", [
    ("bounces@bounces.acme.test", "return_path"),
    ("bounces+0h3k9x2a7mq4rt5b.2@bounces.acme.test", "return_path"),
    ("BOUNCES+0H3K9X2A7MQ4RT5B.2@BOUNCES.ACME.TEST", "return_path"),
    ("bounces+0h3k9x2a7mq4rt5b.0@bounces.off.test", "return_path"),     # inbound off: bounces still come back
    ("bounces@bounces.failing.test", "return_path"),
    ("unsubscribe@bounces.acme.test", "unsubscribe"),
    ("unsubscribe+tokentokentokentokentoken@bounces.acme.test", "unsubscribe"),
    ("fbl@bounces.acme.test", "feedback"),
    ("abuse@bounces.acme.test", "feedback"),
    ("postmaster@bounces.acme.test", "postmaster"),
])
async def test_the_gateways_own_addresses_on_return_path_domains(world, address, kind):
    w = world
    got = await resolve(w["store"], address, RULES)
    domain = address.lower().rpartition("@bounces.")[2]
    assert (got.kind, got.tenant_id, got.domain_id) == (kind, w["acme"], w[domain].id)
    assert got.spool_tenant == (w["acme"] if kind == "postmaster" else None)


async def test_other_local_parts_of_a_return_path_domain_are_unknown(world):
    assert (await refused(world, "someone@bounces.acme.test")).enhanced == "5.1.1"


async def test_postmaster(world):
    w = world
    got = await resolve(w["store"], "PostMaster@acme.test", RULES)   # no catch-all: still accepted (RFC 5321 4.5.1)
    assert (got.kind, got.tenant_id, got.usecase_id) == ("postmaster", w["acme"], None)
    got = await resolve(w["store"], "postmaster@shop.test", RULES)
    assert (got.kind, got.usecase_id) == ("postmaster", w["shop.test"].usecase_id)
    got = await resolve(w["store"], "postmaster@mx.gateway.test", RULES)
    assert (got.kind, got.tenant_id, got.spool_tenant) == ("postmaster", None, None)
    assert (await refused(w, "root@mx.gateway.test")).enhanced == "5.1.1"
    assert (await refused(w, "postmaster@off.test")).enhanced == "5.7.1"   # a domain that does not receive here


async def test_the_mailto_domain_takes_unsubscribe_requests_for_nobody_in_particular(world):
    w = world
    got = await resolve(w["store"], "unsubscribe@unsub.gateway.test", RULES)
    assert (got.kind, got.tenant_id, got.spool_tenant) == ("unsubscribe", None, None)
    assert (await refused(w, "bounces@unsub.gateway.test")).enhanced == "5.1.1"


async def test_one_tenants_address_on_another_tenants_domain_is_not_honoured(world):
    """A channel address row whose tenant does not own the domain (a bad write) must not route mail
    to that tenant: the domain's own rules apply."""
    w = world
    rogue = await channel_address(w["store"], w["acme.test"].__class__(w["globex"], w["globex.test"].id, "globex.test",
                                                                         w["globex.test"].usecase_id), "x@acme.test")
    assert rogue
    assert (await refused(w, "x@acme.test")).enhanced == "5.1.1"


async def test_an_internationalised_domain_is_matched_by_its_a_label(world):
    w = world
    idn = await receiving_domain(w["store"], w["acme"], "xn--bcher-kva.test", catchall=True)
    got = await resolve(w["store"], "Info@Bücher.test", RULES)
    assert (got.kind, got.address, got.domain_id) == ("catchall", "info@xn--bcher-kva.test", idn.id)
