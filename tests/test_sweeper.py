"""Retention (issue 7 item 10): the sweeper on a large store, and what operators see of it.

The store is filled through the store's own write functions (tests/support/retention.py: the same
_put/_claim/_record that submission and delivery run, so migration 0008's finished-message trigger
fires as in service). Time is the sweeper's injected clock, days ahead; the writer is real.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gateway.config import QueueConfig
from gateway.errors import Conflict
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.store.db import connect
from gateway.sweeper import Sweeper
from tests.support import process
from tests.support.daemon import running_daemon
from tests.support.retention import fill_store
from tests.support.submission import make_usecase

DAY = 86400.0
FINISHED = 20_000   # ~7 s to build on the shared test machine; scripts/bench_sweeper.py goes to 200,000
BATCH_BOUND = 0.5   # seconds: the longest a sweep batch (or a write queued behind one) may take


async def test_sweeper_on_a_large_store_drops_old_bodies_then_messages_in_short_batches(tmp_path):
    store = await Store.open(tmp_path / "gateway.db")
    try:
        ctx = await make_usecase(store)
        only_finished = await make_usecase(store, domain="news.example.com", usecase="newsletter")
        now = time.time()
        ids = await fill_store(store, ctx, finished=FINISHED, pending=20, deferred=20, held=20, now=now)
        await fill_store(store, only_finished, finished=50, now=now)
        open_ids = set(ids["pending"] + ids["deferred"] + ids["held"])

        # `queue list` shows what is still to do; finished mail only when asked for.
        listed = await store.queue.list(limit=100_000)
        assert {m["queue_id"] for m in listed} == open_ids
        assert len(await store.queue.list(limit=100_000, finished=True)) == FINISHED + 50 + len(open_ids)

        clock = [now + 6 * DAY]
        metrics = Metrics()
        sweeper = Sweeper(store, QueueConfig(), metrics, clock=lambda: clock[0])
        assert (await sweeper.sweep())["bodies"] == 0  # nothing is 7 days old yet

        # Eight days on: every finished body goes, in batches, while other writes keep committing.
        clock[0] = now + 8 * DAY
        latencies: list[float] = []
        done = asyncio.Event()

        async def writer_probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await store.events.append(None, "probe")
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)

        probe = asyncio.create_task(writer_probe())
        swept = await sweeper.sweep()
        done.set()
        await probe
        assert swept["bodies"] == FINISHED + 50 and swept["messages"] == 0
        assert swept["batches"] >= FINISHED // 500
        assert swept["longest_batch"] < BATCH_BOUND, swept
        assert len(latencies) >= 5 and max(latencies) < BATCH_BOUND, max(latencies)
        some = await store.queue.show(ids["finished"][0])
        assert some["body_dropped_at"] is not None and some["recipients"][0]["state"] == "delivered"
        assert some["recipients"][0]["attempt_log"]  # attempts have their own, longer period
        for qid in open_ids:  # unfinished mail keeps its body, however old
            shown = await store.queue.show(qid)
            assert shown["body_dropped_at"] is None and shown["finished_at"] is None
        assert await store.db.read(lambda c: c.execute("SELECT COUNT(*) FROM messages WHERE length(body) > 0").fetchone()[0]) == len(open_ids)
        assert metrics.swept.labels(kind="bodies")._value.get() == FINISHED + 50
        assert (await sweeper.sweep())["bodies"] == 0  # done is done: the index holds no dropped bodies

        # A use case whose mail all finished cannot go yet; the refusal says how it will.
        with pytest.raises(Conflict, match="queue.keep_messages"):
            await store.usecases.delete("acme", "newsletter")

        # Thirty-one days on: finished messages, old attempts and events go; open mail stays.
        clock[0] = now + 31 * DAY
        swept = await sweeper.sweep()
        assert swept["messages"] == FINISHED + 50 and swept["longest_batch"] < BATCH_BOUND, swept
        assert swept["events"] > 2 * FINISHED
        counts = await store.queue.counts()
        assert counts["messages"] == len(open_ids) and counts["delivered"] == 0
        assert {m["queue_id"] for m in await store.queue.list(limit=100_000, finished=True)} == open_ids
        assert await store.queue.show(ids["finished"][0]) is None
        assert swept["threads"] == 0  # Message-ID records stay for replies (keep_threads, a year)
        assert await store.queue.thread_of(ctx["tenant_id"], f"{ids['finished'][0]}@example.com")
        await store.usecases.delete("acme", "newsletter")
        clock[0] = now + 366 * DAY
        assert (await sweeper.sweep())["threads"] == FINISHED + 50 + len(open_ids)
        assert await store.queue.thread_of(ctx["tenant_id"], f"{ids['finished'][0]}@example.com") is None
    finally:
        await store.close()


async def test_queue_list_shows_what_is_left_to_do_and_all_with_the_flag(tmp_path):
    async with running_daemon(tmp_path) as d:
        ctx = await make_usecase(d.store)
        # Held and deferred (a year ahead) stay put while the daemon's scheduler runs.
        ids = await fill_store(d.store, ctx, finished=3, deferred=2, held=2)

        def cli(*args: str) -> list[dict]:
            result = process.run_cli("--socket", str(d.daemon.paths.socket), "queue", "list", *args, "--json")
            return json.loads(result.stdout)

        default = await asyncio.to_thread(cli)
        assert sorted(m["queue_id"] for m in default) == sorted(ids["deferred"] + ids["held"])
        everything = await asyncio.to_thread(cli, "--all")
        assert {m["queue_id"] for m in everything} == {q for v in ids.values() for q in v}
        assert {m["state"] for m in everything if m["queue_id"] in ids["finished"]} == {"delivered"}
        delivered = await asyncio.to_thread(cli, "--state", "delivered")
        assert sorted(m["queue_id"] for m in delivered) == sorted(ids["finished"])



async def test_migration_marks_messages_that_finished_before_it(tmp_path):
    """A store from before 0008: its finished mail is found by the migration's backfill, open mail is not."""
    path = tmp_path / "gateway.db"
    store = await Store.open(path)
    ctx = await make_usecase(store)
    ids = await fill_store(store, ctx, finished=30, deferred=3, held=3)
    await store.close()
    conn = connect(path)  # back to schema 6 + data: as a store written before this gateway version
    conn.executescript("BEGIN; DROP TRIGGER recipients_finish; DROP TABLE finished_messages;"
                       " DELETE FROM schema_migrations WHERE version = 8; COMMIT;")
    conn.close()
    store = await Store.open(path)
    try:
        listed = await store.queue.list(limit=1000, finished=True)
        assert len(listed) == 36
        finished = {m["queue_id"] for m in listed if (await store.queue.show(m["queue_id"]))["finished_at"] is not None}
        assert finished == set(ids["finished"])
        swept = await Sweeper(store, QueueConfig(), clock=lambda: time.time() + 8 * DAY).sweep()
        assert swept["bodies"] == 30
    finally:
        await store.close()
