"""daemon.workers = 2: the daemon as a subprocess with two pipeline workers (gateway/pipeline.py) on one
store and one set of listening sockets. Mail is accepted by both, delivered exactly once; a worker
SIGKILLed under load is restarted and loses nothing; the daemon SIGKILLed takes its workers with it and
a restart delivers everything; SIGHUP and wakes reach the workers; SIGTERM drains them; status and
/metrics show them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter

import aiohttp
import aiosmtplib

from gateway.submission import client_tls_context
from tests.support.daemon import merge
from tests.support.delivery import FAST_RETRIES, publish_mx
from tests.support.process import AdminHandle, GatewayProcess
from tests.support.sink import mail_sink
from tests.support.submission import message
from tests.support.tenancy import dns_overrides, sending_setup

QUEUE_ID = re.compile(rb"\bid ([0-9a-hjkmnp-tv-z]{16})\b")
SESSIONS = 4


def overrides(dns_server, sink_port: int, **extra) -> dict:
    return merge(merge(dns_overrides(dns_server), {"daemon": {"workers": 2}, "delivery": {**FAST_RETRIES, "remote_port": sink_port}}),
                 extra)


async def submit_loop(port: int, setup: dict, accepted: list[tuple[str, str]], stop: asyncio.Event, n: int,
                      count: int | None = None) -> None:
    """Submit one recipient per message until ``stop`` (or ``count`` messages); record each 250's queue id.
    A session cut by a killed worker connects again: only what got no 250 is lost to the client."""
    i = 0
    while not stop.is_set() and (count is None or i < count):
        try:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
            async with smtp:
                await smtp.login(setup["username"], setup["password"])
                while not stop.is_set() and (count is None or i < count):
                    i += 1
                    rcpt = f"rcpt{n}-{i}@dest.test"
                    _, reply = await smtp.sendmail(setup["sender"], [rcpt], message(sender=setup["sender"], to=rcpt, size=2048))
                    accepted.append((reply.rsplit(" ", 1)[1], rcpt))
        except (aiosmtplib.SMTPException, OSError):
            if stop.is_set():
                return


def deliveries(sink) -> Counter:
    return Counter((m.group(1).decode(), rcpt) for r in sink.messages for m in [QUEUE_ID.search(r.data)] if m
                   for rcpt in r.rcpt_tos)


def pipeline_rows(gw: GatewayProcess) -> list[dict]:
    return [w for w in gw.cli_json("status")["workers"] if w["name"].startswith("pipeline-")]


async def test_two_workers_share_the_port_deliver_once_and_report(tmp_path, dns_server):
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        with GatewayProcess(tmp_path, overrides(dns_server, sink.port)) as gw:
            admin = AdminHandle(gw)
            setup = await sending_setup(admin, dns_server)
            port = await admin.listener_port("submission")
            rows = pipeline_rows(gw)
            assert [r["up"] for r in rows] == [True, True]
            pids = {r["pid"] for r in rows}
            assert len(pids) == 2 and gw.proc.pid not in pids

            accepted: list[tuple[str, str]] = []
            stop = asyncio.Event()
            await asyncio.gather(*(submit_loop(port, setup, accepted, stop, n, count=15) for n in range(SESSIONS)))
            wanted = set(accepted)
            await sink.wait_until(lambda s: wanted <= set(deliveries(s)), timeout=60)
            got = deliveries(sink)
            assert set(got) == wanted and max(got.values()) == 1  # every message once, none twice

            # Each worker's own status, and its counters summed in the daemon's /metrics.
            assert all("delivery" in r["status"] and "submission" in r["status"] for r in pipeline_rows(gw))
            web = await admin.listener_port("web")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{web}/metrics") as resp:
                    text = await resp.text()
            for pid in pids:
                assert re.search(rf'gateway_worker_pid{{worker="pipeline-\d"}} {pid}(\.0)?\n', text), text[:2000]
            assert f"gateway_messages_received_total {float(len(accepted))}" in text
            # Off the loop: the workers QUIT their pooled sessions to the sink, which runs on it.
            assert await asyncio.to_thread(gw.stop) == 0
