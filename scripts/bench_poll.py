#!/usr/bin/env python3
"""Polling benchmark: N messages waiting in a local Dovecot mailbox, then the poller (the daemon's
component, with a real store) fetching them over IMAP: spooled durably, then given their post-store
action. Reports messages per second from the first connection to the last action on the server.

    .venv/bin/python scripts/bench_poll.py [--messages 2000] [--size 4096] [--after seen|delete|move:Done]
                                           [--tls implicit|none] [--protocol imap|pop3] [--batch 200]

Dovecot (tests/support/dovecot.py, installed by scripts/setup --test) runs in a temp dir on loopback
ports; the messages are written into its maildir first (not timed). The timer starts when the poller
starts and stops when every message is in the spool and the mailbox shows the action done (all
\\Seen, or the folder empty).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import PollerConfig  # noqa: E402
from gateway.inbound.poller import Poller  # noqa: E402
from gateway.store import Store  # noqa: E402
from tests.support.dovecot import Dovecot  # noqa: E402


def message(n: int, size: int) -> bytes:
    head = (f"From: Customer {n} <customer{n}@example.org>\r\nTo: help@acme.test\r\nSubject: question {n}\r\n"
            f"Message-ID: <bench{n}@example.org>\r\nDate: Tue, 1 Dec 2026 12:00:00 +0000\r\n\r\n").encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def run(args: argparse.Namespace, dc: Dovecot, tmp: Path) -> None:
    store = await Store.open(tmp / "gateway.db")
    try:
        await store.tenants.add("acme")
        port = {("imap", "implicit"): dc.imaps_port, ("imap", "none"): dc.imap_port,
                ("pop3", "implicit"): dc.pop3s_port, ("pop3", "none"): dc.pop3_port}[(args.protocol, args.tls)]
        incoming = {"protocol": args.protocol, "host": "127.0.0.1", "port": port, "tls": args.tls, "verify_tls": True,
                    "username": "alice", "after": args.after, "enabled": True, "usecase": "support"}
        if args.protocol == "imap":
            incoming["folder"] = "INBOX"
        await store.connectors.add("acme", "inbox", args.protocol, direction="in", settings={"incoming": incoming},
                                   incoming_secret=dc.users["alice"])
        config = PollerConfig(ca_file=str(dc.cert_path), batch=args.batch, interval=0.2, rescan_interval=60)
        poller = Poller(store, config, allow_loopback=True)   # Dovecot runs on loopback here
        load = os.getloadavg()[0]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu_started = usage.ru_utime + usage.ru_stime
        started = time.perf_counter()
        await poller.start()
        cid = (await store.connectors.get("acme", "inbox"))["id"]
        while True:
            cp = await store.mailboxes.checkpoint(cid)
            if cp and cp["fetched"] >= args.messages:
                break
            if cp and cp["last_error"]:
                raise SystemExit(f"poller failed: {cp['last_error']}")
            await asyncio.sleep(0.01)
        spooled_at = time.perf_counter()
        # The post-store action is part of the work: wait until the server shows it.
        while True:
            if args.after == "seen" and args.protocol == "imap":
                done = all("\\Seen" in flags for flags, _ in (await asyncio.to_thread(dc.messages, "alice")).values())
            elif args.after == "seen":
                done = True
            else:
                done = not await asyncio.to_thread(dc.messages, "alice")
            if done:
                break
            await asyncio.sleep(0.02)
        finished = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = usage.ru_utime + usage.ru_stime - cpu_started
        await poller.stop(asyncio.get_running_loop().time() + 5)
        rows = len(await store.inbound.spooled(limit=args.messages * 2))
        assert rows == args.messages, f"{rows} rows spooled, expected {args.messages}"
        total = finished - started
        print(f"{args.protocol} ({args.tls}), {args.messages} messages of {args.size} B, after {args.after}, batch {args.batch}:"
              f" spooled in {spooled_at - started:.2f} s, done on the server in {total:.2f} s"
              f" = {args.messages / total:,.0f} msg/s ({args.messages * args.size / total / 1e6:.1f} MB/s)")
        print(f"poller CPU {cpu / args.messages * 1e6:.0f} us per message (this process, all threads; Dovecot's not counted);"
              f" load average {load:.1f} on {os.cpu_count()} cores")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    parser.add_argument("--after", default="seen", help="seen, delete or move:FOLDER")
    parser.add_argument("--tls", choices=["implicit", "none"], default="implicit")
    parser.add_argument("--protocol", choices=["imap", "pop3"], default="imap")
    parser.add_argument("--batch", type=int, default=200, help="poller.batch")
    args = parser.parse_args()
    with Dovecot(users={"alice": "alice-pw"}) as dc, tempfile.TemporaryDirectory() as tmp:
        if args.after.startswith("move:"):
            dc.create("alice", args.after[5:])
        dc.deliver("alice", [message(i, args.size) for i in range(args.messages)])
        asyncio.run(run(args, dc, Path(tmp)))


if __name__ == "__main__":
    main()
