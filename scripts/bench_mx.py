#!/usr/bin/env python3
"""MX acceptance: durable msg/s and latency from the final dot to the 250 on the inbound listener.

    .venv/bin/python scripts/bench_mx.py [--sessions 20] [--messages 500] [--size 4096] [--starttls]

Starts `gateway run` as users do (a subprocess, uvloop), sets up a tenant with a domain verified
against a local DNS server (the submission benchmark's setup), switches inbound on for it and adds a
channel address (written into the store directly: the channel-address CLI is another helper's), then
opens --sessions concurrent sessions, each sending --messages messages of --size bytes on one
connection (EHLO once, then MAIL, RCPT and DATA pipelined as an MTA sends them (RFC 2920; --lockstep
waits for each reply); --starttls adds TLS first). Every 250 means the message is
committed to the spool (synchronous=FULL, group commit). A lean raw client (uvloop) measures each
message from writing the final ".\\r\\n" to reading the 250. Prints msg/s, p50/p99/max latency, the
daemon's RSS and the spooled row count. Target: >= 1,500 msg/s on 2 cores (Postfix 3.7 ~1,040 here).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dns import DnsServer  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_submission", ROOT / "scripts" / "bench_submission.py")
sub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sub)   # its daemon start, admin calls, domain setup, reply reader and figures

ADDRESS = "support@bench.test"


def enable_inbound(db: Path) -> None:
    """inbound on for bench.test and one channel address (what `gateway domain inbound` and
    `gateway address add` will do; written here directly, WAL lets us beside the daemon)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        with conn:
            tenant_id, domain_id = conn.execute("SELECT tenant_id, id FROM domains WHERE name = 'bench.test'").fetchone()
            usecase_id = conn.execute("SELECT id FROM usecases WHERE domain_id = ?", (domain_id,)).fetchone()[0]
            conn.execute("UPDATE domains SET inbound_enabled = 1 WHERE id = ?", (domain_id,))
            now = time.time()
            conn.execute("INSERT INTO channel_addresses (tenant_id, domain_id, usecase_id, address, direction, created_at, updated_at)"
                         " VALUES (?, ?, ?, ?, 'inbound', ?, ?)", (tenant_id, domain_id, usecase_id, ADDRESS, now, now))
    finally:
        conn.close()


def processes(pid: int) -> list[int]:
    """The daemon and its live descendants (daemon.workers' pipeline processes, the web worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for task in Path(f"/proc/{p}/task").iterdir() for c in (task / "children").read_text().split()]
        except OSError:
            continue   # ended meanwhile
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the daemon and its child processes (all their threads) so far."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    user = system = 0.0
    for p in processes(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
        system += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return user, system


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far: the event loop's thread, and the others summed by name; a child
    process's threads under "child" (a pipeline worker's loop is where its MX runs)."""
    out: dict[str, float] = {}
    for p in processes(pid):
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue   # the thread ended meanwhile
            # Python does not name its threads for the OS: the event loop's is the main one, the rest
            # (the store's writer and readers, worker pools) are "gateway" like the process.
            key = "loop" if task.name == str(p) else "other threads" if name == "gateway" else name
            if p != pid:
                key = f"child {key}"
            out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def spooled(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM inbound_messages").fetchone()[0]
    finally:
        conn.close()


def payload(size: int) -> bytes:
    head = (b"From: Customer <customer@example.org>\r\nTo: " + ADDRESS.encode() + b"\r\nSubject: a question\r\n"
            b"Message-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def session(port: int, count: int, data: bytes, latencies: list[float], start: asyncio.Event,
                  ready: asyncio.Semaphore, starttls: bool, lockstep: bool) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    c = sub.Client(reader, writer)
    await c.reply()
    await c.cmd(b"EHLO mta.example.org", b"250")
    if starttls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await c.cmd(b"STARTTLS", b"220")
        await writer.start_tls(ctx)
        await c.cmd(b"EHLO mta.example.org", b"250")
    ready.release()
    await start.wait()
    envelope = b"MAIL FROM:<customer@example.org>\r\nRCPT TO:<" + ADDRESS.encode() + b">\r\nDATA\r\n"
    for _ in range(count):
        if lockstep:
            await c.cmd(b"MAIL FROM:<customer@example.org>", b"250")
            await c.cmd(b"RCPT TO:<" + ADDRESS.encode() + b">", b"250")
            await c.cmd(b"DATA", b"354")
        else:   # RFC 2920, as Postfix's smtp client sends it: MAIL, RCPT and DATA in one go
            writer.write(envelope)
            for expect in (b"250", b"250", b"354"):
                reply = await c.reply()
                if not reply.startswith(expect):
                    raise RuntimeError(f"envelope -> {reply!r}")
        writer.write(data)
        t0 = time.perf_counter()
        writer.write(b".\r\n")
        reply = await c.reply()
        latencies.append(time.perf_counter() - t0)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"DATA -> {reply!r}")
    await c.cmd(b"QUIT", b"221")
    writer.close()


async def run_clients(port: int, sessions: int, messages: int, size: int, starttls: bool,
                      lockstep: bool) -> tuple[float, list[float]]:
    data = payload(size)
    latencies: list[float] = []
    start, ready = asyncio.Event(), asyncio.Semaphore(0)
    tasks = [asyncio.create_task(session(port, messages, data, latencies, start, ready, starttls, lockstep)) for _ in range(sessions)]
    for _ in range(sessions):
        await ready.acquire()
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - began, latencies


def postfix_cpu() -> float:
    """CPU seconds of Postfix so far: its live processes, and the children master has reaped."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if exe.startswith("/usr/lib/postfix/"):
            total += (int(fields[11]) + int(fields[12])) / tick
            if exe.endswith("/master"):
                total += (int(fields[13]) + int(fields[14])) / tick
    return total


def postfix(args: argparse.Namespace) -> None:
    """The same sessions against Postfix (it must be running: ``postfix start``)."""
    import uvloop

    if args.warmup:
        uvloop.run(run_clients(args.postfix, args.sessions, args.warmup, args.size, args.starttls, args.lockstep))
    load = os.getloadavg()
    cpu_before, client_before = postfix_cpu(), time.process_time()
    elapsed, lat = uvloop.run(run_clients(args.postfix, args.sessions, args.messages, args.size, args.starttls, args.lockstep))
    cpu, client_cpu = postfix_cpu() - cpu_before, time.process_time() - client_before
    total = len(lat)
    print(f"postfix on 127.0.0.1:{args.postfix}  sessions {args.sessions}  messages {total} x {args.size} B"
          f"  ({'STARTTLS' if args.starttls else 'plain'}, {'lockstep' if args.lockstep else 'pipelined'})")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  cores: {os.cpu_count()}")
    print(f"throughput  {total / elapsed:8.0f} msg/s   ({elapsed:.2f} s)")
    print(f"latency     p50 {statistics.median(lat) * 1000:.1f} ms   p99 {sub.pct(lat, 0.99) * 1000:.1f} ms   "
          f"max {max(lat) * 1000:.1f} ms  (final dot -> 250)")
    print(f"postfix CPU {cpu / total * 1e6:.0f} us per message (all its processes; includes relaying to the sink)")
    print(f"client CPU  {client_cpu / total * 1e6:.0f} us per message")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="messages per session")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=20, help="messages per session before measuring")
    parser.add_argument("--starttls", action="store_true", help="STARTTLS before the first message of each session")
    parser.add_argument("--lockstep", action="store_true", help="wait for each reply (no PIPELINING of MAIL, RCPT, DATA)")
    parser.add_argument("--process", action="store_true",
                        help="process the spooled mail meanwhile (processor.enabled; off: the MX's acceptance alone)")
    parser.add_argument("--workers", help="daemon.workers (default: the config's, 1): MX listeners in that many processes")
    parser.add_argument("--log-level", default="info", help="the daemon's log.level (info: its default)")
    parser.add_argument("--profile", metavar="SVG", help="record the daemon with py-spy (.svg flame graph, .txt collapsed)")
    parser.add_argument("--profile-args", default="", help="more py-spy arguments, e.g. --profile-args=--gil")
    parser.add_argument("--gateway", help="the gateway executable to run (default: this venv's), e.g. another checkout's, to compare")
    parser.add_argument("--postfix", type=int, metavar="PORT",
                        help="drive a running Postfix smtpd on 127.0.0.1:PORT instead (../shared/bench kit's plain"
                             " listener 2527 queues and relays to its sink): same client, CPU of the Postfix processes")
    args = parser.parse_args()
    if args.postfix:
        postfix(args)
        return
    if args.gateway:
        sub.GATEWAY = args.gateway

    import uvloop

    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        work = Path(tmp)
        port = sub.free_port()
        sub.write_config(work / "config.toml", dns, sub.free_port(), sub.free_port(),
                         f'[processor]\nenabled = {"true" if args.process else "false"}\n')
        config = work / "config.toml"   # the submission benchmark's config logs at warning: use the level asked for
        # Its [inbound] listens on a free port nobody measures: this one is measured.
        text = config.read_text().replace('level = "warning"', f'level = "{args.log_level}"', 1)
        config.write_text(text.replace('[inbound]\nlisten = "127.0.0.1:0"', f'[inbound]\nlisten = "127.0.0.1:{port}"', 1))
        if args.workers:
            with config.open("a") as f:
                f.write(f'[daemon]\nworkers = "{args.workers}"\n')
        proc, sock = sub.start_daemon(work)
        db = work / "state" / "gateway.db"
        spy = None
        try:
            sub.setup(sock, dns)
            enable_inbound(db)
            if args.warmup:
                uvloop.run(run_clients(port, args.sessions, args.warmup, args.size, args.starttls, args.lockstep))
            before = spooled(db)
            load = os.getloadavg()
            rss_before = sub.rss_mb(proc.pid)
            cpu_before, split_before = cpu_seconds(proc.pid), cpu_split(proc.pid)
            threads_before = thread_cpu(proc.pid)
            log_before = (work / "daemon.log").read_bytes().count(b"\n")
            if args.profile:
                fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o", args.profile, *fmt,
                                        "--pid", str(proc.pid), "--rate", "200", "--nonblocking", "--threads", *args.profile_args.split()],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            client_before = time.process_time()
            elapsed, lat = uvloop.run(run_clients(port, args.sessions, args.messages, args.size, args.starttls, args.lockstep))
            client_cpu = time.process_time() - client_before
            rss_after = sub.rss_mb(proc.pid)
            cpu = cpu_seconds(proc.pid) - cpu_before
            user, system = (a - b for a, b in zip(cpu_split(proc.pid), split_before))
            threads = {k: v - threads_before.get(k, 0.0) for k, v in thread_cpu(proc.pid).items()}
            rows = spooled(db) - before
            log_text = (work / "daemon.log").read_bytes()
            log_lines = log_text.count(b"\n") - log_before
            events: dict[str, int] = {}
            for line in log_text.splitlines()[log_before:]:
                name = line.split(b'"event": "', 1)[-1].split(b'"', 1)[0].decode("utf-8", "replace")[:40]
                events[name] = events.get(name, 0) + 1
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=60)
            proc.terminate()
            proc.wait(timeout=60)
        total = len(lat)
        print(f"sessions {args.sessions}  messages {total} x {args.size} B  ({'STARTTLS' if args.starttls else 'plain'}, {'lockstep' if args.lockstep else 'pipelined'}, one connection each)"
              f"  workers {args.workers or 1}, processing {'on' if args.process else 'off'}, log level {args.log_level}")
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  cores: {os.cpu_count()}")
        print(f"throughput  {total / elapsed:8.0f} msg/s   ({elapsed:.2f} s)")
        print(f"latency     p50 {statistics.median(lat) * 1000:.1f} ms   p99 {sub.pct(lat, 0.99) * 1000:.1f} ms   "
              f"max {max(lat) * 1000:.1f} ms  (final dot -> 250)")
        print(f"daemon CPU  {cpu / total * 1e6:.0f} us per message ({user:.2f} s user + {system:.2f} s system, all threads and child processes): "
              f"{total / cpu:.0f} msg/s per fully used core")
        print("  by thread " + ", ".join(f"{k} {v / total * 1e6:.0f}" for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
                                         if v > 0) + " us per message")
        print(f"client CPU  {client_cpu / total * 1e6:.0f} us per message (this process; daemon + client "
              f"{(cpu + client_cpu) / total * 1e6:.0f} us: {2 * total / (cpu + client_cpu):.0f} msg/s on 2 fully used cores)")
        print(f"daemon log  {log_lines / total:.2f} lines per message at {args.log_level}: "
              + ", ".join(f"{k} {v}" for k, v in sorted(events.items(), key=lambda kv: -kv[1])[:4]))
        print(f"daemon RSS  {rss_before:.0f} MB before, {rss_after:.0f} MB after")
        print(f"spooled     {rows} rows during the run (every 250 is a committed row: {'yes' if rows == total else 'NO'})")
        print("target      " + ("met" if total / elapsed >= 1500 else "NOT met") + " (>= 1500 msg/s)")


if __name__ == "__main__":
    main()
