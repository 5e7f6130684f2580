#!/usr/bin/env python3
"""Submission acceptance: durable msg/s and latency from the final dot to the 250.

    .venv/bin/python scripts/bench_submission.py [--sessions 20] [--messages 500] [--size 4096]

Starts `gateway run` as users do (a subprocess, uvloop), sets up a tenant with a domain verified
against a local DNS server, a use case and a credential over the admin socket, takes a global pause
(so delivery, when wired, does not compete: mail is committed and held, the same durable work),
then opens --sessions concurrent sessions, each STARTTLS + AUTH PLAIN, sending --messages messages
of --size bytes on one connection. A lean raw client (uvloop) measures each message from writing
the final ".\\r\\n" to reading the 250. Prints msg/s, p50/p99/max latency, the daemon's RSS and
the load average before the run. Targets: >= 1000 msg/s, p99 <= 50 ms on 2 cores.

With --connection-per-message each message gets its own connection: connect, TLS, EHLO, AUTH PLAIN,
one message, QUIT (apps that open a connection per mail, the cost of AUTH included). The latency is
then from opening the connection to the 250; no targets are checked in that mode.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.admin.client import AdminClient  # noqa: E402
from tests.support.dns import DnsServer, dns_overrides  # noqa: E402

GATEWAY = str(Path(sys.executable).parent / "gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def write_config(path: Path, dns: DnsServer, port: int, tls_port: int, extra: str) -> None:
    lines = [
        "[log]", 'level = "warning"', 'format = "json"',
        "[web]", 'listen = "127.0.0.1:0"',
        "[inbound]", 'listen = "127.0.0.1:0"',   # not measured; a free port, so another daemon's 2525 does not stop it
        "[submission]", f'listen = "127.0.0.1:{port}"', f'listen_tls = "127.0.0.1:{tls_port}"',
    ]
    for section, values in dns_overrides(dns).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n" + extra)


def start_daemon(work: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """`gateway run` on work/config.toml (state in work/state); returns once its admin socket answers."""
    environ = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "STATE_DIRECTORY", "GATEWAY_CONFIG"}}
    environ.update(env or {})
    proc = subprocess.Popen([GATEWAY, "run", "--config", str(work / "config.toml"), "--state-dir", str(work / "state")],
                            env=environ, stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "wb"))
    sock = work / "state" / "admin.sock"
    deadline = time.time() + 30
    while True:
        try:
            call(sock, "ping")
            return proc, sock
        except Exception:  # noqa: BLE001 - not up yet
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise SystemExit("bench: the daemon did not start:\n" + (work / "daemon.log").read_text()[-2000:])
            time.sleep(0.1)


def call(sock: Path, method: str, **params):
    with AdminClient(sock, timeout=60) as client:
        return client.call(method, **params)


def setup(sock: Path, dns: DnsServer, *, rate_limit: int = 0, quota: int = 0) -> dict:
    """A tenant (``quota`` messages a month, 0 unlimited) with a verified domain and a use case
    (``rate_limit`` messages a minute, 0 unlimited) and its credential."""
    call(sock, "tenant.add", name="bench", monthly_quota=quota)
    added = call(sock, "domain.add", tenant="bench", domain="bench.test")
    records = call(sock, "domain.records", domain=added["name"])
    for record in records["records"]:
        if record["type"] == "TXT" and record["purpose"] in ("spf", "return_path_spf", "dmarc", "verification"):
            dns.remove(record["name"], "TXT")
    dns.load_zone(records["zone"], origin=records["domain"])
    verified = call(sock, "domain.verify", domain=added["name"])
    assert verified["state"] == "verified", verified
    call(sock, "usecase.add", tenant="bench", domain=added["name"], name="load", entity="bench", kind="transactional",
         senders=["app@bench.test"], rate_limit=rate_limit)
    return call(sock, "usecase.credentials.add", tenant="bench", usecase="load")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def reply(self) -> bytes:
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                return line

    async def cmd(self, line: bytes, expect: bytes) -> None:
        self.writer.write(line + b"\r\n")
        reply = await self.reply()
        if not reply.startswith(expect):
            raise RuntimeError(f"{line[:40]!r} -> {reply!r}")


async def logged_in(port: int, username: str, password: str, implicit: bool) -> tuple[Client, asyncio.StreamWriter]:
    """A new connection: TLS (implicit or STARTTLS), EHLO, AUTH PLAIN."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx if implicit else None)
    c = Client(reader, writer)
    await c.reply()
    await c.cmd(b"EHLO bench.client", b"250")
    if not implicit:
        await c.cmd(b"STARTTLS", b"220")
        await writer.start_tls(ctx)
        await c.cmd(b"EHLO bench.client", b"250")
    await c.cmd(b"AUTH PLAIN " + base64.b64encode(f"\0{username}\0{password}".encode()), b"235")
    return c, writer


async def session(port: int, username: str, password: str, count: int, payload: bytes, latencies: list[float],
                  start: asyncio.Event, ready: asyncio.Semaphore, implicit: bool) -> None:
    c, writer = await logged_in(port, username, password, implicit)
    ready.release()
    await start.wait()
    for i in range(count):
        await c.cmd(b"MAIL FROM:<app@bench.test>", b"250")
        await c.cmd(b"RCPT TO:<rcpt%d@example.org>" % i, b"250")
        await c.cmd(b"DATA", b"354")
        writer.write(payload)
        t0 = time.perf_counter()
        writer.write(b".\r\n")
        reply = await c.reply()
        latencies.append(time.perf_counter() - t0)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"DATA -> {reply!r}")
    await c.cmd(b"QUIT", b"221")
    writer.close()


async def one_per_connection(port: int, username: str, password: str, count: int, payload: bytes, latencies: list[float],
                             start: asyncio.Event, ready: asyncio.Semaphore, implicit: bool) -> None:
    """``count`` messages, each on a new connection with its own TLS handshake and AUTH."""
    ready.release()
    await start.wait()
    for i in range(count):
        t0 = time.perf_counter()
        c, writer = await logged_in(port, username, password, implicit)
        await c.cmd(b"MAIL FROM:<app@bench.test>", b"250")
        await c.cmd(b"RCPT TO:<rcpt%d@example.org>" % i, b"250")
        await c.cmd(b"DATA", b"354")
        writer.write(payload)
        await c.cmd(b".", b"250")
        latencies.append(time.perf_counter() - t0)
        await c.cmd(b"QUIT", b"221")
        writer.close()


def make_payload(size: int) -> bytes:
    head = (b"From: Bench <app@bench.test>\r\nTo: rcpt@example.org\r\nSubject: benchmark message\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


async def run_clients(port: int, cred: dict, sessions: int, messages: int, size: int,
                      implicit: bool = False, per_message: bool = False) -> tuple[float, list[float]]:
    payload = make_payload(size)
    latencies: list[float] = []
    start = asyncio.Event()
    ready = asyncio.Semaphore(0)
    run = one_per_connection if per_message else session

    async def one() -> None:
        await run(port, cred["username"], cred["password"], messages, payload, latencies, start, ready, implicit)

    tasks = [asyncio.create_task(one()) for _ in range(sessions)]
    for _ in range(sessions):  # every session connected and authenticated before the clock starts
        await ready.acquire()
    began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - began, latencies


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads, and of its running children (the
    daemon's worker processes, daemon.workers and web.process)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = {c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}
    return own + sum(_cpu_seconds(int(c)) for c in children if Path(f"/proc/{c}").exists())


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--messages", type=int, default=500, help="messages per session")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--warmup", type=int, default=20, help="messages per session before measuring")
    parser.add_argument("--implicit", action="store_true", help="use the implicit-TLS port instead of STARTTLS")
    parser.add_argument("--connection-per-message", action="store_true",
                        help="a new connection (TLS, EHLO, AUTH PLAIN) for every message")
    parser.add_argument("--workers", help="daemon.workers (default: the config's default)")
    parser.add_argument("--web-process", choices=("true", "false"), help="web.process (default: the config's default)")
    parser.add_argument("--profile", metavar="SVG", help="record the daemon with py-spy: a flame graph (.svg) or collapsed stacks (.txt)")
    parser.add_argument("--rate-limit", type=int, default=0, metavar="N",
                        help="the use case's rate limit, messages a minute (default 0: none; a high one measures what checking it costs)")
    parser.add_argument("--quota", type=int, default=0, metavar="N", help="the tenant's monthly quota (default 0: none)")
    args = parser.parse_args()

    import uvloop

    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        work = Path(tmp)
        port, tls_port = free_port(), free_port()
        # The API on a free port too (not measured): another daemon on this machine may hold 8026.
        write_config(work / "config.toml", dns, port, tls_port, '[api]\nlisten = "127.0.0.1:0"\n')
        if args.web_process:
            text = (work / "config.toml").read_text().replace("[web]\n", f"[web]\nprocess = {args.web_process}\n", 1)
            (work / "config.toml").write_text(text)
        if args.workers:
            with (work / "config.toml").open("a") as f:
                f.write(f"[daemon]\nworkers = {args.workers!r}\n".replace("'", '"'))
        client_port = tls_port if args.implicit else port
        proc, sock = start_daemon(work)
        spy = None
        try:
            cred = setup(sock, dns, rate_limit=args.rate_limit, quota=args.quota)
            call(sock, "pause")  # measure acceptance alone: mail is committed and held, not delivered
            if args.warmup:
                uvloop.run(run_clients(client_port, cred, args.sessions, args.warmup, args.size, args.implicit,
                                       args.connection_per_message))
            load = os.getloadavg()
            rss_before = rss_mb(proc.pid)
            cpu_before = _cpu_seconds(proc.pid)
            if args.profile:
                fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o", args.profile, *fmt,
                                        "--pid", str(proc.pid), "--rate", "200", "--nonblocking", "--threads"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            elapsed, lat = uvloop.run(run_clients(client_port, cred, args.sessions, args.messages, args.size, args.implicit,
                                                  args.connection_per_message))
            cpu_used = _cpu_seconds(proc.pid) - cpu_before
            rss_after = rss_mb(proc.pid)
            queued = call(sock, "queue.counts")
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=60)
            proc.terminate()
            proc.wait(timeout=60)
        total = len(lat)
        mode = "implicit TLS" if args.implicit else "STARTTLS"
        per = "a connection per message" if args.connection_per_message else "one connection each"
        print(f"sessions {args.sessions}  messages {total} x {args.size} B  ({mode} + AUTH PLAIN, {per})")
        print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  cores: {os.cpu_count()}")
        print(f"throughput  {total / elapsed:8.0f} msg/s   ({elapsed:.2f} s)")
        print(f"latency     p50 {statistics.median(lat) * 1000:.1f} ms   p99 {pct(lat, 0.99) * 1000:.1f} ms   "
              f"max {max(lat) * 1000:.1f} ms  ({'connect' if args.connection_per_message else 'final dot'} -> 250)")
        print(f"daemon CPU  {cpu_used / total * 1000:.3f} ms per message ({cpu_used:.2f} s user + system, all threads)")
        print(f"daemon RSS  {rss_before:.0f} MB before, {rss_after:.0f} MB after")
        print(f"queue       {queued}")
        if not args.connection_per_message:
            ok = total / elapsed >= 1000 and pct(lat, 0.99) <= 0.050
            print("targets     " + ("met" if ok else "NOT met") + " (>= 1000 msg/s, p99 <= 50 ms)")


if __name__ == "__main__":
    main()
