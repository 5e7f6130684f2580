"""The parser pool (gateway/inbound/pool.py): processing through pool processes stores what the
worker thread stored, a pool process killed mid-message loses and doubles nothing, a message that
kills its parser every time is held with the reason, and a reply is still ordered behind its parent
when both are in the pool at once. Real store, real MIME parser (tests/support/parsers.py wraps it
with cues the messages carry), real attachment files, real pool processes. SQLite only: the pool sits above the store (test_inbound_processor.py runs
the processor, through the pool, on both backends)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from gateway.config import StoreConfig, parse_config
from gateway.inbound.attachments import AttachmentFiles
from gateway.inbound.mime import parse as parse_mime
from gateway.inbound.pins import Pins
from gateway.inbound.processor import MAX_DEATHS, Processor
from gateway.inbound.reply import stripped_reply
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.inbound import Spooled
from gateway.store.queue import QueueIds
from tests.support.inbound import channel_address, receiving_domain
from tests.support.parsers import misbehaving_parse
from tests.test_inbound_processor import MX_AUTH, done, mail, send_out

_ids = QueueIds()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 20
PDF = b"%PDF-1.4\n" + bytes(reversed(range(256))) * 30


def with_inline_image(message_id: str, in_reply_to: str) -> bytes:
    """An HTML reply showing an image by cid: and carrying a PDF (Apple Mail's nesting)."""
    b64 = lambda data: base64.encodebytes(data).decode().replace("\n", "\r\n")  # noqa: E731
    return (f"From: Ann <ann@example.org>\r\nTo: help@acme.test\r\nSubject: Re: order\r\nMessage-ID: <{message_id}>\r\n"
            f"In-Reply-To: <{in_reply_to}>\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
            '--mix\r\nContent-Type: multipart/related; boundary="rel"\r\n\r\n'
            '--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>See <img src="cid:logo@ann"></p>\r\n'
            '--rel\r\nContent-Type: image/png\r\nContent-ID: <logo@ann>\r\nContent-Disposition: inline\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64(PNG)}--rel--\r\n"
            '--mix\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="invoice.pdf"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{b64(PDF)}--mix--\r\n").encode()


async def open_world(tmp: Path, *, processes: int, parse=parse_mime, concurrency: int = 4):
    store = await Store.open(tmp / "gateway.db", StoreConfig())
    config = parse_config({"processor": {"poll_interval": 60.0, "concurrency": concurrency, "processes": processes,
                                         "process_max_bytes": 4 * 1024 * 1024 if processes else 0}})
    acme = (await store.tenants.add("acme"))["id"]
    dom = await receiving_domain(store, acme, "acme.test", usecase="support")
    await channel_address(store, dom, "help@acme.test")
    await store.webhooks.add("acme", "app", "https://app.example/hook", "s" * 32, None)
    files = AttachmentFiles(tmp / "attachments")
    processor = Processor(store, config, Metrics(), files=files, pins=Pins(), parse=parse, stripped_reply=stripped_reply)
    store.inbound.on_spooled(processor.wake)
    return store, processor, files, acme, dom.usecase_id


@pytest.fixture
async def pooled(tmp_path):
    store, processor, files, acme, usecase = await open_world(tmp_path, processes=2, parse=misbehaving_parse)
    await processor.start()
    yield {"store": store, "processor": processor, "files": files, "acme": acme, "usecase": usecase, "tmp": tmp_path}
    await processor.stop(asyncio.get_running_loop().time() + 2)
    await store.close()


async def spool_all(store, raws: list[bytes], tenant_id: int) -> list[str]:
    rows = [Spooled(inbound_id=_ids.new(), source="mx", raw=raw, tenant_id=tenant_id, recipients=["help@acme.test"],
                    mail_from="ann@example.org", client="127.0.0.1", helo="mx.example.org", auth_results=MX_AUTH) for raw in raws]
    await store.inbound.spool(rows)
    return [r.inbound_id for r in rows]


async def stored(store, qid: str, files: AttachmentFiles) -> dict:
    row = await done(store, qid)
    atts = await store.db.read(lambda c: [dict(r) for r in c.execute(
        "SELECT a.position, a.filename, a.content_type, a.size, a.sha256, a.content_id, a.inline FROM inbound_attachments a"
        " JOIN inbound_messages m ON m.id = a.message_id WHERE m.inbound_id = ? ORDER BY a.position", (qid,))])
    for a in atts:
        a["bytes"] = files.read(a["sha256"])
    events = [(e["kind"], e["data"]) for e in await store.events.list(tenant_id=row["tenant_id"])]
    outbox = await store.db.read(lambda c: c.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0])
    keep = ("state", "kind", "thread_id", "parent_message_id", "from_address", "subject", "summary", "raw", "usecase_id")
    return {**{k: row[k] for k in keep}, "attachments": atts, "events": events, "outbox": outbox}


async def test_a_message_through_the_pool_is_stored_as_through_a_worker_thread(tmp_path):
    results = []
    for processes in (0, 2):
        tmp = tmp_path / f"p{processes}"
        tmp.mkdir()
        store, processor, files, acme, usecase = await open_world(tmp, processes=processes)
        await send_out(store, acme, usecase, "out1@acme.test")
        await processor.start()
        try:
            [qid] = await spool_all(store, [with_inline_image("in1@example.org", "out1@acme.test")], acme)
            results.append(await stored(store, qid, files))
            assert processor.status()["processor"]["parser_processes"] == processes
        finally:
            await processor.stop(asyncio.get_running_loop().time() + 2)
            await store.close()
    threaded, pooled = results
    assert pooled == threaded
    assert (pooled["kind"], pooled["thread_id"], pooled["parent_message_id"]) == ("reply", "out1@acme.test", "out1@acme.test")
    assert [(a["filename"], a["content_id"], a["inline"], a["bytes"]) for a in pooled["attachments"]] == [
        ("logo@ann", "logo@ann", 1, PNG), ("invoice.pdf", "", 0, PDF)]
    assert pooled["raw"].startswith(b"Authentication-Results: ") and pooled["outbox"] >= 1
    assert [k for k, _ in pooled["events"]].count("received") == 1


async def test_a_pool_process_killed_mid_message_processes_it_exactly_once(pooled):
    store, acme, marker = pooled["store"], pooled["acme"], pooled["tmp"] / "died-once"
    raw = mail(message_id="k1@example.org", attachments=True, extra=f"X-Test-Die: {marker}\r\n")
    [qid] = await spool_all(store, [raw], acme)
    row = await done(store, qid)
    assert marker.exists()                    # its first parse killed the process
    assert (row["state"], row["kind"]) == ("processed", "message")
    status = pooled["processor"].status()["processor"]
    assert (status["parser_deaths"], status["held"]) == (1, 0)
    received = await store.events.list(tenant_id=acme, kind="received")
    assert [e["subject"] for e in received] == [qid]
    ids = await store.db.read(lambda c: c.execute("SELECT count(*) FROM message_ids WHERE message_id = 'k1@example.org'").fetchone()[0])
    assert ids == 1
    # The pool has its two processes again: the next messages are parsed there.
    qids = await spool_all(store, [mail(message_id=f"n{n}@example.org") for n in range(3)], acme)
    assert [(await done(store, q))["state"] for q in qids] == ["processed"] * 3


async def test_a_message_that_kills_its_parser_every_time_is_held_with_the_reason(pooled):
    store, acme = pooled["store"], pooled["acme"]
    poison, fine = await spool_all(store, [mail(message_id="p1@example.org", extra="X-Test-Die: always\r\n"),
                                           mail(message_id="f1@example.org")], acme)
    row = await done(store, poison)
    assert row["state"] == "held"
    assert "parser's process ended" in row["hold_reason"] and f"{MAX_DEATHS} times" in row["hold_reason"]
    assert (await done(store, fine))["state"] == "processed"
    assert pooled["processor"].status()["processor"]["parser_deaths"] == MAX_DEATHS


async def test_a_reply_in_the_pool_with_its_parent_waits_for_the_parents_finish(pooled):
    store, acme, tmp = pooled["store"], pooled["acme"], pooled["tmp"]
    release, parsed = tmp / "release-parent", tmp / "reply-parsed"
    parent = mail(message_id="q0@example.org", extra=f"X-Test-Hold: {release}\r\n")
    reply = mail(message_id="q1@example.org", in_reply_to="q0@example.org", subject="Re: Order 4711", extra=f"X-Test-Mark: {parsed}\r\n")
    first, second = await spool_all(store, [parent, reply], acme)
    async with asyncio.timeout(20):
        while not parsed.exists():            # the reply is parsed in the other process meanwhile
            await asyncio.sleep(0.01)
    assert (await store.inbound.get(second))["state"] == "spooled"   # ... and waits for its parent
    release.touch()
    got = [await done(store, q) for q in (first, second)]
    assert [(g["kind"], g["thread_id"], g["parent_message_id"]) for g in got] == [
        ("message", "q0@example.org", ""), ("reply", "q0@example.org", "q0@example.org")]
    received = sorted(await store.events.list(tenant_id=acme, kind="received"), key=lambda e: e["id"])
    assert [e["subject"] for e in received] == [first, second]
