#!/usr/bin/env python3
"""Processing-stage benchmark: spooled 50 KB messages with two attachments each, through the real
processor (route, classify, MIME parse, attachment files, thread lookup, finish with its
message_ids record, received event and webhook outbox row). Prints msg/s, p50/p99 per message and
the process's RSS (peak and after).

    .venv/bin/python scripts/bench_processing.py [--messages 2000] [--concurrency 16] [--size 50000] [--inline]
    .venv/bin/python scripts/bench_processing.py --big 25     # one message with a 25 MB attachment: peak RSS

Half the messages are replies to outbound messages (In-Reply-To only, References stripped), so
the thread lookup finds a parent. The rows are spooled first (as the MX would, already
authenticated at DATA: Spooled.auth_results, so no DNS runs), then the processor is started and
timed until the spool is empty. ``--inline`` runs the per-message CPU work on the event loop
instead of the worker threads, to compare; a probe on the loop reports how late its 1 ms timer
fires while messages are processed (what a listener on the same loop would wait). Target: 500 msg/s.

``--seasoned`` makes the fan-out directories the run's files go to before the timer starts, as in a
store past its first hundred thousand or so attachments (65,536 leaves, all there by then); without
it the store is new and most files make a directory (a mkdir and an fsync more, ~1-2 ms of kernel
time each on this machine).

``--big N`` spools one message with an N MB attachment, then processes it in a fresh process and
prints its peak RSS (VmHWM) above the RSS it had idle, store open and processor started (target:
under three times the message's size).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import logs  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.inbound.attachments import AttachmentFiles  # noqa: E402
from gateway.inbound.mime import MimeLimits, parse as parse_mime  # noqa: E402
from gateway.inbound.pins import Pins  # noqa: E402
from gateway.inbound.processor import Processor  # noqa: E402
from gateway.inbound.reply import stripped_reply  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.store import Store  # noqa: E402
from gateway.store.inbound import Spooled  # noqa: E402
from gateway.store.queue import NewMessage, QueueIds  # noqa: E402
from tests.support.inbound import channel_address, receiving_domain  # noqa: E402

AUTH = "mx.gateway.test; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org; dmarc=pass header.from=example.org"


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants() -> list[int]:
    """Live child processes of this one, and theirs (the parser pool's fork server and processes)."""
    out, todo = [], [os.getpid()]
    while todo:
        try:
            kids = [int(c) for task in Path(f"/proc/{todo.pop()}/task").iterdir() for c in (task / "children").read_text().split()]
        except OSError:
            continue   # ended meanwhile
        out += kids
        todo += kids
    return out


def children_cpu() -> tuple[float, float]:
    """User and system CPU seconds of the live descendants (counted while they run: they are not reaped yet)."""
    user = system = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in descendants():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        user, system = user + int(fields[11]) / tick, system + int(fields[12]) / tick
    return user, system


def cpu_seconds() -> tuple[float, float]:
    """This process's CPU and its live descendants' (the parser pool)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kids = children_cpu()
    return usage.ru_utime + kids[0], usage.ru_stime + kids[1]


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's live threads, summed by Python thread name without its
    number (processor_0..3 -> processor; the main thread is the event loop's)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for t in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue   # ended meanwhile
        name = "loop" if t is threading.main_thread() else t.name.rstrip("0123456789").rstrip("_-") or t.name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


async def loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """How late a 1 ms sleep wakes while the processor works (listeners share this loop)."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - started - 0.001)


def message(n: int, size: int, parent: str | None) -> bytes:
    # Two attachments of about a third each (distinct bytes per message: no file is shared), the rest text.
    third = size // 3
    att = lambda tag: base64.encodebytes(os.urandom(third * 3 // 4)).decode().replace("\n", "\r\n")  # noqa: E731
    text = ("Hello, about my order.\r\n" * (size // 3 // 24)) + "\r\nOn Mon, Acme wrote:\r\n> shipped\r\n"
    head = (f"From: Customer {n} <c{n}@example.org>\r\nTo: help@acme.test\r\nSubject: Order {n}\r\n"
            f"Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <in{n}@example.org>\r\n"
            + (f"In-Reply-To: <{parent}>\r\n" if parent else "") + "MIME-Version: 1.0\r\n")
    return (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}"
            '--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="invoice.pdf"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{att('a')}"
            '--b\r\nContent-Type: image/jpeg\r\nContent-Disposition: attachment; filename="photo.jpg"\r\n'
            f"Content-Transfer-Encoding: base64\r\n\r\n{att('b')}--b--\r\n").encode()


async def run(args: argparse.Namespace) -> None:
    ids = QueueIds()
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "gateway.db")
        tenant_id = (await store.tenants.add("acme"))["id"]
        dom = await receiving_domain(store, tenant_id, "acme.test", usecase="support")
        await channel_address(store, dom, "help@acme.test")
        await store.webhooks.add("acme", "app", "https://app.example/hook", "s" * 32, None)   # the outbox fills per event
        for n in range(0, args.messages, 2):
            await store.queue.put(NewMessage(queue_id=ids.new(), tenant_id=tenant_id, usecase_id=dom.usecase_id,
                                             mail_from="help@acme.test", message_id=f"out{n}@acme.test", body=b"x",
                                             recipients=[f"c{n}@example.org"]))
        batch: list[Spooled] = []
        sizes = 0
        for n in range(args.messages):
            raw = message(n, args.size, f"out{n}@acme.test" if n % 2 == 0 else None)
            sizes += len(raw)
            if args.seasoned:
                for part in parse_mime(raw).attachments:   # the fan-out directory its file will land in
                    sha = hashlib.sha256(part.data()).hexdigest()
                    os.makedirs(Path(tmp) / "attachments" / sha[:2] / sha[2:4], mode=0o700, exist_ok=True)
            batch.append(Spooled(inbound_id=ids.new(), source="mx", raw=raw, tenant_id=tenant_id, recipients=["help@acme.test"],
                                 mail_from=f"c{n}@example.org", client="127.0.0.1", auth_results=AUTH))
            if len(batch) == 100:
                await store.inbound.spool(batch)
                batch = []
        if batch:
            await store.inbound.spool(batch)
        config = parse_config({"processor": {"concurrency": args.concurrency, "poll_interval": 60.0, "processes": args.processes,
                                             "process_max_bytes": 0 if args.threads else 4 * 1024 * 1024}})
        # Logged as the daemon logs under systemd (JSON, a line per message), to a file nobody reads:
        # the rendering costs what it costs in production, the terminal is not the bottleneck.
        log_file = open(os.devnull, "w")
        logs.configure(config.log, stream=log_file)
        processor = Processor(store, config, Metrics(), files=AttachmentFiles(Path(tmp) / "attachments"), pins=Pins(),
                              parse=parse_mime, stripped_reply=stripped_reply, limits=lambda p: MimeLimits(),
                              inline=args.inline)
        await processor.warm()   # the parser processes' start (an interpreter's imports) is not what is measured
        rss_before = rss_mb()
        stop, lags = asyncio.Event(), []
        probe = asyncio.create_task(loop_lag(stop, lags))
        started, cpu_started, threads_started, kids_started = time.perf_counter(), cpu_seconds(), thread_cpu(), children_cpu()
        await processor.start()
        await processor.drain()
        rounds = processor._syncs.rounds
        by_thread = {name: cpu - threads_started.get(name, 0.0) for name, cpu in thread_cpu().items()}   # before stop: the pools' threads are still there
        parsers = processor.status()["processor"]["parser_processes"]
        by_thread["parser processes"] = sum(children_cpu()) - sum(kids_started)
        elapsed, (user, system) = time.perf_counter() - started, (b - a for a, b in zip(cpu_started, cpu_seconds()))
        cpu = user + system
        stop.set()
        await probe
        await processor.stop(asyncio.get_running_loop().time() + 5)
        rss_after = rss_mb()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        hist = processor.metrics.inbound_processing_seconds
        kinds = await store.db.read(lambda c: dict(c.execute("SELECT kind, count(*) FROM inbound_messages GROUP BY kind").fetchall()))
        outbox = await store.db.read(lambda c: c.execute("SELECT count(*) FROM webhook_outbox").fetchone()[0])
        files = sum(1 for p in (Path(tmp) / "attachments").rglob("*") if p.is_file())
        await store.close()
        log_file.close()
    p50, p99 = quantiles(hist)
    print(f"messages     {args.messages} of {sizes / args.messages / 1024:.0f} KB avg, 2 attachments each; "
          f"concurrency {args.concurrency}, {'inline on the loop' if args.inline else f'{parsers} parser processes and worker threads'}, "
          f"{'seasoned store (fan-out directories there)' if args.seasoned else 'new store'}")
    print(f"processed    {kinds}  webhook outbox rows {outbox}  attachment files {files}")
    print(f"throughput   {args.messages / elapsed:.0f} msg/s ({elapsed:.2f} s); {rounds} fsync rounds for the attachment files "
          f"({args.messages / max(rounds, 1):.1f} messages each)")
    print(f"CPU          {cpu * 1000 / args.messages:.2f} ms per message ({user * 1000 / args.messages:.2f} user + "
          f"{system * 1000 / args.messages:.2f} sys, all threads: "
          f"{cpu / elapsed * 100:.0f}% of one core; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print("CPU by thread " + ", ".join(f"{name} {cpu * 1000 / args.messages:.2f}" for name, cpu in
                                      sorted(by_thread.items(), key=lambda kv: -kv[1]) if cpu) + " ms per message")
    print(f"per message  p50 <= {p50 * 1000:.1f} ms, p99 <= {p99 * 1000:.1f} ms (histogram bucket bounds)")
    print(f"RSS          {rss_before:.0f} MB before processing, {rss_after:.0f} MB after, peak {peak:.0f} MB")
    lags.sort()
    print(f"loop lag     p50 {lags[len(lags) // 2] * 1000:.1f} ms, p99 {lags[int(len(lags) * 0.99)] * 1000:.1f} ms, "
          f"max {lags[-1] * 1000:.1f} ms (a 1 ms timer on the processor's loop)")


async def spool_big(directory: Path, mb: int) -> int:
    store = await Store.open(directory / "gateway.db")
    tenant_id = (await store.tenants.add("acme"))["id"]
    dom = await receiving_domain(store, tenant_id, "acme.test", usecase="support")
    await channel_address(store, dom, "help@acme.test")
    payload = base64.encodebytes(os.urandom(mb * 1024 * 1024)).replace(b"\n", b"\r\n")
    raw = (b"From: c@example.org\r\nTo: help@acme.test\r\nSubject: big\r\nMessage-ID: <big@example.org>\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n'
           b'--b\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename="big.zip"\r\n'
           b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"--b--\r\n")
    await store.inbound.spool([Spooled(inbound_id=QueueIds().new(), source="mx", raw=raw, tenant_id=tenant_id,
                                       recipients=["help@acme.test"], auth_results=os.environ.get("BENCH_AUTH", AUTH))])
    await store.close()
    return len(raw)


async def process_big(directory: Path) -> None:
    store = await Store.open(directory / "gateway.db")
    processor = Processor(store, parse_config({"processor": {"poll_interval": 60.0}}), Metrics(),
                          files=AttachmentFiles(directory / "attachments"), pins=Pins(), parse=parse_mime,
                          stripped_reply=stripped_reply, limits=lambda p: MimeLimits())
    await store.inbound.spooled()     # the readers' connections open before the idle figure
    idle = rss_mb()
    await processor.start()
    await processor.drain()
    await processor.stop(asyncio.get_running_loop().time() + 5)
    kinds = await store.db.read(lambda c: c.execute("SELECT state, kind FROM inbound_messages").fetchall())
    await store.close()
    print(f"{idle:.1f} {rss_mb('VmHWM'):.1f} {[tuple(k) for k in kinds]}")


def big(mb: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        size = asyncio.run(spool_big(Path(tmp), mb))
        out = subprocess.run([sys.executable, __file__, "--process-big", tmp], capture_output=True, text=True, check=True)
        idle, peak, rows = out.stdout.strip().splitlines()[-1].split(" ", 2)
        above = float(peak) - float(idle)
        print(f"message      {size / 1024 / 1024:.1f} MB (a {mb} MB attachment, base64), processed: {rows}")
        print(f"RSS          idle {float(idle):.0f} MB, peak {float(peak):.0f} MB: {above:.0f} MB above idle = "
              f"{above / (size / 1024 / 1024):.2f}x the message (target < 3x)")


def quantiles(hist) -> tuple[float, float]:
    """Upper bucket bounds holding the 50th and 99th percentile (from the Prometheus histogram)."""
    samples = [s for s in hist.collect()[0].samples if s.name.endswith("_bucket")]
    total = samples[-1].value or 1
    out = []
    for q in (0.5, 0.99):
        out.append(next(float(s.labels["le"]) for s in samples if s.value >= q * total))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--seasoned", action="store_true", help="the fan-out directories exist (a store in use for a while)")
    parser.add_argument("--processes", type=int, default=0, help="processor.processes (0: one per CPU)")
    parser.add_argument("--threads", action="store_true", help="no parser processes: the MIME work in the worker threads (as before the pool)")
    parser.add_argument("--inline", action="store_true", help="CPU work on the event loop instead of worker threads")
    parser.add_argument("--big", type=int, default=0, help="one message with an attachment of this many MB: peak RSS")
    parser.add_argument("--process-big", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.process_big:
        asyncio.run(process_big(Path(args.process_big)))
    elif args.big:
        big(args.big)
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
