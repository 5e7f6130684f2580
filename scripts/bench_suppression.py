#!/usr/bin/env python3
"""The suppression check's cost with a large list: fill N rows fast, then time lookups.

    scripts/bench_suppression.py [--rows 1000000] [--lookups 20000] [--db PATH]

Fills one tenant's list with N manual entries (executemany, 50,000 rows a write; with ``--db`` an
existing file already filled is reused, which saves the minute a million rows take), then times the
check the RCPT hook makes (``store.suppressions.live``: one probe of the (tenant_id, address) index
on the event loop's own read connection, all four scopes of a marketing send) for addresses on the
list and addresses not on it (random ones, spread over the index like the listed ones: misses that
all sort together would find their pages cached), and the bare SQL probe.
Then the whole RCPT hook (``SuppressionService.at_rcpt``) on a listed address: the probe, the
'suppressed' event and the 550 it raises. Prints microseconds per recipient (mean, p50, p99 of the
wall clock, and p99 of the thread's CPU time: on a shared machine the wall-clock tail is mostly other
processes' turns); the target is under 100 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.errors import NotFound, SMTPError  # noqa: E402
from gateway.services.suppressions import SuppressionService  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.store.suppressions import live  # noqa: E402

SCOPES = [("tenant", 0), ("domain", 1), ("usecase", 1), ("marketing", 0)]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def report(label: str, times: list[float], cpu: list[float]) -> None:
    print(f"{label}: wall mean {statistics.mean(times) * 1e6:6.1f}, p50 {pct(times, 0.5) * 1e6:6.1f}, "
          f"p99 {pct(times, 0.99) * 1e6:7.1f}; CPU mean {statistics.mean(cpu) * 1e6:6.1f}, p50 {pct(cpu, 0.5) * 1e6:6.1f}, "
          f"p99 {pct(cpu, 0.99) * 1e6:6.1f} µs per recipient")


async def _filled(store: Store, rows: int) -> int:
    """The bench tenant's id, its list filled with ``rows`` entries (done once per database file)."""
    try:
        tenant = (await store.tenants.get("bench"))["id"]
    except NotFound:
        tenant = (await store.tenants.add("bench"))["id"]
    have = await store.db.read(lambda conn: conn.execute("SELECT count(*) FROM suppressions WHERE tenant_id = ?", (tenant,)).fetchone()[0])
    if have < rows:
        started = time.perf_counter()
        await store.suppressions.fill(tenant, rows)
        fill = time.perf_counter() - started
        print(f"filled {rows:,} rows in {fill:.1f} s ({rows / fill:,.0f} rows/s)")
    return tenant


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--db", help="a database file to fill once and reuse (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(args.db or Path(tmp) / "gateway.db"))
        try:
            tenant = await _filled(store, args.rows)
            rng = random.Random(7)
            hits = [f"bench-{rng.randrange(args.rows)}@fill.example" for _ in range(args.lookups // 2)]
            misses = [f"bench-{rng.randrange(args.rows)}-not@fill.example" for _ in range(args.lookups // 2)]
            for label, addresses in (("on the list", hits), ("not on it", misses)):
                times, cpu = [], []
                for a in addresses:
                    c, t = time.thread_time(), time.perf_counter()
                    found = await store.suppressions.live(tenant, a, SCOPES)
                    times.append(time.perf_counter() - t)
                    cpu.append(time.thread_time() - c)
                    assert (found is not None) == (label == "on the list")
                report(f"RCPT probe, {label:11}", times, cpu)
            service = SuppressionService(store)
            ctx = {"tenant_id": tenant, "usecase_id": 1, "domain_id": 1, "kind": "marketing", "name": "bench"}
            times, cpu = [], []
            for a in hits[: len(hits) // 2]:
                c, t = time.thread_time(), time.perf_counter()
                try:
                    await service.at_rcpt(ctx, a)
                except SMTPError:
                    pass
                else:
                    raise AssertionError(f"{a} was not refused")
                times.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
            report("RCPT hook, refused     ", times, cpu)

            def bare(conn):
                now = time.time()
                t0 = time.perf_counter()
                for a in hits + misses:
                    live(conn, tenant, a, SCOPES, now)
                return (time.perf_counter() - t0) / len(hits + misses)

            print(f"bare SQL probe         : {await store.db.read(bare) * 1e6:6.1f} µs per recipient")
        finally:
            await store.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
