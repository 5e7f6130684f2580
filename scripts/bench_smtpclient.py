#!/usr/bin/env python3
"""Our pipelined delivery client (gateway/delivery/smtpclient.py) against aiosmtplib, over a slow link.

    .venv/bin/python scripts/bench_smtpclient.py [--messages 20] [--recipients 5] [--delay 0.05] [--size 4096]

A local sink stands for a remote MX 50 ms away: it answers every command, but each reply leaves
--delay seconds after its command arrived (the round trip a netem delay on loopback would add;
replies to pipelined commands arriving together leave together, as they would over a real link).
It advertises PIPELINING, 8BITMIME and SIZE, and throws the messages away.

Each client sends --messages messages of --size bytes with --recipients recipients each, one after
the other over ONE connection (connect and EHLO not timed). Prints msg/s and the latency per
message (from the MAIL FROM to the final reply) for both clients, and the ratio. Round trips per
message: ours 2 with PIPELINING (MAIL+RCPTs+DATA, then the body), aiosmtplib 3 + recipients.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402

from gateway.delivery.smtpclient import SmtpClient, Transaction  # noqa: E402


class DelayingSink(asyncio.Protocol):
    """A minimal SMTP server whose every reply is sent ``delay`` seconds after its command arrived."""

    def __init__(self, delay: float):
        self.delay = delay
        self.buffer = b""
        self.in_data = False
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(b"220 sink.test ESMTP\r\n")   # the greeting is not timed: sent at once

    def _later(self, arrived: float, reply: bytes) -> None:
        self.loop.call_at(arrived + self.delay, self._send, reply)

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    def data_received(self, data: bytes) -> None:
        arrived = self.loop.time()
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer = self.buffer[end + 5:]
                self.in_data = False
                self._later(arrived, b"250 2.0.0 Ok: queued\r\n")
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                return
            self.buffer = rest
            verb = line[:4].upper()
            if verb == b"EHLO":
                self._later(arrived, b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n")
            elif verb == b"DATA":
                self.in_data = True
                # "\r\n.\r\n" is searched from the start of the data: a leading CRLF stands for the DATA line's.
                self.buffer = b"\r\n" + self.buffer
                self._later(arrived, b"354 go ahead\r\n")
            elif verb == b"QUIT":
                self._later(arrived, b"221 bye\r\n")
                self.loop.call_at(arrived + self.delay, self.transport.close)
            else:  # HELO, MAIL, RCPT, RSET, NOOP
                self._later(arrived, b"250 2.0.0 Ok\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def make_message(size: int) -> bytes:
    head = b"From: bench@sender.test\r\nTo: rcpt@dest.test\r\nSubject: client benchmark\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def run_ours(port: int, n: int, rcpts: list[str], message: bytes) -> list[float]:
    client = SmtpClient(local_hostname="bench.client", timeout=30)
    await client.connect("127.0.0.1", port, timeout=30)
    await client.ehlo()
    assert client.supports("pipelining")
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        tx = await client.send_mail(Transaction(), "bench@sender.test", rcpts, message)
        latencies.append(time.perf_counter() - t0)
        assert tx.final is not None and tx.final.ok and len(tx.accepted) == len(rcpts), tx
    await client.quit()
    return latencies


async def run_aiosmtplib(port: int, n: int, rcpts: list[str], message: bytes) -> list[float]:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False, use_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        errors, reply = await smtp.sendmail("bench@sender.test", rcpts, message)
        latencies.append(time.perf_counter() - t0)
        assert not errors and reply.startswith("2.0.0"), (errors, reply)
    await smtp.quit()
    return latencies


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DelayingSink(args.delay), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rcpts = [f"rcpt{i}@dest.test" for i in range(args.recipients)]
    message = make_message(args.size)
    print(f"{args.messages} messages x {len(message)} B x {args.recipients} recipients, one connection each, "
          f"{args.delay * 1000:.0f} ms added to every reply, loop {type(loop).__module__.split('.')[0]}")
    results = {}
    for name, run in (("gateway smtpclient (pipelining)", run_ours), (f"aiosmtplib {aiosmtplib.__version__}", run_aiosmtplib)):
        began = time.perf_counter()
        lat = await run(port, args.messages, rcpts, message)
        elapsed = time.perf_counter() - began
        results[name] = args.messages / elapsed
        print(f"{name:34s} {args.messages / elapsed:7.2f} msg/s   latency p50 {statistics.median(lat) * 1000:6.1f} ms  "
              f"p99 {pct(lat, 0.99) * 1000:6.1f} ms  max {max(lat) * 1000:6.1f} ms")
    server.close()
    await server.wait_closed()
    ours, theirs = results.values()
    print(f"gain: {ours / theirs:.2f}x the messages per second of aiosmtplib on one connection")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--recipients", type=int, default=5)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added to every reply")
    parser.add_argument("--asyncio", action="store_true", help="asyncio's own loop instead of uvloop")
    ns = parser.parse_args()
    if ns.asyncio:
        asyncio.run(main(ns))
    else:
        import uvloop

        uvloop.run(main(ns))
