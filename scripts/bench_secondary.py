#!/usr/bin/env python3
"""Two writers on one store: the daemon's group commit beside a secondary's (the web worker's) writes.

    .venv/bin/python scripts/bench_secondary.py [--seconds 5] [--writers 40] [--rate 200]

The daemon's side: ``--writers`` coroutines each writing a 4 KiB row and awaiting its commit, in a
loop (submission's shape: each waits for the group commit that holds its message). The secondary,
in another process: ``--rate`` single-row writes per second, open loop (write i is due at start +
i/rate; its latency runs from then to its commit). Both are gateway/store/db.py's Database, on one
file in a temporary directory (the disk under /tmp). Prints the daemon's writes/s and p99 alone,
then beside the secondary, and the secondary's p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store.db import Database  # noqa: E402

ROW = b"x" * 4096


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def insert(conn, data: bytes) -> None:
    conn.execute("INSERT INTO bench (x) VALUES (?)", (data,))


async def daemon_load(db: Database, writers: int, seconds: float) -> tuple[int, list[float]]:
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def one() -> None:
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await db.write(insert, ROW)
            lat.append(time.perf_counter() - t0)

    await asyncio.gather(*(one() for _ in range(writers)))
    return len(lat), lat


def secondary(path: Path, rate: float, seconds: float, out) -> None:
    async def run() -> list[float]:
        db = await Database.open(path, secondary=True)
        lat: list[float] = []
        began = time.perf_counter()

        async def one(i: int) -> None:
            due = began + i / rate
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            await db.write(insert, b"u")
            lat.append(time.perf_counter() - due)

        await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
        await db.close()
        return lat

    out.send(asyncio.run(run()))


async def main_async(args: argparse.Namespace, path: Path) -> None:
    db = await Database.open(path)
    await db.write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS bench (x BLOB)"))
    n, lat = await daemon_load(db, args.writers, args.seconds)
    print(f"daemon alone       {n / args.seconds:7.0f} writes/s   p50 {statistics.median(lat) * 1000:.1f} ms   "
          f"p99 {pct(lat, 0.99) * 1000:.1f} ms   ({db.commits} commits so far)")
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.Process(target=secondary, args=(path, args.rate, args.seconds, child), daemon=True)
    proc.start()
    commits = db.commits
    n, lat = await daemon_load(db, args.writers, args.seconds)
    side = await asyncio.to_thread(parent.recv)
    proc.join(30)
    print(f"daemon beside      {n / args.seconds:7.0f} writes/s   p50 {statistics.median(lat) * 1000:.1f} ms   "
          f"p99 {pct(lat, 0.99) * 1000:.1f} ms   ({db.commits - commits} commits)")
    print(f"secondary          {len(side)} writes at {args.rate:.0f}/s   p50 {statistics.median(side) * 1000:.1f} ms   "
          f"p99 {pct(side, 0.99) * 1000:.1f} ms   max {max(side) * 1000:.1f} ms  (due -> committed)")
    await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, default=40, help="the daemon's concurrent writers")
    parser.add_argument("--rate", type=float, default=200.0, help="the secondary's writes per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main_async(args, Path(tmp) / "gateway.db"))


if __name__ == "__main__":
    main()
