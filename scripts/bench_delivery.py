#!/usr/bin/env python3
"""Delivery benchmark: queue N 4 KB messages, let the daemon's scheduler sign and deliver them to a
local sink (a minimal SMTP server in a separate process, with PIPELINING off like a plain MX), and
report sustained msg/s, the signing cost, RSS with 100,000 messages queued, and the cost of claiming
due work with 1,000 vs 1,000,000 queued rows.

    .venv/bin/python scripts/bench_delivery.py [--messages 20000] [--queued 100000] [--rows 1000000]

Postfix's smtp-sink is a faster sink if installed (apt-get install postfix): --sink-port PORT uses
an already running sink instead of starting ours (`smtp-sink -c 127.0.0.1:2525 1000 &`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SINK = r'''
import asyncio, sys
class S(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf, self.data = t, b"", False
        t.write(b"220 sink ESMTP\r\n")
    def data_received(self, d):
        self.buf += d
        while True:
            if self.data:
                i = self.buf.find(b"\r\n.\r\n")
                if i < 0:
                    return
                self.buf, self.data = self.buf[i + 5:], False
                self.t.write(b"250 2.0.0 ok\r\n")
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line, self.buf = self.buf[:i].upper(), self.buf[i + 2:]
            if line.startswith(b"EHLO"):
                self.t.write(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif line.startswith(b"DATA"):
                self.data = True
                self.t.write(b"354 go\r\n")
            elif line.startswith(b"QUIT"):
                self.t.write(b"221 bye\r\n"); self.t.close(); return
            else:
                self.t.write(b"250 ok\r\n")
async def main():
    srv = await asyncio.get_running_loop().create_server(S, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
'''


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def body(sender: str, rcpt: str, i: int) -> bytes:
    head = (f"From: Shop <{sender}>\r\nTo: {rcpt}\r\nSubject: Order {i} shipped\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            f"Message-ID: <bench.{i}@acme.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + line * ((4096 - len(head)) // len(line))


async def enqueue(d, setup, tenant_id: int, n: int, rcpt_domain: str) -> None:
    from gateway.store.queue import NewMessage, QueueIds

    ids = QueueIds()
    batch = 500
    for start in range(0, n, batch):
        puts = []
        for i in range(start, min(n, start + batch)):
            qid = ids.new()
            rcpt = f"user{i}@{rcpt_domain}"
            puts.append(d.store.queue.put(NewMessage(queue_id=qid, tenant_id=tenant_id, usecase_id=setup["usecase_id"],
                                                     mail_from=setup["sender"], message_id=f"{qid}@acme.test",
                                                     body=body(setup["sender"], rcpt, i), recipients=[rcpt])))
        await asyncio.gather(*puts)
        d.daemon.scheduler.wake()


async def e2e(args, tmp: Path) -> None:
    from tests.support.daemon import merge, running_daemon
    from tests.support.dns import DnsServer, dns_overrides
    from tests.support.tenancy import sending_setup

    sink_proc = None
    port = args.sink_port
    if not port:
        sink_proc = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
        port = int(sink_proc.stdout.readline())
    try:
        with DnsServer() as dns:
            dns.set("dest.test", "MX", "10 mx.dest.test.")
            dns.set("mx.dest.test", "A", "127.0.0.1")
            overrides = merge(dns_overrides(dns), {"log": {"level": "warning"}, "delivery": {
                "remote_port": port, "workers": args.workers, "per_destination": args.per_destination,
                "poll_interval": 0.5, "messages_per_connection": 1000}})
            async with running_daemon(tmp / "e2e", overrides) as d:
                setup = await sending_setup(d, dns)
                tenant_id = (await d.store.tenants.get(setup["tenant"]))["id"]
                print(f"e2e: {args.messages} messages of 4 KB, 1 recipient each, RSA-2048 DKIM, "
                      f"workers={args.workers} per_destination={args.per_destination}, sink on 127.0.0.1:{port}")
                started = time.perf_counter()
                producer = asyncio.create_task(enqueue(d, setup, tenant_id, args.messages, "dest.test"))
                last, last_t = 0, started
                tick = 0
                while True:
                    await asyncio.sleep(0.25)
                    tick += 1
                    counts = await d.store.queue.counts()
                    now = time.perf_counter()
                    done = counts["delivered"] + counts["bounced"]
                    finished = done >= args.messages and producer.done()
                    if tick % 8 and not finished:
                        continue
                    print(f"  t={now - started:5.1f}s delivered={counts['delivered']} deferred={counts['deferred']} "
                          f"bounced={counts['bounced']} pending={counts['pending']}  {(done - last) / (now - last_t):7.0f} msg/s")
                    last, last_t = done, now
                    if finished:
                        break
                elapsed = time.perf_counter() - started
                print(f"e2e: {args.messages / elapsed:.0f} msg/s queue->signed->delivered over {elapsed:.1f}s "
                      f"(enqueue and delivery running together; target >= 800)")
                print(f"e2e: RSS {rss_mb():.0f} MB after the run")
                await d.daemon.scheduler.stop(0)  # no delivery: measure memory with mail sitting in the queue
                await enqueue(d, setup, tenant_id, args.queued, "dest.test")
                counts = await d.store.queue.counts()
                print(f"queued: {counts['pending']} recipients pending; daemon RSS {rss_mb():.0f} MB (target <= 200 MB)")
    finally:
        if sink_proc is not None:
            sink_proc.terminate()
            sink_proc.wait()


async def claim_cost(args, tmp: Path) -> None:
    """Claim 100 due recipients from a queue of N rows, N = 1,000 and args.rows."""
    from gateway.store import Store

    for rows in (1000, args.rows):
        path = tmp / f"claim-{rows}.db"
        store = await Store.open(path)
        await store.close()
        # Bulk-fill a scratch database (benchmark fixture: far faster than queue.put for a million rows).
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("INSERT INTO tenants (id, name, created_at) VALUES (1, 't', 0)")
        conn.execute("INSERT INTO domains (id, tenant_id, name, verification_token, created_at) VALUES (1, 1, 'd.test', 'x', 0)")
        conn.execute("INSERT INTO usecases (id, tenant_id, domain_id, name, kind, created_at) VALUES (1, 1, 1, 'u', 'transactional', 0)")
        now = time.time()
        chunk = 50000
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            conn.executemany("INSERT INTO messages (id, queue_id, tenant_id, usecase_id, mail_from, message_id, size, body, created_at, expires_at)"
                             " VALUES (?, ?, 1, 1, 'a@d.test', ?, 1, x'00', 0, ?)",
                             [(start + i + 1, f"q{start + i}", f"m{start + i}", now + 1e6) for i in range(n)])
            # 90% delivered (history), 10% deferred in the future, and exactly 100 due now whatever the
            # size, so both sizes claim the same amount of work
            conn.executemany("INSERT INTO recipients (message_id, tenant_id, usecase_id, rcpt, domain, state, next_attempt_at, updated_at)"
                             " VALUES (?, 1, 1, 'r@x.test', 'x.test', ?, ?, 0)",
                             [(start + i + 1, "delivered" if (start + i) % 10 and (start + i) % (rows // 100) else "deferred",
                               now - 10 if (start + i) % (rows // 100) == 0 else now + 3600) for i in range(n)])
        conn.commit()
        conn.close()
        store = await Store.open(path)
        plan = await store.delivery.due_plan()
        times = []
        for _ in range(20):
            t = time.perf_counter()
            claimed = await store.delivery.claim("bench", 100)
            times.append(time.perf_counter() - t)
            await store.delivery.release("bench")
        await store.close()
        times.sort()
        print(f"claim: {rows:>9,} rows queued -> {len(claimed)} due claimed, median {times[len(times) // 2] * 1000:.2f} ms "
              f"(incl. one group commit)  plan: {' | '.join(plan)}")
        print(f"claim: {rows:>9,} rows queued -> the claim's SQL alone (no commit), median {claim_sql_ms(path):.3f} ms")


def claim_sql_ms(path: Path, runs: int = 200) -> float:
    """The claim transaction's statements without the commit's fsync (rolled back), which otherwise
    hides a change of the query's cost in the noise of a shared disk."""
    from gateway.store.delivery import _claim

    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    times = []
    for _ in range(runs):
        conn.execute("BEGIN IMMEDIATE")
        t = time.perf_counter()
        _claim(conn, "bench", time.time(), 100)
        times.append(time.perf_counter() - t)
        conn.execute("ROLLBACK")
    conn.close()
    times.sort()
    return times[len(times) // 2] * 1000


def signing_cost() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_dkim.py"), "--seconds", "2"], capture_output=True, text=True)
    print("signing: " + out.stdout.strip().replace("\n", "\nsigning: "))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--queued", type=int, default=100000)
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--per-destination", type=int, default=32)
    ap.add_argument("--sink-port", type=int, default=0)
    ap.add_argument("--skip", choices=["e2e", "claim", "sign"], action="append", default=[])
    args = ap.parse_args()
    from gateway.config import LogConfig
    from gateway import logs

    logs.configure(LogConfig(level="warning", format="console"))
    with tempfile.TemporaryDirectory() as tmp:
        if "sign" not in args.skip:
            signing_cost()
        if "claim" not in args.skip:
            asyncio.run(claim_cost(args, Path(tmp)))
        if "e2e" not in args.skip:
            try:
                import uvloop
                runner = uvloop.run
            except ImportError:
                runner = asyncio.run
            runner(e2e(args, Path(tmp)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
