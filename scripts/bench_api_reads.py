#!/usr/bin/env python3
"""The read figure of issue 10: a message status read (GET /v1/messages/{queue_id}) with N messages stored.

    .venv/bin/python scripts/bench_api_reads.py [--messages 1000000] [--reads 3000]

The daemon runs in this process (tests/support/daemon.running_daemon) with its API listener; the
data is written straight into its store's own tables through its writer, 50,000 messages a
transaction (executemany): a tenant with two use cases, each message with one recipient delivered
after one attempt, a Message-ID record and its two events (queued, delivered), ids and times in
arrival order over the last 30 days, as a month of real traffic leaves them. Nothing is submitted:
1M submissions would time the submission path, not the read.

The client is another process (http.client, one keep-alive connection, one request at a time), so
its own work does not sit on the daemon's event loop: it reads random queue ids of the stored
messages and prints p50/p99/max of the wall clock per request (the target is p99 < 5 ms) and the
daemon's CPU time per request (the whole process, client excluded: on a shared machine the wall
clock's tail is mostly other processes' turns). It then
times the list (GET /v1/messages?limit=100, the newest page and a page deep in the cursor chain)
and an event page of the same key.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 50000


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def line(label: str, times: list[float]) -> str:
    return (f"{label}: n={len(times)} p50 {pct(times, 0.5) * 1e3:.2f} ms, p99 {pct(times, 0.99) * 1e3:.2f} ms, "
            f"max {max(times) * 1e3:.2f} ms, mean {statistics.mean(times) * 1e3:.2f} ms")


# --------------------------------------------------------------------------- the client (its own process)

def client(address: str, token: str, paths: list[str]) -> dict[str, list[float]]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Authorization": f"Bearer {token}"}
    out: dict[str, list[float]] = {}
    for label, path in paths:
        started = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        took = time.perf_counter() - started
        if resp.status != 200:
            raise SystemExit(f"{path}: {resp.status} {body[:300]!r}")
        out.setdefault(label, []).append(took)
    return out


def run_client(address: str, token: str, paths: list[tuple[str, str]]) -> dict[str, list[float]]:
    """The client in a child process: paths in on stdin, timings out on stdout."""
    proc = subprocess.run([sys.executable, __file__, "--client", address, token], input=json.dumps(paths),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- the data

def fill(conn, tenant_id: int, usecases: list[int], start: int, n: int, t0: float, step: float, qids: list[str]) -> None:
    from gateway.store.queue import QueueIds

    ids = QueueIds()
    messages, recipients, attempts, events, message_ids = [], [], [], [], []
    first_msg = (conn.execute("SELECT IFNULL(MAX(id), 0) FROM messages").fetchone()[0]) + 1
    first_rcpt = (conn.execute("SELECT IFNULL(MAX(id), 0) FROM recipients").fetchone()[0]) + 1
    for i in range(n):
        k = start + i
        at = t0 + k * step
        qid = ids.new(at)
        qids.append(qid)
        usecase = usecases[k % len(usecases)]
        msg_id, rcpt_id = first_msg + i, first_rcpt + i
        messages.append((msg_id, qid, tenant_id, usecase, "app@bench.test", f"{qid}@bench.test", 4096, b"x", at, at + 5 * 86400))
        recipients.append((rcpt_id, msg_id, tenant_id, usecase, f"user{k}@dest.test", "dest.test", "delivered", 1, at + 0.2, 250,
                           "2.0.0", "250 2.0.0 OK queued", at + 0.2))
        attempts.append((rcpt_id, at + 0.2, 0.15, "delivered", 250, "2.0.0", "250 2.0.0 OK queued", "mx.dest.test[127.0.0.1]"))
        message_ids.append((f"{qid}@bench.test", tenant_id, usecase, f"{qid}@bench.test", qid, "out", at))
        events.append((at, tenant_id, "queued", qid, '{"from":"app@bench.test","recipients":1,"size":4096,"held":false}', usecase))
        events.append((at + 0.2, tenant_id, "delivered", qid, f'{{"rcpt":"user{k}@dest.test","code":250,"attempts":1}}', usecase))
    conn.executemany("INSERT INTO messages (id, queue_id, tenant_id, usecase_id, mail_from, message_id, size, body, created_at,"
                     " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", messages)
    conn.executemany("INSERT INTO recipients (id, message_id, tenant_id, usecase_id, rcpt, domain, state, attempts, next_attempt_at,"
                     " last_code, last_enhanced, last_reply, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", recipients)
    conn.executemany("INSERT INTO attempts (recipient_id, at, duration, outcome, code, enhanced, reply, remote)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", attempts)
    conn.executemany("INSERT INTO message_ids (message_id, tenant_id, usecase_id, thread_id, queue_id, direction, created_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", message_ids)
    conn.executemany("INSERT INTO events (created_at, tenant_id, kind, subject, data, usecase_id) VALUES (?, ?, ?, ?, ?, ?)", events)


async def main(args: argparse.Namespace) -> None:
    from tests.support.api import api_key
    from tests.support.daemon import running_daemon
    from tests.support.inbound import receiving_domain

    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"log": {"level": "warning"}, "api": {"listen": "127.0.0.1:0"}}
        async with running_daemon(Path(tmp), overrides) as d:
            await d.call("tenant.add", name="bench")
            tenant_id = (await d.store.tenants.get("bench"))["id"]
            domain = await receiving_domain(d.store, tenant_id, "bench.test", usecase="receipts", inbound=False)
            second = await d.store.db.write(lambda c: c.execute(
                "INSERT INTO usecases (tenant_id, domain_id, name, entity, kind, created_at) VALUES (?, ?, 'news', 'Bench', 'marketing', ?)",
                (tenant_id, domain.id, time.time())).lastrowid)
            qids: list[str] = []
            t0 = time.time() - 30 * 86400
            step = 30 * 86400 / args.messages
            started = time.perf_counter()
            for start in range(0, args.messages, BATCH):
                await d.store.db.write(fill, tenant_id, [domain.usecase_id, second], start, min(BATCH, args.messages - start), t0, step, qids)
            took = time.perf_counter() - started
            print(f"stored {args.messages:,} messages (+ recipients, attempts, Message-IDs, 2 events each) in {took:.1f} s")
            owner = await api_key(d, "bench", "owner", rate_limit=1e6)
            sender = await api_key(d, "bench", "sender", usecase="news", rate_limit=1e6)
            address = d.address("api")
            rng = random.Random(7)
            status = [("status", f"/v1/messages/{rng.choice(qids)}") for _ in range(args.reads)]
            await asyncio.to_thread(run_client, address, owner, [("warm", p) for _, p in status[:200]])
            cpu = time.process_time()
            timings = await asyncio.to_thread(run_client, address, owner, status)
            cpu = (time.process_time() - cpu) / len(status)
            print(line("GET /v1/messages/{queue_id} (owner key)", timings["status"])
                  + f"; the daemon's CPU {cpu * 1e3:.2f} ms a request (all its threads)")
            mine = [q for i, q in enumerate(qids) if i % 2 == 1]
            status = [("status", f"/v1/messages/{rng.choice(mine)}") for _ in range(args.reads // 3)]
            timings = await asyncio.to_thread(run_client, address, sender, status)
            print(line("GET /v1/messages/{queue_id} (sender key)", timings["status"]))
            lists = [("list", "/v1/messages?limit=100")] * 200 + [("events", "/v1/events?limit=100")] * 200 \
                + [("since", f"/v1/messages?limit=100&since={t0 + 15 * 86400:.0f}&until={t0 + 16 * 86400:.0f}")] * 200
            timings = await asyncio.to_thread(run_client, address, owner, lists)
            print(line("GET /v1/messages?limit=100 (newest page)", timings["list"]))
            print(line("GET /v1/messages?limit=100&since&until (a day, mid-month)", timings["since"]))
            print(line("GET /v1/events?limit=100 (newest page)", timings["events"]))
            timings = await asyncio.to_thread(run_client, address, sender, [("list", "/v1/messages?limit=100")] * 200)
            print(line("GET /v1/messages?limit=100 (sender key: its use case)", timings["list"]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        print(json.dumps(client(sys.argv[2], sys.argv[3], json.load(sys.stdin))))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--reads", type=int, default=3000)
    asyncio.run(main(ap.parse_args()))
