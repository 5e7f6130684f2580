"""DMARC at the final dot: a tenant with dmarc_reject refuses (550 5.7.1) mail failing a p=reject
policy; what passes is spooled with its Authentication-Results value; other tenants are not checked."""

from __future__ import annotations

import json

import aiosmtplib
import pytest

from gateway.config import DnsConfig
from gateway.store import Store
from tests.support.inbound import channel_address, inbound_message, mx_listener, receiving_domain, set_dmarc_reject


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "gateway.db")
    s.acme = (await s.tenants.add("acme"))["id"]
    s.globex = (await s.tenants.add("globex"))["id"]
    await set_dmarc_reject(s, s.acme, True)
    await channel_address(s, await receiving_domain(s, s.acme, "acme.test"), "help@acme.test")
    await channel_address(s, await receiving_domain(s, s.globex, "globex.test"), "sales@globex.test")
    yield s
    await s.close()


def publish(dns_server, domain: str, *, spf: str, dmarc: str = "v=DMARC1; p=reject") -> None:
    dns_server.add(domain, "TXT", spf)
    dns_server.add(f"_dmarc.{domain}", "TXT", dmarc)


def dns_config(dns_server) -> dict:
    return {"dns": DnsConfig(nameservers=[dns_server.host], port=dns_server.port, timeout=1.0)}


async def send(mx, rcpts: list[str], sender: str) -> tuple[int, str]:
    async with mx.client() as smtp:
        try:
            errors, reply = await smtp.sendmail(sender, rcpts, inbound_message(rcpts[0], sender=sender))
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
        assert errors == {}
        return 250, reply


async def test_a_dmarc_reject_failure_is_refused_at_the_final_dot(tmp_path, store, dns_server):
    publish(dns_server, "spoofed.example", spf="v=spf1 ip4:192.0.2.1 -all")   # not our client 127.0.0.1: SPF fails
    async with mx_listener(tmp_path, store=store, rules=dns_config(dns_server)) as mx:
        code, text = await send(mx, ["help@acme.test"], "ceo@spoofed.example")
        assert (code, text) == (550, "5.7.1 Message rejected: it fails the DMARC policy (p=reject) of its From domain")
        # One recipient of a refusing tenant refuses the whole message (one reply per DATA in SMTP).
        code, _ = await send(mx, ["sales@globex.test", "help@acme.test"], "ceo@spoofed.example")
        assert code == 550
        assert mx.rows() == [] and mx.refusals("DATA", "550") == 2


async def test_what_passes_is_spooled_with_its_authentication_results(tmp_path, store, dns_server):
    publish(dns_server, "shop.example", spf="v=spf1 ip4:127.0.0.1 -all")
    async with mx_listener(tmp_path, store=store, rules=dns_config(dns_server)) as mx:
        assert (await send(mx, ["help@acme.test"], "orders@shop.example"))[0] == 250
        [row] = mx.rows()
    assert row["auth_results"].startswith("mx.gateway.test; spf=pass smtp.mailfrom=orders@shop.example")
    assert "dmarc=pass" in row["auth_results"]
    assert b"Authentication-Results" not in bytes(row["raw"])   # the processor adds the field (authres.with_header)


async def test_tenants_without_the_switch_are_not_checked_and_get_no_results(tmp_path, store, dns_server):
    publish(dns_server, "spoofed.example", spf="v=spf1 ip4:192.0.2.1 -all")
    async with mx_listener(tmp_path, store=store, rules=dns_config(dns_server)) as mx:
        assert (await send(mx, ["sales@globex.test"], "ceo@spoofed.example"))[0] == 250
        [row] = mx.rows()
    assert (row["tenant_id"], json.loads(row["recipients"]), row["auth_results"]) == (store.globex, ["sales@globex.test"], "")
    assert dns_server.queried("_dmarc.spoofed.example") == 0


async def test_a_dns_failure_is_never_a_reject(tmp_path, store, dns_server):
    publish(dns_server, "flaky.example", spf="v=spf1 ip4:192.0.2.1 -all")
    dns_server.servfail("_dmarc.flaky.example")
    async with mx_listener(tmp_path, store=store, rules=dns_config(dns_server)) as mx:
        assert (await send(mx, ["help@acme.test"], "a@flaky.example"))[0] == 250
        [row] = mx.rows()
    assert "dmarc=temperror" in row["auth_results"]
