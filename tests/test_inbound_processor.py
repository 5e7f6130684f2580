"""The processing stage (gateway/inbound/processor.py) on a real store, the real MIME parser, real
attachment files, the recipient resolver and (where a row was not authenticated at DATA) the real
authenticator against the test DNS server.

Rows are spooled as the MX and the poller spool them (store.inbound.spool); the processor runs as
the daemon runs it (a Component, woken by the spool's commit).
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from gateway.config import StoreConfig, parse_config
from gateway.inbound.attachments import AttachmentFiles
from gateway.inbound.mime import parse as parse_mime
from gateway.inbound.pins import Pins
from gateway.inbound.processor import Hooks, Processor
from gateway.inbound.reply import stripped_reply
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.inbound import Spooled
from gateway.store.queue import NewMessage, QueueIds
from tests.support.dns import dns_overrides
from gateway.unsubscribe.links import Keyring
from tests.support.inbound import channel_address, link_key, receiving_domain, signed_return_path

_ids = QueueIds()
MX_AUTH = "mx.gateway.test; spf=pass smtp.mailfrom=example.org; dkim=none; dmarc=none header.from=example.org"
CONTRACT = {"text", "html", "stripped_text", "to", "cc", "reply_to", "date", "in_reply_to", "references", "auth", "report",
            "defects", "forwarded_by"}
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 30


def mail(*, to: str = "help@acme.test", message_id: str, in_reply_to: str = "", references: str = "", subject: str = "Order 4711",
         sender: str = "ann@example.org", attachments: bool = False, extra: str = "") -> bytes:
    head = (f"From: Ann Customer <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{message_id}>\r\n" + (f"In-Reply-To: <{in_reply_to}>\r\n" if in_reply_to else "")
            + (f"References: {references}\r\n" if references else "") + extra + "MIME-Version: 1.0\r\n")
    text = "Hello, where is my parcel?\r\n\r\nOn Mon, 30 Nov 2026, Acme wrote:\r\n> Your order shipped.\r\n"
    if not attachments:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    b64 = lambda data: base64.encodebytes(data).decode().replace("\n", "\r\n")  # noqa: E731
    return (head + 'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
            '--mix\r\nContent-Type: multipart/alternative; boundary="alt"\r\n\r\n'
            f"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
            "--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hello, where is my parcel?</p>\r\n--alt--\r\n"
            '--mix\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="invoice.pdf"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64(PDF)}"
            '--mix\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename="photo.png"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64(PNG)}--mix--\r\n").encode()


@pytest.fixture
async def world(tmp_path, dns_server, store_url):
    store = await Store.open(tmp_path / "gateway.db", StoreConfig(url=store_url))
    config = parse_config({**dns_overrides(dns_server), "processor": {"poll_interval": 60.0, "concurrency": 2}})
    acme = (await store.tenants.add("acme"))["id"]
    globex = (await store.tenants.add("globex"))["id"]
    dom = await receiving_domain(store, acme, "acme.test", usecase="support")
    sales = await receiving_domain(store, acme, "sales.acme.test", usecase="sales")
    gdom = await receiving_domain(store, globex, "globex.test", usecase="desk")
    help_id = await channel_address(store, dom, "help@acme.test")
    await channel_address(store, sales, "deals@sales.acme.test")
    await channel_address(store, gdom, "desk@globex.test")
    files = AttachmentFiles(tmp_path / "attachments")
    metrics = Metrics()
    processor = Processor(store, config, metrics, files=files, pins=Pins(), parse=parse_mime, stripped_reply=stripped_reply,
                          hooks=Hooks(verp=Keyring(store).signed))
    store.inbound.on_spooled(processor.wake)
    await processor.start()
    w = {"store": store, "processor": processor, "files": files, "metrics": metrics, "acme": acme, "globex": globex,
         "support": dom.usecase_id, "sales": sales.usecase_id, "desk": gdom.usecase_id, "help_id": help_id, "config": config}
    yield w
    await processor.stop(asyncio.get_running_loop().time() + 2)
    await store.close()


async def spool(store, raw: bytes, *, tenant_id, rcpt="help@acme.test", auth=MX_AUTH, source="mx", connector_id=None) -> str:
    qid = _ids.new()
    await store.inbound.spool([Spooled(inbound_id=qid, source=source, raw=raw, tenant_id=tenant_id, recipients=[rcpt] if rcpt else [],
                                       mail_from="ann@example.org", client="127.0.0.1", helo="mx.example.org",
                                       connector_id=connector_id, auth_results=auth)])
    return qid


async def done(store, qid: str, timeout: float = 10.0) -> dict:
    """The row once the processor has finished or held it (woken by the spool: no poll within the test)."""
    async with asyncio.timeout(timeout):
        while (row := await store.inbound.get(qid))["state"] == "spooled":
            await asyncio.sleep(0.01)
    return row


async def send_out(store, tenant_id, usecase_id, message_id, parents=()) -> str:
    qid = _ids.new()
    await store.queue.put(NewMessage(queue_id=qid, tenant_id=tenant_id, usecase_id=usecase_id, mail_from="help@acme.test",
                                     message_id=message_id, body=b"Subject: re\r\n\r\nok\r\n", recipients=["ann@example.org"],
                                     parents=list(parents)))
    return qid


async def record(store, message_id, tenant_id):
    return await store.db.read(lambda c: dict(c.execute(
        "SELECT * FROM message_ids WHERE message_id = ? AND tenant_id = ?", (message_id, tenant_id)).fetchone()))


async def test_a_message_with_two_attachments_is_stored_with_its_files_summary_and_record(world):
    store, files = world["store"], world["files"]
    started = time.monotonic()
    qid = await spool(store, mail(message_id="m1@example.org", attachments=True), tenant_id=world["acme"])
    row = await done(store, qid)
    assert time.monotonic() - started < 5   # woken by the spool commit, not the 60 s poll
    assert (row["state"], row["kind"], row["usecase_id"], row["address_id"]) == ("processed", "message", world["support"], world["help_id"])
    assert (row["thread_id"], row["parent_message_id"], row["from_address"], row["subject"]) == ("m1@example.org", "", "ann@example.org", "Order 4711")
    s = row["summary"]
    assert CONTRACT <= set(s)
    assert s["text"].startswith("Hello, where is my parcel?") and "<p>Hello" in s["html"]
    assert s["stripped_text"].strip() == "Hello, where is my parcel?"
    assert s["to"] == ["help@acme.test"] and s["auth"]["spf"] == "pass" and s["auth"]["header"] == MX_AUTH
    assert row["raw"].startswith(b"Authentication-Results: mx.gateway.test;")   # the value the MX kept, now on the copy
    atts = await store.db.read(lambda c: [dict(r) for r in c.execute(
        "SELECT a.* FROM inbound_attachments a JOIN inbound_messages m ON m.id = a.message_id WHERE m.inbound_id = ? ORDER BY position", (qid,))])
    assert [(a["filename"], a["content_type"], a["size"]) for a in atts] == [("invoice.pdf", "application/pdf", len(PDF)),
                                                                            ("photo.png", "image/png", len(PNG))]
    assert files.read(atts[0]["sha256"]) == PDF and files.read(atts[1]["sha256"]) == PNG
    rec = await record(store, "m1@example.org", world["acme"])
    assert (rec["direction"], rec["thread_id"], rec["usecase_id"], rec["parent"]) == ("in", "m1@example.org", world["support"], "")
    [received] = await store.events.list(tenant_id=world["acme"], kind="received")
    assert received["subject"] == qid and received["data"]["kind"] == "message"
    assert world["metrics"].inbound_processed.labels(kind="message")._value.get() == 1


async def test_three_reply_rounds_with_a_client_that_strips_references(world):
    store, acme, support = world["store"], world["acme"], world["support"]
    await send_out(store, acme, support, "o1@acme.test")
    previous = "o1@acme.test"
    for n in (1, 2, 3):
        # The customer's client sends In-Reply-To only, never References.
        qid = await spool(store, mail(message_id=f"in{n}@example.org", in_reply_to=previous, subject=f"Re: Order {n}"), tenant_id=acme)
        row = await done(store, qid)
        assert (row["kind"], row["thread_id"], row["parent_message_id"], row["flags"]) == ("reply", "o1@acme.test", previous, [])
        assert (await record(store, f"in{n}@example.org", acme))["parent"] == previous
        # Our answer names the inbound message: it threads through the 'in' record.
        await send_out(store, acme, support, f"o{n + 1}@acme.test", parents=[f"in{n}@example.org"])
        assert (await record(store, f"o{n + 1}@acme.test", acme))["thread_id"] == "o1@acme.test"
        previous = f"o{n + 1}@acme.test"


async def test_a_reply_to_an_unknown_message_id_starts_a_new_thread(world):
    qid = await spool(world["store"], mail(message_id="x1@example.org", in_reply_to="never-seen@elsewhere"), tenant_id=world["acme"])
    row = await done(world["store"], qid)
    assert (row["kind"], row["thread_id"], row["parent_message_id"], row["flags"]) == ("message", "x1@example.org", "", [])


async def test_parents_of_another_tenant_or_use_case_are_refused_without_telling_whose(world):
    store, acme = world["store"], world["acme"]
    await send_out(store, world["globex"], world["desk"], "g1@globex.test")
    await send_out(store, acme, world["sales"], "s1@sales.acme.test")
    qid = await spool(store, mail(message_id="c1@example.org", in_reply_to="g1@globex.test"), tenant_id=acme)
    row = await done(store, qid)
    assert (row["kind"], row["thread_id"], row["parent_message_id"], row["flags"]) == ("message", "c1@example.org", "", ["cross_tenant_parent"])
    qid2 = await spool(store, mail(message_id="c2@example.org", in_reply_to="s1@sales.acme.test"), tenant_id=acme)
    row2 = await done(store, qid2)
    assert (row2["thread_id"], row2["flags"]) == ("c2@example.org", ["cross_usecase_parent"])
    refused = await store.events.list(tenant_id=acme, kind="thread_refused")
    assert [(e["subject"], e["data"]) for e in refused] == [
        (qid, {"flag": "cross_tenant_parent", "parent": "g1@globex.test"}),
        (qid2, {"flag": "cross_usecase_parent", "parent": "s1@sales.acme.test"})]
    # Nothing about the other tenant reaches acme: not its id, its use case or its thread.
    for e in await store.events.list(tenant_id=acme):
        assert str(world["globex"]) not in str(e["data"].get("tenant_id", "")) and "desk" not in str(e["data"])
    assert (await record(store, "c1@example.org", acme))["thread_id"] == "c1@example.org"


async def test_an_auto_reply_threads_but_stays_an_auto_reply(world):
    store, acme = world["store"], world["acme"]
    await send_out(store, acme, world["support"], "o9@acme.test")
    qid = await spool(store, mail(message_id="a1@example.org", in_reply_to="o9@acme.test", subject="Automatic reply: Order",
                                  extra="Auto-Submitted: auto-replied\r\n"), tenant_id=acme)
    row = await done(store, qid)
    assert (row["kind"], row["thread_id"], row["parent_message_id"]) == ("auto_reply", "o9@acme.test", "o9@acme.test")


async def test_an_unroutable_row_is_held_with_its_reason_and_a_release_processes_it(world):
    store = world["store"]
    qid = await spool(store, mail(to="gone@acme.test", message_id="h1@example.org"), tenant_id=world["acme"], rcpt="gone@acme.test")
    row = await done(store, qid)
    assert row["state"] == "held" and "receives here" in row["hold_reason"]
    async with asyncio.timeout(10):  # counted when hold() returns, a moment after another connection reads "held"
        while world["metrics"].inbound_held._value.get() < 1:
            await asyncio.sleep(0.01)
    assert world["metrics"].inbound_held._value.get() == 1
    [held] = await store.events.list(tenant_id=world["acme"], kind="inbound_held")
    assert held["subject"] == qid
    # The operator creates the address and releases the message: processed, nothing lost.
    dom = await store.db.read(lambda c: c.execute("SELECT id FROM domains WHERE name = 'acme.test'").fetchone()[0])
    from tests.support.inbound import Domain
    await channel_address(store, Domain(world["acme"], dom, "acme.test", world["support"]), "gone@acme.test")
    assert (await store.inbound.release(qid, tenant_id=world["acme"]))["released"]
    row = await done(store, qid)
    assert (row["state"], row["kind"]) == ("processed", "message")


async def test_a_crash_between_the_files_and_the_finish_is_processed_again_once(world):
    store, processor, files = world["store"], world["processor"], world["files"]
    await processor.stop(asyncio.get_running_loop().time())   # nothing running: we play the crash by hand
    qid = await spool(store, mail(message_id="k1@example.org", attachments=True), tenant_id=world["acme"])
    [row] = await store.inbound.spooled()
    processed, shas = await processor.process(row)    # files written, then the "crash": no finish
    processor.pins.unpin(shas)
    assert all(files.exists(s) for s in shas) and len(shas) == 2
    await processor.start()
    processor.wake()
    got = await done(store, qid)
    assert got["state"] == "processed"
    n = await store.db.read(lambda c: c.execute("SELECT count(*) FROM inbound_attachments").fetchone()[0])
    stored = sorted(p.name for p in (files.root).rglob("*") if p.is_file())
    assert n == 2 and stored == sorted(shas)       # the same two content-addressed files, no copies
    assert len(await store.events.list(kind="received")) == 1


async def test_polled_mail_without_an_address_goes_to_the_connectors_use_case(world):
    store = world["store"]
    c = await store.connectors.add("acme", "mailbox", "imap", direction="in",
                                   settings={"incoming": {"protocol": "imap", "usecase": "support", "enabled": True}})
    raw = mail(message_id="p1@example.org", extra="Return-Path: <ann@example.org>\r\n")
    qid = await spool(store, raw, tenant_id=world["acme"], rcpt="", auth="", source="imap", connector_id=c["id"])
    row = await done(store, qid)
    assert (row["state"], row["kind"], row["usecase_id"], row["address_id"]) == ("processed", "message", world["support"], None)
    assert row["raw"] == raw and row["summary"]["auth"]["header"] == ""   # not ours to evaluate: no SMTP client


async def test_mail_not_authenticated_at_data_is_authenticated_here(world, dns_server):
    from gateway.inbound import authres
    from gateway.inbound.dnscache import DnsCache
    store, config = world["store"], world["config"]
    cache = DnsCache.from_config(config.dns)

    async def authenticate(raw, **envelope):
        return await authres.authenticate(raw, resolver=cache, authserv_id="mx.gateway.test", **envelope)

    world["processor"]._authenticate = authenticate
    dns_server.set("example.org", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    qid = await spool(store, mail(message_id="au1@example.org"), tenant_id=world["acme"], auth="")
    row = await done(store, qid)
    assert row["summary"]["auth"]["spf"] == "pass"
    assert row["raw"].startswith(b"Authentication-Results: mx.gateway.test;") and b"spf=pass" in row["raw"].split(b"\r\n\r\n")[0]


async def test_a_vacation_reply_to_our_verp_return_path_threads_in_its_use_case(world):
    store, acme = world["store"], world["acme"]
    qid = await send_out(store, acme, world["support"], "o7@acme.test")
    verp = signed_return_path("bounces.acme.test", qid, 0, await link_key(store))
    raw = mail(to=verp, message_id="v1@example.org", in_reply_to="o7@acme.test", subject="Out of Office: Order",
               extra="Auto-Submitted: auto-replied\r\n")
    row = await done(store, await spool(store, raw, tenant_id=None, rcpt=verp))
    assert (row["kind"], row["tenant_id"], row["usecase_id"]) == ("auto_reply", acme, world["support"])
    assert (row["thread_id"], row["parent_message_id"]) == ("o7@acme.test", "o7@acme.test")
    # The same reply to the tag without our MAC (guessed, or from before tags were signed): it names no
    # message, so no use case (a polled mailbox hands the processor such rows without an RCPT check).
    forged = f"bounces+{qid}.0@bounces.acme.test"
    raw = mail(to=forged, message_id="v2@example.org", in_reply_to="o7@acme.test", subject="Out of Office: Order",
               extra="Auto-Submitted: auto-replied\r\n")
    row = await done(store, await spool(store, raw, tenant_id=None, rcpt=forged))
    assert (row["kind"], row["usecase_id"]) == ("auto_reply", None)


async def test_mail_a_tenants_mailbox_forwarded_is_attributed_to_the_customer(world):
    raw = mail(message_id="f1@example.org", sender="carl@customer.example",
               extra="X-Forwarded-For: support@acme-mailbox.example help@acme.test\r\nX-Forwarded-To: help@acme.test\r\n")
    row = await done(world["store"], await spool(world["store"], raw, tenant_id=world["acme"]))
    assert row["from_address"] == "carl@customer.example"
    assert row["summary"]["forwarded_by"] == "support@acme-mailbox.example"


async def test_a_backlog_larger_than_one_scan_with_every_slot_busy_is_all_processed(tmp_path, world):
    store, processor = world["store"], world["processor"]
    await processor.stop(asyncio.get_running_loop().time())
    small = Processor(store, parse_config({"processor": {"batch": 3, "concurrency": 3, "poll_interval": 60.0}}), Metrics(),
                      files=world["files"], parse=parse_mime, stripped_reply=stripped_reply)
    qids = [await spool(store, mail(message_id=f"b{n}@example.org"), tenant_id=world["acme"]) for n in range(10)]
    await small.start()
    try:
        async with asyncio.timeout(20):
            await small.drain()
    finally:
        await small.stop(asyncio.get_running_loop().time() + 2)
    rows = [await store.inbound.get(q) for q in qids]
    assert {r["state"] for r in rows} == {"processed"} and small.processed == 10


def complaint(rcpt: str, feedback_id: str) -> bytes:
    # What Microsoft's JMRP sends: no VERP return path, no Message-ID, but our Feedback-ID survives.
    return ("From: staff@feedback.example\r\nTo: fbl@bounces.acme.test\r\nSubject: complaint\r\nMessage-ID: <c@feedback.example>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary="r"\r\n\r\n'
            "--r\r\nContent-Type: text/plain\r\n\r\nAbuse report.\r\n--r\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: abuse\r\nVersion: 1\r\nOriginal-Rcpt-To: {rcpt}\r\n--r\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"From: app@acme.test\r\nFeedback-ID: {feedback_id}\r\nSubject: news\r\n--r--\r\n").encode()


async def test_a_complaint_found_by_its_feedback_id_suppresses_only_within_the_tenant_it_arrived_for(world):
    from gateway.feedback.arf import feedback_id
    from gateway.inbound.processor import Hooks
    from gateway.services.suppressions import SuppressionService
    store, acme, globex = world["store"], world["acme"], world["globex"]
    world["processor"].hooks = Hooks(report=SuppressionService(store).handle_report)
    row = await done(store, await spool(store, complaint("dan@dest.example", feedback_id(acme, world["support"])), tenant_id=None,
                                        rcpt="fbl@bounces.acme.test"))
    assert (row["kind"], row["tenant_id"], row["summary"]["report"]["refers_to"]["by"]) == ("arf", acme, "feedback_id")
    assert await store.suppressions.live(acme, "dan@dest.example", [("marketing", 0)]) is not None
    # The same complaint at acme's feedback address naming globex's Feedback-ID: nobody acts on it.
    row = await done(store, await spool(store, complaint("eve@dest.example", feedback_id(globex, world["desk"])), tenant_id=None,
                                        rcpt="fbl@bounces.acme.test"))
    assert (row["tenant_id"], row["flags"], row["summary"]["report"]["refers_to"]) == (acme, ["report_tenant_mismatch"], None)
    assert await store.suppressions.live(globex, "eve@dest.example", [("marketing", 0)]) is None


async def test_a_message_reusing_another_use_cases_message_id_does_not_join_its_thread(world):
    # The thread id of a new conversation is the root's Message-ID, which every recipient of the
    # root sees. A sender who reuses it as the Message-ID of a new message must not thereby put
    # the message into that conversation of another use case (or tenant): the confused-deputy rule
    # that refuses such a parent by In-Reply-To must hold for the message's own id too.
    store, acme = world["store"], world["acme"]
    await send_out(store, acme, world["sales"], "s1@sales.acme.test")
    await send_out(store, world["globex"], world["desk"], "g1@globex.test")
    qid = await spool(store, mail(message_id="s1@sales.acme.test"), tenant_id=acme)
    row = await done(store, qid)
    assert (row["state"], row["usecase_id"]) == ("processed", world["support"])
    assert row["thread_id"] != "s1@sales.acme.test"
    thread = await store.inbox.thread("s1@sales.acme.test", tenant_id=acme)
    assert [e["direction"] for e in thread] == ["out"]   # the sales conversation holds only its own message
    # Another tenant's id: kept (every thread read is per tenant; globex's thread shows none of it).
    qid2 = await spool(store, mail(message_id="g1@globex.test"), tenant_id=acme)
    assert (await done(store, qid2))["state"] == "processed"
    assert [e["direction"] for e in await store.inbox.thread("g1@globex.test", tenant_id=world["globex"])] == ["out"]


async def test_replies_spooled_with_their_parents_thread_to_them_and_finish_after_them(world):
    # Several messages in flight at once (processor.concurrency): a message answering one still in
    # flight waits for its finish, so it finds its parent's record, and the chain's received events
    # come in spool order (before the fix each reply found no parent: a new conversation each).
    store, acme = world["store"], world["acme"]
    chain = [mail(message_id="t0@example.org", subject="Order 1")] + [
        mail(message_id=f"t{n}@example.org", in_reply_to=f"t{n - 1}@example.org", subject=f"Re: Order {n}") for n in range(1, 6)]
    # Every other row as the MX spools it (its Message-ID kept: known before it is parsed), the rest without.
    rows = [Spooled(inbound_id=_ids.new(), source="mx", raw=raw, tenant_id=acme, recipients=["help@acme.test"],
                    mail_from="ann@example.org", client="127.0.0.1", helo="mx.example.org", auth_results=MX_AUTH,
                    header_message_id=f"t{n}@example.org" if n % 2 else "") for n, raw in enumerate(chain)]
    await store.inbound.spool(rows)
    got = [await done(store, r.inbound_id) for r in rows]
    assert [(g["kind"], g["thread_id"], g["parent_message_id"]) for g in got] == [
        ("message", "t0@example.org", "")] + [("reply", "t0@example.org", f"t{n - 1}@example.org") for n in range(1, 6)]
    received = [e["subject"] for e in sorted(await store.events.list(tenant_id=acme, kind="received"), key=lambda e: e["id"])]
    assert received == [r.inbound_id for r in rows]
