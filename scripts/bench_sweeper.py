#!/usr/bin/env python3
"""Sweeper benchmark: a store of N finished messages (plus some open ones), then the two sweeps that
matter: bodies at keep_bodies and whole messages (with attempts and events) at keep_messages. Reports
rows per second, the longest batch (how long the store writer was held at once) and the worst
latency of a small write committed meanwhile (what a submission would wait).

    .venv/bin/python scripts/bench_sweeper.py [--finished 50000] [--body 4096] [--batch 500]

The store is filled through the store's own write functions (tests/support/retention.py), in a
temporary directory; nothing else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import QueueConfig  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.sweeper import Sweeper  # noqa: E402
from tests.support.retention import fill_store  # noqa: E402
from tests.support.submission import make_usecase  # noqa: E402

DAY = 86400.0


async def timed_sweep(store: Store, sweeper: Sweeper) -> tuple[dict, float]:
    """One sweep with a probe writing beside it; returns the summary and the probe's worst latency."""
    worst, done = 0.0, asyncio.Event()

    async def probe() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            await store.events.append(None, "probe")
            worst = max(worst, time.perf_counter() - started)
            await asyncio.sleep(0.002)

    task = asyncio.create_task(probe())
    summary = await sweeper.sweep()
    done.set()
    await task
    return summary, worst


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", type=int, default=50_000)
    parser.add_argument("--open", type=int, default=1_000, help="pending, deferred and held messages each")
    parser.add_argument("--body", type=int, default=4096, help="body bytes per message")
    parser.add_argument("--batch", type=int, default=500, help="queue.sweep_batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "gateway.db")
        try:
            ctx = await make_usecase(store)
            now = time.time()
            started = time.perf_counter()
            await fill_store(store, ctx, finished=args.finished, pending=args.open, deferred=args.open, held=args.open,
                             body_size=args.body, now=now)
            fill = time.perf_counter() - started
            size = os.path.getsize(Path(tmp) / "gateway.db") + os.path.getsize(Path(tmp) / "gateway.db-wal")
            print(f"store: {args.finished} finished + {3 * args.open} open messages of {args.body} B, "
                  f"built in {fill:.1f} s, {size / 1e6:.0f} MB")
            clock = [now + 8 * DAY]
            idle = Sweeper(store, QueueConfig(keep_bodies=0, keep_messages=0, keep_attempts=0, keep_events=0))
            _, worst = await timed_sweep(store, idle)  # nothing to sweep: the probe alone, for comparison
            lat = []
            for _ in range(50):
                t = time.perf_counter()
                await store.events.append(None, "probe")
                lat.append(time.perf_counter() - t)
            print(f"a small write with no sweep running: median {sorted(lat)[25] * 1000:.1f} ms, worst {max(lat) * 1000:.1f} ms")
            sweeper = Sweeper(store, QueueConfig(sweep_batch=args.batch), clock=lambda: clock[0])
            for label, at, kinds in (("bodies (+8 d)", 8, ("bodies",)),
                                     ("messages, attempts, events (+31 d)", 31, ("messages", "attempts", "events", "threads"))):
                clock[0] = now + at * DAY
                summary, worst = await timed_sweep(store, sweeper)
                rows = sum(summary[k] for k in kinds)
                print(f"{label}: {rows} rows ({', '.join(f'{k} {summary[k]}' for k in kinds)}) in {summary['seconds']:.2f} s = "
                      f"{rows / summary['seconds']:,.0f} rows/s; {summary['batches']} batches, longest "
                      f"{summary['longest_batch'] * 1000:.1f} ms; a write beside it waited at most {worst * 1000:.1f} ms")
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
