#!/usr/bin/env python3
"""Webhook fan-out beside submission: msg/s without and with a subscribed endpoint, and the rate
at which the endpoint receives events.

    .venv/bin/python scripts/bench_webhooks.py [--sessions 20] [--messages 300] [--size 4096] [--drain-only]

Runs the submission load of scripts/bench_submission.py (a `gateway run` subprocess, STARTTLS +
AUTH PLAIN, a global pause so mail is committed and held) twice on fresh state: once with no
webhook, once with an endpoint of the tenant subscribed to every event. Each message appends two
events (`queued`, `held`), so 1,000 msg/s is 2,000 events/s into the outbox. The endpoint is a
small aiohttp server in a process of its own on 127.0.0.1 that answers 200 and counts events.
Prints both msg/s, the slowdown, the daemon's CPU per message in each run (from /proc: on a shared
machine the msg/s are noisy, the CPU less so), events delivered per second while the load ran and
the time to drain what was left after it. Target: >= 2,000 events/s delivered, submission slowed <= 10%.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dns import DnsServer  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_submission", ROOT / "scripts" / "bench_submission.py")
bs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bs)

RECEIVER = r"""
import json, sys, time
from aiohttp import web
state = {"events": 0, "posts": 0, "first": None, "last": None, "status": 200}
async def hook(request):
    body = await request.read()
    if state["status"] != 200:
        return web.Response(status=state["status"], text="not now")
    n = len(json.loads(body)["events"])
    now = time.time()
    state["events"] += n; state["posts"] += 1
    state["first"] = state["first"] or now; state["last"] = now
    return web.Response(text="ok")
async def count(request):
    if "status" in request.query:
        state["status"] = int(request.query["status"])
    return web.json_response(state)
app = web.Application()
app.router.add_post("/hook", hook)
app.router.add_get("/count", count)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, handle_signals=True)
"""


def receiver_count(port: int, status: int | None = None) -> dict:
    query = f"?status={status}" if status is not None else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count{query}", timeout=10) as resp:
        return json.loads(resp.read())


def one_run(args, with_webhook: bool, backlog: bool = False) -> dict:
    import uvloop

    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        work = Path(tmp)
        port, tls_port, rx_port = bs.free_port(), bs.free_port(), bs.free_port()
        bs.write_config(work / "config.toml", dns, port, tls_port, "[webhooks]\nallow_loopback = true\npoll_interval = 0.05\nbackoff_base = 0.1\nbackoff_max = 0.2\n")
        rx = subprocess.Popen([sys.executable, "-c", RECEIVER, str(rx_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc, sock = bs.start_daemon(work)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    receiver_count(rx_port)
                    break
                except Exception:  # noqa: BLE001 - the receiver is not up yet
                    if time.time() > deadline or rx.poll() is not None:
                        raise SystemExit("bench: the webhook receiver did not start") from None
                    time.sleep(0.1)
            cred = bs.setup(sock, dns)
            bs.call(sock, "pause")
            if with_webhook:
                bs.call(sock, "webhook.add", tenant="bench", url=f"http://127.0.0.1:{rx_port}/hook", name="bench")
            if args.warmup:
                uvloop.run(bs.run_clients(port, cred, args.sessions, args.warmup, args.size))
            before = receiver_count(rx_port, 503 if backlog else None)["events"]
            began, cpu0 = time.time(), cpu_seconds(proc.pid)
            elapsed, lat = uvloop.run(bs.run_clients(port, cred, args.sessions, args.messages, args.size))
            ended, cpu = time.time(), cpu_seconds(proc.pid) - cpu0
            if backlog:
                # The endpoint was refusing: the outbox holds every event of the load. Now it takes
                # them: what follows is the sender's pace alone, with nothing else running.
                drain_cpu0 = cpu_seconds(proc.pid)
                receiver_count(rx_port, 200)
                ended = time.time()
            during = receiver_count(rx_port)["events"] - before
            expected = before + 2 * len(lat)
            drain_until = time.time() + 120
            while with_webhook and receiver_count(rx_port)["events"] < expected and time.time() < drain_until:
                time.sleep(0.05)
            final = receiver_count(rx_port)
            drained = (final["last"] or ended) - ended
            # The sender's own CPU per event (full batches, nothing else running; the idle polls of
            # the last 50 ms included): what fan-out costs the process that accepts mail.
            drain_cpu = cpu_seconds(proc.pid) - drain_cpu0 if backlog else 0.0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            rx.terminate()
            rx.wait(timeout=10)
        return {"msgs": len(lat), "elapsed": elapsed, "rate": len(lat) / elapsed, "p99": bs.pct(lat, 0.99),
                "events_during": during, "run_seconds": ended - began, "events_total": final["events"] - before,
                "expected": 2 * len(lat), "drain": max(drained, 0.0), "posts": final["posts"], "cpu": cpu,
                "drain_cpu": drain_cpu}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the daemon so far, its threads and live child processes included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def append_cost(n: int = 20000) -> dict[str, float]:
    """Microseconds per append_event in one transaction: the events INSERT alone (as before the
    outbox), with the outbox probe for a tenant without endpoints, and with one subscribed endpoint."""
    from gateway.store.db import connect, migrate
    from gateway.store.events import append_event

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect(Path(tmp) / "gw.db")
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn)
        conn.execute("INSERT INTO tenants (name, created_at) VALUES ('a', 0), ('b', 0)")
        conn.execute("INSERT INTO webhook_endpoints (tenant_id, name, url, secret, created_at, updated_at)"
                     " VALUES (2, 'h', 'http://x/', 's', 0, 0)")

        def plain(c, tenant_id, kind, subject, data):
            c.execute("INSERT INTO events (created_at, tenant_id, kind, subject, data) VALUES (?, ?, ?, ?, ?)",
                      (time.time(), tenant_id, kind, subject, json.dumps(data, separators=(",", ":"))))

        data = {"from": "app@bench.test", "recipients": 1, "size": 4096, "held": True}
        for label, fn, tenant in (("events insert alone", plain, 1), ("with outbox probe, no endpoint", append_event, 1),
                                  ("with one subscribed endpoint", append_event, 2)):
            conn.execute("BEGIN")
            t0 = time.perf_counter()
            for i in range(n):
                fn(conn, tenant, "queued", f"q{i}", data)
            out[label] = (time.perf_counter() - t0) / n * 1e6
            conn.execute("COMMIT")
        conn.close()
    return out


def drain_line(backlog: dict) -> str:
    return (f"backlog drain    {backlog['events_total'] / max(backlog['drain'], 1e-9):8.0f} events/s: {backlog['events_total']} events "
            f"queued while the endpoint answered 503, delivered in {backlog['drain']:.2f} s once it answered 200 "
            f"({backlog['posts']} POSTs; daemon CPU {backlog['drain_cpu'] / max(backlog['events_total'], 1) * 1e6:.0f} us per event)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=300, help="messages per session")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=10, help="messages per session before measuring")
    parser.add_argument("--drain-only", action="store_true",
                        help="only the backlog drain: the sender's events/s and its CPU per event (a quick before/after)")
    args = parser.parse_args()
    load = os.getloadavg()
    if args.drain_only:
        backlog = one_run(args, with_webhook=True, backlog=True)
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  cores: {os.cpu_count()}")
        print(drain_line(backlog))
        return
    for label, us in append_cost().items():
        print(f"append_event     {us:6.1f} us  {label}")
    plain = one_run(args, with_webhook=False)
    hooked = one_run(args, with_webhook=True)
    backlog = one_run(args, with_webhook=True, backlog=True)
    slowdown = 1 - hooked["rate"] / plain["rate"]
    delivered_rate = hooked["events_during"] / hooked["run_seconds"]
    overall = hooked["events_total"] / (hooked["run_seconds"] + hooked["drain"])
    print(f"sessions {args.sessions}  messages {plain['msgs']} x {args.size} B per run; 2 events per message (queued, held)")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  cores: {os.cpu_count()}")
    print(f"without webhook  {plain['rate']:8.0f} msg/s   p99 {plain['p99'] * 1000:.1f} ms")
    print(f"with webhook     {hooked['rate']:8.0f} msg/s   p99 {hooked['p99'] * 1000:.1f} ms   (slowdown {slowdown * 100:+.1f}%)")
    per_msg = [r["cpu"] / r["msgs"] * 1000 for r in (plain, hooked)]
    print(f"daemon CPU       {per_msg[0]:.2f} ms per message without, {per_msg[1]:.2f} ms with the webhook "
          f"({(per_msg[1] - per_msg[0]) / 2 * 1000:+.0f} us per event; over the load phase, the drain after it not counted)")
    print(f"webhook          {delivered_rate:8.0f} events/s delivered while the load ran "
          f"({hooked['events_during']} of {hooked['expected']}); all {hooked['events_total']} in "
          f"{hooked['run_seconds'] + hooked['drain']:.2f} s ({overall:.0f} events/s, {hooked['posts']} POSTs, "
          f"drained {hooked['drain']:.2f} s after the load)")
    print(drain_line(backlog))
    capacity = backlog["events_total"] / max(backlog["drain"], 1e-9)
    ok = slowdown <= 0.10 and capacity >= 2000 and hooked["events_total"] >= hooked["expected"] and hooked["events_total"] >= hooked["expected"]
    print("targets          " + ("met" if ok else "NOT met") + " (>= 2000 events/s delivered, submission slowed <= 10%)")


if __name__ == "__main__":
    main()
