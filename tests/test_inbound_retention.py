"""Retention of inbound mail: processed rows age out in bounded batches, held and spooled rows stay,
attachment files go when no row references them and nobody is writing them (gateway/inbound/pins.py)."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.config import ProcessorConfig, QueueConfig
from gateway.inbound.attachments import AttachmentFiles
from gateway.inbound.pins import Pins
from gateway.store import Store
from gateway.config import StoreConfig
from gateway.store.inbound import Attachment, Processed, Spooled
from gateway.store.queue import QueueIds
from gateway.sweeper import Sweeper

DAY = 86400.0
_ids = QueueIds()


@pytest.fixture
async def store(tmp_path, store_url):
    s = await Store.open(tmp_path / "gateway.db", StoreConfig(url=store_url))
    yield s
    await s.close()


async def spool_processed(store, tenant_id, shas, *, at):
    (row_id,) = await store.inbound.spool([Spooled(inbound_id=_ids.new(), source="mx", raw=b"Subject: x\r\n\r\nx\r\n", tenant_id=tenant_id)])
    atts = [Attachment(position=i, filename=f"a{i}.bin", content_type="application/octet-stream", size=1, sha256=s)
            for i, s in enumerate(shas)]
    assert await store.inbound.finish(row_id, Processed(kind="message", attachments=atts, now=at))
    return row_id


async def states(store):
    return await store.db.read(lambda c: [tuple(r) for r in c.execute("SELECT id, state FROM inbound_messages ORDER BY id")])


async def test_processed_rows_go_held_and_spooled_stay_and_shared_files_wait_for_their_last_row(store):
    t = (await store.tenants.add("acme"))["id"]
    now = time.time()
    old_a = await spool_processed(store, t, ["s1", "s2"], at=now - 40 * DAY)
    await spool_processed(store, t, ["s2"], at=now - 1 * DAY)           # young: keeps s2 referenced
    held_ids = await store.inbound.spool([Spooled(inbound_id=_ids.new(), source="mx", raw=b"x", tenant_id=t)])
    await store.inbound.hold(held_ids[0], "boom", now=now - 90 * DAY)
    (spooled_id,) = await store.inbound.spool([Spooled(inbound_id=_ids.new(), source="mx", raw=b"y", tenant_id=t, now=now - 90 * DAY)])
    done = await store.retention.delete_inbound(now - 30 * DAY, max_rows=100, max_bytes=1 << 20)
    assert (done["rows"], done["files"]) == (1, ["s1"])
    left = dict(await states(store))
    assert old_a not in left and left[held_ids[0]] == "held" and left[spooled_id] == "spooled"
    n = await store.db.read(lambda c: c.execute("SELECT count(*) FROM inbound_attachments WHERE sha256 = 's2'").fetchone()[0])
    assert n == 1
    # The young row's turn: s2 is unreferenced now.
    done = await store.retention.delete_inbound(now, max_rows=100, max_bytes=1 << 20)
    assert (done["rows"], done["files"]) == (1, ["s2"])


async def test_batches_are_bounded(store):
    t = (await store.tenants.add("acme"))["id"]
    now = time.time()
    for _ in range(5):
        await spool_processed(store, t, [], at=now - 40 * DAY)
    done = await store.retention.delete_inbound(now - 30 * DAY, max_rows=2, max_bytes=1 << 20)
    assert (done["rows"], done["more"]) == (2, True)


async def test_the_sweeper_removes_unreferenced_files_but_not_pinned_ones(store, tmp_path):
    t = (await store.tenants.add("acme"))["id"]
    files = AttachmentFiles(tmp_path / "attachments")
    a, b, c = files.put([b"alpha"]), files.put([b"bravo"]), files.put([b"charlie"])
    now = time.time()
    await spool_processed(store, t, [a, b, c], at=now - 40 * DAY)
    pins = Pins()
    pins.pin([b])                       # a message being processed carries the same bytes as b
    sweeper = Sweeper(store, QueueConfig(), processor=ProcessorConfig(keep_inbound=30 * DAY), files=files, pins=pins,
                      clock=lambda: now)
    summary = await sweeper.sweep()
    assert (summary["inbound"], summary["attachment_files"]) == (1, 2)
    assert (files.exists(a), files.exists(b), files.exists(c)) == (False, True, False)


def test_an_unpin_during_a_sweep_keeps_the_file():
    pins = Pins()
    pins.pin(["x"])
    pins.begin()
    pins.unpin(["x"])                   # its row committed after the sweep's write looked
    assert not pins.removable("x")
    pins.end()
    assert pins.removable("x")


def test_removal_waits_for_puts_in_progress():
    pins = Pins()
    entered, release, removed = threading.Event(), threading.Event(), threading.Event()

    def put():
        with pins.putting():
            entered.set()
            release.wait(5)
            pins.pin(["x"])

    def remove():
        with pins.removing():
            removed.set()

    writer = threading.Thread(target=put)
    writer.start()
    entered.wait(5)
    remover = threading.Thread(target=remove)
    remover.start()
    assert not removed.wait(0.05)       # the put has not pinned yet: no removal may run
    release.set()
    writer.join(5)
    remover.join(5)
    assert removed.is_set() and not pins.removable("x")


async def test_release_puts_a_held_row_back_and_says_so(store):
    t = (await store.tenants.add("acme"))["id"]
    qid = _ids.new()
    (row_id,) = await store.inbound.spool([Spooled(inbound_id=qid, source="mx", raw=b"x", tenant_id=t)])
    woken = []
    store.inbound.on_spooled(lambda: woken.append(1))
    await store.inbound.hold(row_id, "ValueError: bad")
    assert [r["hold_reason"] for r in await store.inbound.held(tenant_id=t)] == ["ValueError: bad"]
    other = (await store.tenants.add("globex"))["id"]
    from gateway.errors import NotFound
    with pytest.raises(NotFound):
        await store.inbound.release(qid, tenant_id=other)
    assert (await store.inbound.release(qid, tenant_id=t))["released"] is True
    assert woken == [1]
    assert [r["inbound_id"] for r in await store.inbound.spooled()] == [qid]
    assert (await store.inbound.release(qid))["released"] is False
    events = await store.events.list(tenant_id=t, kind="inbound_released")
    assert [e["subject"] for e in events] == [qid]
