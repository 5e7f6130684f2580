#!/usr/bin/env python3
"""Delivery of received mail to the tenant's application: webhook throughput of `received` events
(each POST carrying the inbound JSON built at send time, with attachment URLs), and the memory a
25 MB attachment download costs the daemon.

    .venv/bin/python scripts/bench_inbox.py [--messages 500] [--body-kb 50] [--attachment-mb 25]

An in-process daemon (tests/support/daemon.py) with a tenant, a use case and one endpoint narrowed
to it; N processed rows written as the processor does (50 KB text body, two attachments), then the
time the sender takes to drain them to the endpoint (an aiohttp receiver in a thread). Then one attachment of
--attachment-mb is fetched through its URL, read in 64 KiB chunks and discarded, while the process's
RSS is sampled: the growth above the RSS before the GET is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from tests.support.daemon import running_daemon  # noqa: E402
from tests.support.dns import DnsServer, dns_overrides  # noqa: E402
from tests.support.processed import Part, processed_message  # noqa: E402
from tests.support.tenancy import sending_setup  # noqa: E402
from tests.support.webhooks import WebhookReceiver  # noqa: E402


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns, WebhookReceiver() as rx:
        overrides = {**dns_overrides(dns), "webhooks": {"poll_interval": 1.0}, "log": {"level": "warning"}}
        async with running_daemon(Path(tmp), overrides) as d:
            setup = await sending_setup(d, dns)
            tenant_id = (await d.store.tenants.get("acme"))["id"]
            state = d.daemon.paths.state_dir
            body = ("Hello, my order is late. " * 40 + "\n") * max(1, args.body_kb)   # ~1 KB a line
            parts = [Part("invoice.pdf", "application/pdf", b"%PDF" + b"x" * 20000), Part("photo.jpg", "image/jpeg", b"\xff\xd8" + b"y" * 30000)]
            await d.call("webhook.add", tenant="acme", url=rx.url("/app"), events=["received"], name="app", usecase=setup["usecase"])
            # The sender is stopped while the rows are written (50 at a time, as a processor with
            # concurrency would; the writer group-commits them), so what is timed is the drain: the
            # payloads built from the stored rows, signed, POSTed and acknowledged.
            # (A long poll interval: a lane drains its outbox without waiting for polls, and Python
            # 3.11's wait_for can swallow a cancel that lands as its timeout fires, which made
            # stop() hang with 20 ms polls.)
            sender = next(c for c in d.daemon.components if c.name == "webhooks")
            await asyncio.wait_for(sender.stop(0), 10)
            written = time.perf_counter()
            for start in range(0, args.messages, 50):
                await asyncio.gather(*(processed_message(d.store, state, tenant_id=tenant_id, usecase_id=setup["usecase_id"],
                                                         summary={"text": body, "stripped_text": body[:2000]}, attachments=parts)
                                       for _ in range(min(50, args.messages - start))))
            wrote = time.perf_counter() - written
            started = time.perf_counter()
            await sender.start()

            # Counted from the event-id header: parsing every body on every POST would cost the
            # receiver's thread (and the GIL) more than the sender spends.
            def delivered(posts) -> int:
                return sum(len(p["headers"]["X-Gateway-Event-Id"].split(",")) for p in posts if p["status"] == 200)
            await asyncio.to_thread(rx.wait, lambda posts: delivered(posts) >= args.messages, 120)
            took = time.perf_counter() - started
            events = rx.events("/app")
            assert len({e["id"] for e in events}) == args.messages and all(e["inbound"] for e in events)
            size = sum(len(p["body"]) for p in rx.of("/app"))
            print(f"received events delivered: {len(events)} in {took:.2f} s = {len(events) / took:.0f} events/s, "
                  f"{len(rx.of('/app'))} POSTs, {size / 1e6:.1f} MB of JSON ({len(events)} rows written before in {wrote:.2f} s)")
            big = b"z" * (args.attachment_mb * 1024 * 1024)
            made = await processed_message(d.store, state, tenant_id=tenant_id, usecase_id=setup["usecase_id"],
                                           attachments=[Part("big.bin", "application/octet-stream", big)])
            del big
            await asyncio.to_thread(rx.wait, lambda posts: any(e["subject"] == made["inbound_id"] for e in rx.events("/app")), 60)
            url = next(e for e in rx.events("/app") if e["subject"] == made["inbound_id"])["inbound"]["attachments"][0]["url"]
            url = f"http://{d.address('web')}/{url.split('/', 3)[3]}"
            before = peak = rss()
            got = 0
            started = time.perf_counter()
            async with aiohttp.ClientSession() as http, http.get(url) as resp:
                async for chunk in resp.content.iter_chunked(65536):
                    got += len(chunk)
                    peak = max(peak, rss())
            took = time.perf_counter() - started
            print(f"attachment download: {got / 1e6:.1f} MB in {took:.2f} s; RSS {before / 1e6:.0f} MB before, "
                  f"peak +{(peak - before) / 1e6:.1f} MB during the GET")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--attachment-mb", type=int, default=25)
    parser.add_argument("--body-kb", type=int, default=50, help="size of each message's text body")
    asyncio.run(main(parser.parse_args()))
