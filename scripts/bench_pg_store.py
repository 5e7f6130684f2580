#!/usr/bin/env python3
"""The store on PostgreSQL, piece by piece: what a message costs the writer there.

    .venv/bin/python scripts/bench_pg_store.py [--messages 200]

Starts a PostgreSQL for the run (tests/support/postgres.py: a temp dir, fsync on), opens the store on
it and prints: the round-trip time of one statement (what each repository statement costs the writer
thread, waiting), the statements one message takes (put, then claim and record its delivery), the
cost of translating a statement (dialect.py, once per distinct SQL text) against the cached lookup
every execution pays, and the writes per second of --messages puts from 20 concurrent callers (group
commit: many per transaction). Compare the last with the same on SQLite (printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.config import StoreConfig  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.store.delivery import Outcome  # noqa: E402
from gateway.store.dialect import translate  # noqa: E402
from gateway.store.queue import NewMessage, QueueIds  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402
from tests.support.submission import make_usecase  # noqa: E402


def message(ctx, ids: QueueIds) -> NewMessage:
    qid = ids.new()
    return NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["usecase_id"], mail_from="app@example.com",
                      message_id=f"{qid}@example.com", body=b"x" * 4096, recipients=["a@dest.example"])


async def throughput(store: Store, ctx, n: int) -> float:
    ids = QueueIds()
    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(n):
        queue.put_nowait(message(ctx, ids))

    async def caller() -> None:
        while not queue.empty():
            await store.queue.put(queue.get_nowait())

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(20)))
    return n / (time.perf_counter() - began), (time.process_time() - cpu) / n


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200)
    args = ap.parse_args()
    with Postgres() as pg, tempfile.TemporaryDirectory() as tmp:
        url = pg.create_database("bench")
        store = await Store.open(Path(tmp) / "pg.db", StoreConfig(url=url))
        try:
            ctx = await make_usecase(store)
            writer = store.db._write_conn
            began = time.perf_counter()
            for _ in range(200):
                await store.db.read_point(lambda c: c.execute("SELECT 1").fetchone())
            hop = (time.perf_counter() - began) / 200
            raw = writer.raw
            began = time.perf_counter()
            for _ in range(200):
                raw.execute("SELECT 1").fetchone()
            trip = (time.perf_counter() - began) / 200
            print(f"round trip    {trip * 1e3:.3f} ms per statement (writer connection); a point read through the pool {hop * 1e3:.3f} ms")
            ids = QueueIds()
            s0, r0 = writer.statements, writer.round_trips
            await store.queue.put(message(ctx, ids))
            put, put_trips = writer.statements - s0, writer.round_trips - r0
            s0, r0 = writer.statements, writer.round_trips
            [row] = await store.delivery.claim("bench", 10)
            claim, claim_trips = writer.statements - s0, writer.round_trips - r0
            s0, r0 = writer.statements, writer.round_trips
            await store.delivery.record("bench", ctx["tenant_id"], row["message"]["queue_id"],
                                        [Outcome(recipient_id=row["id"], state="delivered", code=250)])
            record, record_trips = writer.statements - s0, writer.round_trips - r0
            print(f"statements    put {put}, claim {claim}, record {record}")
            print(f"round trips   put {put_trips}, claim {claim_trips}, record {record_trips} (each a batch of one, BEGIN to COMMIT)")
            msgs = [message(ctx, ids) for _ in range(20)]
            r0, c0 = writer.round_trips, store.db.commits
            await asyncio.gather(*(store.queue.put(m) for m in msgs))
            print(f"round trips   {(writer.round_trips - r0) / len(msgs):.2f} per put in 20 concurrent puts"
                  f" ({store.db.commits - c0} commits)")
            keys = store.db.translate.statements()
            tr = store.db.translate
            cold = timeit.timeit(lambda: [translate(sql, tr.id_tables, many=many, columns=tr.columns) for sql, many in keys],
                                 number=20) / 20 / len(keys)
            warm = timeit.timeit(lambda: [tr(sql, many=many) for sql, many in keys], number=2000) / 2000 / len(keys)
            print(f"translation   {len(keys)} statements: {cold * 1e6:.0f} us each the first time, {warm * 1e6:.2f} us each cached")
            rate, cpu = await throughput(store, ctx, args.messages)
            print(f"puts          {rate:.0f} msg/s on PostgreSQL, {cpu * 1e3:.2f} ms of this process's CPU each"
                  f" ({args.messages} messages, 20 callers; commits {store.db.commits})")
            # psycopg prepares a statement on the server once it ran prepare_threshold (5) times:
            # then a execution sends only Bind/Execute, no Parse (the plan is kept).
            prepared = raw.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
            print(f"prepared      {prepared} statements on the writer's connection (prepare_threshold {raw.prepare_threshold})")
        finally:
            await store.close()
        lite = await Store.open(Path(tmp) / "gateway.db")
        try:
            rate, cpu = await throughput(lite, await make_usecase(lite), args.messages)
            print(f"puts          {rate:.0f} msg/s on SQLite, {cpu * 1e3:.2f} ms of CPU each (the same)")
        finally:
            await lite.close()


if __name__ == "__main__":
    asyncio.run(main())
