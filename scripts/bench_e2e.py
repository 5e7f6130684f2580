#!/usr/bin/env python3
"""End to end: submit over STARTTLS + AUTH, queue durably, DKIM-sign, deliver to a sink; sustained.

    .venv/bin/python scripts/bench_e2e.py [--duration 60] [--sessions 20] [--size 4096] [--sink auto] [--postgres]

--postgres puts the store on a PostgreSQL started for the run (tests/support/postgres.py: initdb in a
temp dir, fsync on) through store.url, and adds the server's CPU (postmaster and its backends) to the
figures: "daemon + PostgreSQL CPU per message" is what the SQLite figure compares with.

Starts `gateway run` as users do (a subprocess, own temp state dir), a small authoritative DNS
server in this process (tests/support/dns.py: the tenant's records and the MX of dest.test ->
127.0.0.1) and a sink in a SEPARATE process that the daemon delivers to (delivery.remote_port):

    --sink smtp-sink   Postfix's smtp-sink (C; advertises PIPELINING). Install it with
                       `apt-get install -y postfix` (provides /usr/sbin/smtp-sink).
    --sink aiosmtpd    an aiosmtpd server in a child Python process (much slower than smtp-sink:
                       it can be the bottleneck on 2 cores)
    --sink auto        smtp-sink when installed, else aiosmtpd (the default)

Sets up a tenant, a verified domain, a use case and a credential over the admin socket, then drives
--sessions concurrent client sessions (a lean uvloop client: STARTTLS + AUTH PLAIN, --size byte
messages, many per connection, reconnecting every --per-connection messages) for --duration seconds
and samples the sink's count every second. Prints:

    submitted msg/s          messages that got their 250 within the window / window
    delivered msg/s          messages counted at the sink within the window / window (and per 5 s)
    final dot -> 250         p50 / p99
    250 -> delivered         p50 / p99: the client's 250 time to the daemon's `delivered` event
                             (events table, read after the run); queue ids come from the 250 lines
    backlog                  submitted - delivered at the end of the window, the queue counts, and
                             how long the rest took to drain after submission stopped
    daemon RSS at the end, and the load average before and after.

"Sustained" means delivery keeps up: the delivered rate over the window is close to the submitted
rate and the backlog stays bounded (printed every 5 s). Target: >= 800 msg/s end to end for 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_submission import Client, call, free_port, make_payload, pct, rss_mb, setup, toml_value  # noqa: E402
from tests.support.dns import DnsServer, dns_overrides  # noqa: E402

GATEWAY = str(Path(sys.executable).parent / "gateway")
SMTP_SINK = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink" if Path("/usr/sbin/smtp-sink").exists() else None)
RCPT_DOMAIN = "dest.test"

# The fallback sink: aiosmtpd in its own process; prints its message count once a second.
AIOSMTPD_SINK = r'''
import asyncio, sys, time
from aiosmtpd.smtp import SMTP
count = 0
class H:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += len(envelope.rcpt_tos)
        return "250 2.0.0 Ok"
async def main():
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: SMTP(H(), hostname="sink.test", enable_SMTPUTF8=True), "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    while True:
        await asyncio.sleep(0.5)
        print(f"mesg={count}", flush=True)
try:
    import uvloop; uvloop.run(main())
except ImportError:
    asyncio.run(main())
'''


class SinkProcess:
    """A sink in a child process; ``count`` follows the messages it has accepted."""

    def __init__(self, kind: str, port: int):
        self.kind, self.port, self.count = kind, port, 0
        if kind == "smtp-sink":
            # -c: running counters on stdout ("sess=N quit=N mesg=N\r" after each "."); backlog 1024.
            cmd = [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{port}", "1024"] if os.geteuid() == 0 else \
                  [SMTP_SINK, "-c", f"127.0.0.1:{port}", "1024"]
        else:
            cmd = [sys.executable, "-c", AIOSMTPD_SINK, str(port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.time() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"bench: the {kind} sink did not start: {self.proc.stderr.read().decode()[-500:]}")
                time.sleep(0.05)

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = self.proc.stdout.read(65536)
            if not chunk:
                return
            buf += chunk
            *records, buf = buf.replace(b"\n", b"\r").split(b"\r")
            for rec in reversed(records):
                for part in rec.split():
                    if part.startswith(b"mesg="):
                        self.count = int(part[5:])
                        break
                else:
                    continue
                break

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_config(path: Path, dns: DnsServer, port: int, tls_port: int, sink_port: int, args) -> None:
    overrides = dns_overrides(dns)
    overrides["log"] = {"level": args.log_level, "format": "json"}
    overrides["web"] = {"listen": "127.0.0.1:0"}
    overrides["inbound"] = {"listen": "127.0.0.1:0"}   # not measured; a free port (another daemon may hold 2525)
    overrides["submission"] = {"listen": f"127.0.0.1:{port}", "listen_tls": f"127.0.0.1:{tls_port}"}
    # The sink is on 127.0.0.1: the loop guard must let loopback through.
    overrides["delivery"] = {"remote_port": sink_port, "poll_interval": 1.0, "allow_loopback": True}
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        try:
            parsed: object = int(value)
        except ValueError:
            try:
                parsed = float(value)
            except ValueError:
                parsed = value
        overrides.setdefault(section, {})[name] = parsed
    lines = []
    for section, values in overrides.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []     # final dot -> 250, inside the window
        self.accepted: dict[str, float] = {}  # queue id -> wall time of its 250, inside the window
        self.submitted = 0                     # 250s inside the window
        self.total = 0                         # every 250 (warm-up and window)
        self.errors: list[str] = []


async def connect(port: int, username: str, password: str) -> tuple[Client, asyncio.StreamWriter]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    c = Client(reader, writer)
    await c.reply()
    await c.cmd(b"EHLO bench.client", b"250")
    await c.cmd(b"STARTTLS", b"220")
    await writer.start_tls(ctx)
    await c.cmd(b"EHLO bench.client", b"250")
    await c.cmd(b"AUTH PLAIN " + base64.b64encode(f"\0{username}\0{password}".encode()), b"235")
    return c, writer


async def session(n: int, port: int, cred: dict, payload: bytes, per_connection: int, stats: Stats,
                  window: dict, stop_at: list[float]) -> None:
    c = writer = None
    sent_here = 0
    i = 0
    try:
        while time.perf_counter() < stop_at[0]:
            if c is None or (per_connection and sent_here >= per_connection):
                if c is not None:
                    await c.cmd(b"QUIT", b"221")
                    writer.close()
                c, writer = await connect(port, cred["username"], cred["password"])
                sent_here = 0
            i += 1
            await c.cmd(b"MAIL FROM:<app@bench.test>", b"250")
            await c.cmd(b"RCPT TO:<s%d.m%d@%s>" % (n, i, RCPT_DOMAIN.encode()), b"250")
            await c.cmd(b"DATA", b"354")
            writer.write(payload)
            t0 = time.perf_counter()
            writer.write(b".\r\n")
            reply = await c.reply()
            t1 = time.perf_counter()
            if not reply.startswith(b"250"):
                stats.errors.append(reply.decode(errors="replace").strip())
                continue
            sent_here += 1
            stats.total += 1
            if window["start"] <= t0 and t1 <= window["end"]:
                stats.latencies.append(t1 - t0)
                stats.submitted += 1
                stats.accepted[reply.rsplit(b" ", 1)[-1].strip().decode()] = time.time()
        if c is not None:
            await c.cmd(b"QUIT", b"221")
            writer.close()
    except Exception as exc:  # noqa: BLE001 - reported, the other sessions go on
        stats.errors.append(f"session {n}: {type(exc).__name__}: {exc}")


async def drive(args, port: int, cred: dict, sink: SinkProcess, proc: subprocess.Popen, state: Path) -> dict:
    payload = make_payload(args.size)
    stats = Stats()
    loop_t = time.perf_counter()
    window = {"start": loop_t + args.warmup, "end": loop_t + args.warmup + args.duration}
    stop_at = [window["end"]]
    tasks = [asyncio.create_task(session(n, port, cred, payload, args.per_connection, stats, window, stop_at))
             for n in range(args.sessions)]
    await asyncio.sleep(max(0.0, window["start"] - time.perf_counter()))
    sink_start, sub_start = sink.count, stats.total
    cpu0 = {"daemon": cpu_seconds(proc.pid), "sink": cpu_seconds(sink.proc.pid), "client": time.process_time(),
            "postgres": server_cpu(args.postmaster)}
    samples = []  # (t, submitted total, delivered total)
    print(f"{'t':>5}  {'submitted/s':>11}  {'delivered/s':>11}  {'backlog':>8}  (5 s intervals; backlog = 250'd - at sink, whole run)")
    last = (window["start"], stats.total, sink.count)
    while (now := time.perf_counter()) < window["end"]:
        await asyncio.sleep(min(1.0, max(0.0, window["end"] - now)))
        t, s, d = time.perf_counter(), stats.total, sink.count
        samples.append((t - window["start"], s - sub_start, d - sink_start))
        dt = t - last[0]
        if dt >= 1.0 and (len(samples) % 5 == 0 or t >= window["end"]):
            print(f"{t - window['start']:5.1f}  {(s - last[1]) / dt:11.0f}  {(d - last[2]) / dt:11.0f}  {s - d:8d}")
            last = (t, s, d)
    sink_end = sink.count
    cpu = {"daemon": cpu_seconds(proc.pid) - cpu0["daemon"], "sink": cpu_seconds(sink.proc.pid) - cpu0["sink"],
           "client": time.process_time() - cpu0["client"], "postgres": server_cpu(args.postmaster) - cpu0["postgres"]}
    await asyncio.gather(*tasks)
    submitted_total = stats.total
    backlog_at_end = submitted_total - sink.count
    rss = rss_mb(proc.pid)
    counts = call(state / "admin.sock", "queue.counts")
    # Drain: how long until everything 250'd has reached the sink (bounded).
    drain_started = time.perf_counter()
    while sink.count < submitted_total and time.perf_counter() - drain_started < args.drain:
        await asyncio.sleep(0.1)
    drain = time.perf_counter() - drain_started
    return {"stats": stats, "window": args.duration, "delivered": sink_end - sink_start, "samples": samples,
            "backlog_at_end": backlog_at_end, "rss": rss, "counts": counts, "drain": drain,
            "drained": sink.count >= submitted_total, "sink_total": sink.count, "submitted_total": submitted_total, "cpu": cpu}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (its reaped children too, for smtp-sink)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster (with its reaped backends) and its live children."""
    if postmaster is None:
        return 0.0
    total = cpu_seconds(postmaster)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return total


def delivery_latencies(db: Path, accepted: dict[str, float], url: str | None = None) -> list[float]:
    """250 (client clock) -> the daemon's `delivered` event, for messages accepted in the window."""
    sql = "SELECT subject, MIN(created_at) FROM events WHERE kind = 'delivered' GROUP BY subject"
    if url:
        import psycopg

        with psycopg.connect(url) as pg:
            rows = pg.execute(sql).fetchall()
        return [max(0.0, at - accepted[qid]) for qid, at in rows if qid in accepted]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(sql).fetchall()
    finally:
        conn.close()
    return [max(0.0, at - accepted[qid]) for qid, at in rows if qid in accepted]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of the measured window")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the window starts")
    ap.add_argument("--drain", type=float, default=60.0, help="most seconds to wait for the backlog after the window")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--per-connection", type=int, default=1000, help="messages per connection before reconnecting (0: never)")
    ap.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto")
    ap.add_argument("--log-level", default="info", help="daemon log level (info, the daemon's default, logs a line per message and stage)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="extra daemon config, e.g. delivery.workers=64")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the daemon during the window: .svg flame graph or .txt collapsed stacks")
    ap.add_argument("--postgres", action="store_true", help="the store on a PostgreSQL started for the run (store.url)")
    args = ap.parse_args()
    args.postmaster = None
    pg = None
    if args.postgres:
        from tests.support.postgres import Postgres

        pg = Postgres().start()
        args.url = pg.create_database("bench")
        args.set.append(f"store.url={args.url}")
        args.postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    else:
        args.url = None
    try:
        run(args)
    finally:
        if pg is not None:
            pg.stop()


def run(args) -> None:

    kind = args.sink
    if kind == "auto":
        kind = "smtp-sink" if SMTP_SINK else "aiosmtpd"
        if not SMTP_SINK:
            print("bench: Postfix's smtp-sink not found; using the slower aiosmtpd sink. "
                  "Install it with: apt-get install -y postfix   (provides /usr/sbin/smtp-sink)")
    elif kind == "smtp-sink" and not SMTP_SINK:
        raise SystemExit("bench: smtp-sink not found; install it with: apt-get install -y postfix")

    import uvloop

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gw-e2e-") as tmp, DnsServer() as dns:
        work = Path(tmp)
        sink_port, port, tls_port = free_port(), free_port(), free_port()
        sink = SinkProcess(kind, sink_port)
        dns.set(RCPT_DOMAIN, "MX", f"10 mx.{RCPT_DOMAIN}.")
        dns.set(f"mx.{RCPT_DOMAIN}", "A", "127.0.0.1")
        write_config(work / "config.toml", dns, port, tls_port, sink_port, args)
        env = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "STATE_DIRECTORY", "GATEWAY_CONFIG"}}
        state = work / "state"
        proc = subprocess.Popen([GATEWAY, "run", "--config", str(work / "config.toml"), "--state-dir", str(state)],
                                env=env, stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "wb"))
        spy = None
        try:
            deadline = time.time() + 30
            while True:
                try:
                    call(state / "admin.sock", "ping")
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.time() > deadline or proc.poll() is not None:
                        raise SystemExit("bench: the daemon did not start:\n" + (work / "daemon.log").read_text()[-2000:])
                    time.sleep(0.1)
            cred = setup(state / "admin.sock", dns)
            if args.profile:
                fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o", args.profile, *fmt,
                                        "--pid", str(proc.pid), "--rate", "100", "--nonblocking", "--threads",
                                        "--duration", str(int(args.warmup + args.duration))],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"e2e: {args.sessions} sessions (STARTTLS + AUTH PLAIN), {args.size} B messages, 1 recipient each, "
                  f"RSA-2048 DKIM, sink {kind} on 127.0.0.1:{sink_port}; warm-up {args.warmup:.0f} s, window {args.duration:.0f} s")
            r = uvloop.run(drive(args, port, cred, sink, proc, state))
            lat = delivery_latencies(state / "gateway.db", r["stats"].accepted, args.url)
        finally:
            if spy is not None:
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.send_signal(2)
                    spy.wait(timeout=30)
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            sink.stop()
        errors = r["stats"].errors
        if errors:
            print(f"client errors: {len(errors)}, e.g. {errors[:3]}")
            tail = (work / "daemon.log").read_text(errors="replace")[-1500:]
            if tail:
                print("daemon log tail:\n" + tail)

    s = r["stats"]
    load_after = os.getloadavg()
    sub_rate = s.submitted / r["window"]
    del_rate = r["delivered"] / r["window"]
    half = [x for x in r["samples"] if x[0] >= r["window"] / 2]
    print()
    print(f"load average  before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}   "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}   cores {os.cpu_count()}")
    print(f"submitted     {sub_rate:8.0f} msg/s   ({s.submitted} messages got their 250 in {r['window']:.0f} s)")
    print(f"delivered     {del_rate:8.0f} msg/s   ({r['delivered']} counted at the sink in the same window)")
    if len(half) >= 2:
        (t0, s0, d0), (t1, s1, d1) = half[0], half[-1]
        print(f"second half   {(s1 - s0) / (t1 - t0):8.0f} msg/s submitted, {(d1 - d0) / (t1 - t0):.0f} msg/s delivered")
    if s.latencies:
        print(f"dot -> 250    p50 {statistics.median(s.latencies) * 1000:.1f} ms   p99 {pct(s.latencies, 0.99) * 1000:.1f} ms   "
              f"max {max(s.latencies) * 1000:.1f} ms")
    if lat:
        print(f"250 -> deliv  p50 {statistics.median(lat) * 1000:.1f} ms   p99 {pct(lat, 0.99) * 1000:.1f} ms   "
              f"min {min(lat) * 1000:.1f} ms  max {max(lat) * 1000:.1f} ms   ({len(lat)} of {len(s.accepted)} window messages, from the events table)")
    print(f"backlog       {r['backlog_at_end']} at the end of the window (250'd, not yet at the sink); queue {r['counts']}")
    print(f"drain         {'all' if r['drained'] else 'NOT all'} delivered {r['drain']:.1f} s after submission stopped "
          f"({r['sink_total']} at the sink of {r['submitted_total']} 250'd)")
    print(f"daemon RSS    {r['rss']:.0f} MB at the end of the window")
    cpu = r["cpu"]
    print(f"CPU in window daemon {cpu['daemon'] / r['window']:.2f} cores, client {cpu['client'] / r['window']:.2f}, "
          f"sink {cpu['sink'] / r['window']:.2f}   (of {os.cpu_count()})")
    if args.postgres:
        print(f"PostgreSQL    {cpu['postgres'] / r['window']:.2f} cores in the window")
    if r["delivered"]:
        print(f"daemon CPU    {cpu['daemon'] / r['delivered'] * 1000:.3f} ms per delivered message (window)")
        if args.postgres:
            print(f"+ PostgreSQL  {(cpu['daemon'] + cpu['postgres']) / r['delivered'] * 1000:.3f} ms per delivered message (window)")
    ok = del_rate >= 800 and r["drained"] and r["backlog_at_end"] < del_rate * 5
    print("target        " + ("met" if ok else "NOT met") + " (>= 800 msg/s delivered, sustained: backlog bounded and drained)")


if __name__ == "__main__":
    main()
