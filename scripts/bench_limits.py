#!/usr/bin/env python3
"""A rate limit shared by several processes: how much it admits, and the writes it costs.

    .venv/bin/python scripts/bench_limits.py [--processes 3] [--rate 600] [--seconds 20]

Opens a store in a temporary directory (the daemon's, primary) and starts --processes worker
processes on it as secondaries, as `daemon.workers` does. Each asks the same use case's bucket
(--rate messages a minute) for a token every millisecond or so for --seconds. Prints what each got,
the total against the bound the limiter promises (rate x time + depth + one chunk per process,
gateway/submission/ratelimit.py) and against what one process alone may take (rate x time + depth),
and the store writes the tokens cost.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import Store  # noqa: E402
from gateway.submission.ratelimit import RateLimiter, chunk_size  # noqa: E402


async def worker(path: str, rate: int, seconds: float) -> None:
    store = await Store.open(Path(path), secondary=True)
    try:
        rates = RateLimiter(shared=store.limits, scope="usecase")
        print("ready", flush=True)
        sys.stdin.readline()
        got, asked, end = 0, 0, time.monotonic() + seconds
        while time.monotonic() < end:
            got += await rates.allow(1, rate)
            asked += 1
            await asyncio.sleep(0.001)
        await rates.close()
        print(got, asked, store.db.writes, flush=True)
    finally:
        await store.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.db"
        store = await Store.open(path)   # the daemon's: migrates, then the workers open it beside it
        try:
            procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(path), "--rate", str(args.rate),
                                       "--seconds", str(args.seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                     for _ in range(args.processes)]
            for p in procs:
                assert p.stdout.readline() == "ready\n"
            began = time.monotonic()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [tuple(int(x) for x in p.stdout.readline().split()) for p in procs]
            elapsed = time.monotonic() - began
            for p in procs:
                p.stdin.close()
                p.stdout.close()
                p.wait()
        finally:
            await store.close()
    per_second, depth = args.rate / 60.0, float(args.rate)
    chunk = chunk_size(per_second, depth)
    total = sum(r[0] for r in results)
    alone = per_second * elapsed + depth
    bound = alone + chunk * args.processes
    print(f"processes {args.processes}  rate {args.rate}/min  {elapsed:.1f} s  chunk {chunk}")
    for i, (got, asked, writes) in enumerate(results):
        print(f"  process {i}: {got} of {asked} asked, {writes} store writes")
    print(f"admitted    {total}  (one process alone may take {alone:.0f}; the bound with {args.processes} processes {bound:.0f}; "
          f"unshared, each would take {alone:.0f}: {alone * args.processes:.0f})")
    print(f"writes      {sum(r[2] for r in results)} for {total} tokens")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--rate", type=int, default=600, help="messages a minute")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--worker", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker, args.rate, args.seconds))
    else:
        asyncio.run(main(args))
