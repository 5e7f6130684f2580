"""The MX listener with real clients over loopback: recipients accepted and refused per rule, every
relay trick, limits, spool before 250, STARTTLS without AUTH."""

from __future__ import annotations

import asyncio
import json
import smtplib

import aiosmtplib
import pytest

from gateway.config import StoreConfig, UnsubscribeConfig
from gateway.store import Store
from tests.support.faults import failing
from tests.support.inbound import channel_address, inbound_message, link_key, mx_listener, receiving_domain, signed_return_path
from tests.support.submission import RawClient


@pytest.fixture
async def store(tmp_path):
    s = await Store.open(tmp_path / "gateway.db")
    s.acme = (await s.tenants.add("acme"))["id"]
    s.globex = (await s.tenants.add("globex"))["id"]
    s.acme_test = await receiving_domain(s, s.acme, "acme.test")
    s.shop_test = await receiving_domain(s, s.acme, "shop.test", catchall=True)
    s.globex_test = await receiving_domain(s, s.globex, "globex.test")
    s.help = await channel_address(s, s.acme_test, "help@acme.test")
    s.sales = await channel_address(s, s.globex_test, "sales@globex.test")
    await channel_address(s, s.acme_test, "old@acme.test", enabled=False)
    await channel_address(s, s.acme_test, "noreply@acme.test", direction="outbound")
    yield s
    await s.close()


async def rcpt(mx, address: str, *, sender: str = "customer@example.org") -> tuple[int, str]:
    async with mx.client() as smtp:
        await smtp.ehlo()
        await smtp.mail(sender)
        try:
            reply = await smtp.rcpt(address)
        except aiosmtplib.SMTPRecipientRefused as exc:
            return exc.code, exc.message
        return reply.code, reply.message


async def test_a_message_for_a_channel_address_is_spooled_before_the_250(tmp_path, store):
    async with mx_listener(tmp_path, store=store) as mx:
        raw = inbound_message("help@acme.test")
        async with mx.client() as smtp:
            errors, reply = await smtp.sendmail("customer@example.org", ["Help@Acme.Test"], raw)
            # The 250 is here: the row must already be on disk, seen through another connection.
            rows = mx.rows()
        assert errors == {} and reply.startswith("2.0.0 Ok: queued as ")
        assert len(rows) == 1
        row = rows[0]
        assert reply.endswith(row["inbound_id"])
        assert (row["source"], row["tenant_id"], json.loads(row["recipients"]), row["state"]) == ("mx", store.acme, ["help@acme.test"], "spooled")
        assert (row["mail_from"], row["client"], row["helo"], row["header_message_id"]) == \
            ("customer@example.org", "127.0.0.1", "client.example.org", "q1@example.org")
        stored = bytes(row["raw"])
        head, _, rest = stored.partition(b"\r\nFrom: ")
        assert head.startswith(b"Received: from ") and b"by mx.gateway.test (gateway) with ESMTP id " + row["inbound_id"].encode() in head
        assert b"for <help@acme.test>;" in head
        assert b"From: " + rest == raw   # the message itself byte for byte
        assert mx.spooled and row["size"] == len(stored)


async def test_one_message_to_two_tenants_and_a_return_path_is_three_rows(tmp_path, store):
    bounce_to = signed_return_path("bounces.acme.test", "0h3k9x2a7mq4rt5b", 0, await link_key(store))
    async with mx_listener(tmp_path, store=store) as mx:
        async with mx.client() as smtp:
            errors, _ = await smtp.sendmail("", ["help@acme.test", "sales@globex.test", "anything@shop.test",
                                                 bounce_to, "help@acme.test"], inbound_message())
        assert errors == {}
        rows = mx.rows()
    got = [(r["tenant_id"], json.loads(r["recipients"])) for r in rows]
    assert got == [(store.acme, ["help@acme.test", "anything@shop.test"]), (store.globex, ["sales@globex.test"]),
                   (None, [bounce_to])]
    assert len({r["inbound_id"] for r in rows}) == 3 and {r["mail_from"] for r in rows} == {""}
    assert all(b"for <" not in bytes(r["raw"]).split(b"\r\n\r\n")[0] for r in rows)   # several recipients: not named


@pytest.mark.parametrize("address,code,enhanced", [
    ("someone@example.org", 550, "5.7.1"),                       # a foreign domain: never an open relay
    ("nobody@acme.test", 550, "5.1.1"),                          # our domain, unknown user, no catch-all
    ("bounces+0h3k9x2a7mq4rt5b.0@bounces.acme.test", 550, "5.1.1"),   # a return path without our MAC
    ("bounces+0h3k9x2a7mq4rt5b.0.1.aaaaaaaa@bounces.acme.test", 550, "5.1.1"),   # ... or with a forged one
    ("old@acme.test", 550, "5.2.1"),                             # disabled channel address
    ("noreply@acme.test", 550, "5.2.1"),                         # send-only channel address
    ("someone%example.org@acme.test", 550, "5.7.1"),             # percent hack
    ("someone%example.org@shop.test", 550, "5.7.1"),             # ... also where a catch-all would take it
    ("example.org!someone@shop.test", 550, "5.7.1"),             # bang path
    ('"someone@example.org"@shop.test', 550, "5.7.1"),           # quoted local part with @
    ('"someone%example.org"@shop.test', 550, "5.7.1"),           # quoted local part with %
    ("someone@[127.0.0.1]", 550, "5.7.1"),                       # domain literal
    ("someone@bounces.example.org", 550, "5.7.1"),               # return path of a domain not ours
])
async def test_refused_recipients(tmp_path, store, address, code, enhanced):
    async with mx_listener(tmp_path, store=store) as mx:
        got = await rcpt(mx, address)
        assert got[0] == code and got[1].startswith(enhanced), got
        assert mx.refusals("RCPT", str(code)) == 1
        assert mx.rows() == []


@pytest.mark.parametrize("address", ["HELP@ACME.TEST", "help@acme.test", "x@SHOP.test", "postmaster@acme.test",
                                     "bounces@bounces.acme.test", "fbl@bounces.acme.test", "unsubscribe@bounces.acme.test",
                                     "postmaster@mx.gateway.test"])
async def test_accepted_recipients(tmp_path, store, address):
    async with mx_listener(tmp_path, store=store) as mx:
        assert await rcpt(mx, address) == (250, "2.1.5 Recipient OK")


async def test_a_source_route_is_refused_not_stripped(tmp_path, store):
    async with mx_listener(tmp_path, store=store) as mx:
        client = await RawClient.connect(mx.port, implicit=False)
        try:
            assert (await client.cmd("EHLO client.example.org"))[0] == 250
            assert (await client.cmd("MAIL FROM:<customer@example.org>"))[0] == 250
            assert await client.cmd("RCPT TO:<@relay.example.org,@other.example.net:help@acme.test>") == (550, "5.7.1 Relaying denied")
            assert await client.cmd("RCPT TO:<help@acme.test>") == (250, "2.1.5 Recipient OK")
        finally:
            await client.close()


async def test_the_mailto_domain_takes_unsubscribe_requests(tmp_path, store):
    async with mx_listener(tmp_path, store=store, rules={"unsubscribe": UnsubscribeConfig(mailto_domain="unsub.gateway.test")}) as mx:
        assert (await rcpt(mx, "unsubscribe@unsub.gateway.test"))[0] == 250
        assert (await rcpt(mx, "other@unsub.gateway.test"))[0] == 550


async def test_starttls_is_offered_and_auth_never(tmp_path, store):
    async with mx_listener(tmp_path, store=store) as mx:
        async with mx.client() as smtp:
            await smtp.ehlo()
            assert smtp.supports_extension("starttls") and not smtp.supports_extension("auth")
            reply = await smtp.execute_command(b"AUTH", b"PLAIN", b"AGFwcABzZWNyZXQ=")
            assert (reply.code, reply.message) == (502, "5.5.1 AUTH not available on this port")
            await smtp.starttls(tls_context=__import__("gateway.submission", fromlist=["x"]).client_tls_context())
            await smtp.ehlo()
            assert not smtp.supports_extension("auth") and not smtp.supports_extension("starttls")
            assert (await smtp.execute_command(b"AUTH", b"LOGIN")).code == 502
            errors, _ = await smtp.sendmail("customer@example.org", ["help@acme.test"], inbound_message())
            assert errors == {}
        rows = mx.rows()
    head = bytes(rows[0]["raw"]).split(b"\r\n\r\n")[0]
    assert b"with ESMTPS id" in head and b"version=TLS" in head


async def test_smtplib_too(tmp_path, store):
    """The standard library's client (what many scripts and MTAs in Python use) gets the same answers."""
    async with mx_listener(tmp_path, store=store) as mx:
        def send():
            with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as smtp:
                refused = smtp.sendmail("customer@example.org", ["help@acme.test", "x@example.org"], inbound_message())
                return refused
        refused = await asyncio.to_thread(send)
        assert refused == {"x@example.org": (550, b"5.7.1 Relaying denied")}
        assert [json.loads(r["recipients"]) for r in mx.rows()] == [["help@acme.test"]]


# --------------------------------------------------------------------------- limits


async def test_recipient_limit_gives_452_for_the_excess(tmp_path, store):
    async with mx_listener(tmp_path, store=store, inbound={"max_recipients": 2}) as mx:
        async with mx.client() as smtp:
            await smtp.ehlo()
            await smtp.mail("customer@example.org")
            assert (await smtp.rcpt("a@shop.test")).code == 250
            assert (await smtp.rcpt("a@shop.test")).code == 250          # a duplicate does not count
            assert (await smtp.rcpt("b@shop.test")).code == 250
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
                await smtp.rcpt("c@shop.test")
            assert (info.value.code, info.value.message) == (452, "4.5.3 Too many recipients")
            assert (await smtp.data(inbound_message("a@shop.test"))).code == 250
        assert json.loads(mx.rows()[0]["recipients"]) == ["a@shop.test", "b@shop.test"]


async def test_size_limit_at_mail_and_at_data(tmp_path, store):
    async with mx_listener(tmp_path, store=store, inbound={"max_message_size": 4096}) as mx:
        async with mx.client() as smtp:
            await smtp.ehlo()
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
                await smtp.mail("customer@example.org", options=["SIZE=5000"])
            assert info.value.code == 552
            await smtp.rset()
            await smtp.mail("customer@example.org")
            await smtp.rcpt("help@acme.test")
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await smtp.data(inbound_message(size=8000))
            assert (info.value.code, info.value.message[:5]) == (552, "5.3.4")
        assert mx.rows() == []


async def raw_data(mx, payload: bytes, *, rcpt_to: str = "help@acme.test") -> tuple[int, str]:
    client = await RawClient.connect(mx.port, implicit=False)
    try:
        await client.cmd("EHLO client.example.org")
        assert (await client.cmd("MAIL FROM:<customer@example.org>"))[0] == 250
        assert (await client.cmd(f"RCPT TO:<{rcpt_to}>"))[0] == 250
        return await client.data(payload)
    finally:
        await client.close()


@pytest.mark.parametrize("payload,code,enhanced", [
    (b"From: a@example.org\r\nSubject: x\r\n\r\nbare\nLF\r\n.\r\n", 550, "5.6.0"),
    (b"From: a@example.org\r\nSubject: x\r\n\r\nbare\rCR\r\n.\r\n", 550, "5.6.0"),
    (b"From: a@example.org\r\nSubject: x\r\n\r\nNUL\x00here\r\n.\r\n", 550, "5.6.0"),
    (b"From: a@example.org\r\n\r\n" + b"x" * 1001 + b"\r\n.\r\n", 500, "5.5.2"),
    (b"".join(b"Received: from hop%d.example.org\r\n" % i for i in range(51)) + b"From: a@example.org\r\n\r\nloop\r\n.\r\n", 554, "5.4.6"),
    (b"From: a@example.org\r\n" + b"X-Big: " + b"y" * 900 + b"\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"z" * 900) for i in range(10))
     + b"\r\nbody\r\n.\r\n", 552, "5.3.4"),
])
async def test_content_checks_at_the_final_dot(tmp_path, store, payload, code, enhanced):
    async with mx_listener(tmp_path, store=store, inbound={"max_header_bytes": 4096}) as mx:
        got = await raw_data(mx, payload)
        assert got[0] == code and got[1].startswith(enhanced), got
        assert mx.rows() == []


async def test_a_line_of_exactly_the_limit_and_a_dot_stuffed_one_pass(tmp_path, store):
    async with mx_listener(tmp_path, store=store) as mx:
        line = b"x" * 998 + b"\r\n"
        stuffed = b".." + b"y" * 997 + b"\r\n"     # 1001 octets on the wire, 1000 once unstuffed
        got = await raw_data(mx, b"From: a@example.org\r\n\r\n" + line + stuffed + b".\r\n")
        assert got[0] == 250, got
        assert bytes(mx.rows()[0]["raw"]).endswith(line + b"." + b"y" * 997 + b"\r\n")


# --------------------------------------------------------------------------- the store fails


async def test_a_store_failure_is_451_and_leaves_no_row(tmp_path, store):
    with failing(store.inbound, "spool") as switch:
        async with mx_listener(tmp_path, store=store) as mx:
            async with mx.client() as smtp:
                await smtp.ehlo()
                await smtp.mail("customer@example.org")
                await smtp.rcpt("help@acme.test")
                with pytest.raises(aiosmtplib.SMTPDataError) as info:
                    await smtp.data(inbound_message())
                assert (info.value.code, info.value.message) == (451, "4.3.0 Internal error, please try again later")
                switch.on = False
                # The same session goes on: the retry is accepted.
                await smtp.mail("customer@example.org")
                await smtp.rcpt("help@acme.test")
                assert (await smtp.data(inbound_message())).code == 250
            assert len(mx.rows()) == 1 and switch.raised == 1


async def test_a_full_store_is_452_4_3_1(tmp_path):
    store = await Store.open(tmp_path / "gateway.db", StoreConfig(min_free_bytes=1 << 60))
    try:
        tenant = (await store.tenants.add("acme"))["id"]
        await channel_address(store, await receiving_domain(store, tenant, "acme.test"), "help@acme.test")
        async with mx_listener(tmp_path, store=store) as mx:
            async with mx.client() as smtp:
                await smtp.ehlo()
                await smtp.mail("customer@example.org")
                await smtp.rcpt("help@acme.test")
                with pytest.raises(aiosmtplib.SMTPDataError) as info:
                    await smtp.data(inbound_message())
                assert (info.value.code, info.value.message) == (452, "4.3.1 Insufficient system storage")
            assert mx.rows() == [] and mx.refusals("DATA", "452") == 1
    finally:
        await store.close()


async def test_a_store_failure_at_rcpt_is_451(tmp_path, store):
    with failing(store.recipients, "facts"):
        async with mx_listener(tmp_path, store=store) as mx:
            got = await rcpt(mx, "help@acme.test")
    assert got == (451, "4.3.0 Internal error, please try again later")


async def test_pipelined_commands_get_every_reply_in_order_and_none_is_held_while_we_wait(tmp_path, store):
    """RFC 2920: replies to a group of pipelined commands may go out together, but the listener
    must never sit on a reply while it waits for the client (a client that waits for it would hang)."""
    async with mx_listener(tmp_path, store=store) as mx:
        client = await RawClient.connect(mx.port, implicit=False)
        try:
            await client.cmd("EHLO client.example.org")
            # A group that ends without DATA: the client now waits for both replies.
            client.writer.write(b"MAIL FROM:<customer@example.org>\r\nRCPT TO:<help@acme.test>\r\n")
            assert [await client.reply() for _ in range(2)] == [(250, "2.1.0 Sender OK"), (250, "2.1.5 Recipient OK")]
            client.writer.write(b"RSET\r\nMAIL FROM:<customer@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
                                b"RCPT TO:<help@acme.test>\r\nDATA\r\n")
            got = [await client.reply() for _ in range(5)]
            assert [code for code, _ in got] == [250, 250, 550, 250, 354], got
            client.writer.write(b"From: a@example.org\r\n\r\npipelined\r\n.\r\nQUIT\r\n")
            assert (await client.reply())[0] == 250
            assert await client.reply() == (221, "2.0.0 Bye")
        finally:
            await client.close()
        assert json.loads(mx.rows()[0]["recipients"]) == ["help@acme.test"]


async def test_guessing_recipients_ends_the_connection(tmp_path, store):
    async with mx_listener(tmp_path, store=store, inbound={"max_refused_recipients": 3}) as mx:
        client = await RawClient.connect(mx.port, implicit=False)
        try:
            await client.cmd("EHLO client.example.org")
            await client.cmd("MAIL FROM:<customer@example.org>")
            assert (await client.cmd("RCPT TO:<help@acme.test>"))[0] == 250
            assert (await client.cmd("RCPT TO:<a@acme.test>"))[0] == 550
            assert (await client.cmd("RCPT TO:<b@acme.test>"))[0] == 550
            assert await client.cmd("RCPT TO:<c@acme.test>") == (550, "5.1.1 No such user here")
            assert await client.reply() == (421, "4.7.0 Too many refused recipients, closing connection")
            assert await client.reply() == (0, "connection closed")
        finally:
            await client.close()


async def test_connections_per_client_are_bounded(tmp_path, store):
    async with mx_listener(tmp_path, store=store, inbound={"max_connections_per_client": 1}) as mx:
        first = await RawClient.connect(mx.port, implicit=False)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", mx.port)
            assert await reader.readline() == b"421 4.7.0 Too many connections, try again later\r\n"
            writer.close()
            assert (await first.cmd("NOOP"))[0] == 250     # the first one is served on
        finally:
            await first.close()
        assert mx.refusals("CONNECT", "421") == 1


async def test_an_idle_client_is_told_why_it_is_closed(tmp_path, store):
    async with mx_listener(tmp_path, store=store, inbound={"command_timeout": 1.0}) as mx:
        client = await RawClient.connect(mx.port, implicit=False)
        try:
            assert (await client.cmd("EHLO client.example.org"))[0] == 250
            assert await asyncio.wait_for(client.reply(), 5) == (421, "4.4.2 Timeout, closing connection")
        finally:
            await client.close()


async def test_postmaster_without_a_domain_is_accepted(tmp_path, store):
    """RFC 5321 4.5.1: RCPT TO:<Postmaster> is the gateway's own postmaster (tenant none)."""
    async with mx_listener(tmp_path, store=store) as mx:
        client = await RawClient.connect(mx.port, implicit=False)
        try:
            await client.cmd("EHLO client.example.org")
            await client.cmd("MAIL FROM:<customer@example.org>")
            assert await client.cmd("RCPT TO:<PostMaster>") == (250, "2.1.5 Recipient OK")
            assert (await client.data(b"From: a@example.org\r\n\r\nhello postmaster\r\n.\r\n"))[0] == 250
        finally:
            await client.close()
        [row] = mx.rows()
    assert (row["tenant_id"], json.loads(row["recipients"])) == (None, ["postmaster@mx.gateway.test"])
