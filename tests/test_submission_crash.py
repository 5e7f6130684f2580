"""Crash safety: SIGKILL the daemon while clients submit, restart it, and every message that got a 250
reaches the remote at least once (the 250 came after the commit; claims of the dead process are
released on restart). A message can reach the remote twice only when the kill falls between the
remote's 250 and the commit of that outcome; the test counts those duplicates and prints their rate.

CRASH_TARGET (environment) raises the number of messages accepted before the kill, for measuring
the duplicate rate over a larger sample; the test's own run keeps the default."""

from __future__ import annotations

import asyncio
import os
import re
from collections import Counter

import aiosmtplib

from gateway.submission import client_tls_context
from tests.support.daemon import merge
from tests.support.delivery import FAST_RETRIES, publish_mx
from tests.support.process import AdminHandle, GatewayProcess
from tests.support.sink import mail_sink
from tests.support.submission import message
from tests.support.tenancy import dns_overrides, sending_setup

# Only the kill's moment can duplicate: deliveries whose 250 came in the last commit interval.
DUPLICATE_RATE_LIMIT = 0.05
QUEUE_ID = re.compile(rb"\bid ([0-9a-hjkmnp-tv-z]{16})\b")


TARGET = int(os.environ.get("CRASH_TARGET", "150"))  # accepted messages before the kill: sessions mid-dialog, commits and deliveries in flight


async def client_loop(port: int, setup: dict, accepted: list[str], enough: asyncio.Event, stop: asyncio.Event, n: int) -> None:
    """Submit until the daemon dies (or ``stop``); record the queue id of every 250."""
    try:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
        async with smtp:
            await smtp.login(setup["username"], setup["password"])
            i = 0
            while not stop.is_set():
                i += 1
                _, reply = await smtp.sendmail(setup["sender"], [f"rcpt{n}-{i}@dest.test"],
                                               message(sender=setup["sender"], to=f"rcpt{n}-{i}@dest.test", size=4096))
                accepted.append(reply.rsplit(" ", 1)[1])
                if len(accepted) >= TARGET:
                    enough.set()
    except (aiosmtplib.SMTPException, OSError):
        pass  # the daemon was killed under us: whatever had no 250 is the client's to retry


async def test_sigkill_under_load_loses_no_accepted_message(tmp_path, dns_server):
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        overrides = merge(dns_overrides(dns_server), {"delivery": {**FAST_RETRIES, "remote_port": sink.port}})
        gw = GatewayProcess(tmp_path, overrides).start()
        try:
            admin = AdminHandle(gw)
            setup = await sending_setup(admin, dns_server, domain="acme.test", sender="app@acme.test")
            port = await admin.listener_port("submission")

            accepted: list[str] = []
            enough, stop = asyncio.Event(), asyncio.Event()
            clients = [asyncio.create_task(client_loop(port, setup, accepted, enough, stop, n)) for n in range(6)]
            await asyncio.wait_for(enough.wait(), 60)
            gw.proc.kill()
            gw.proc.wait(10)
            stop.set()
            await asyncio.gather(*clients)
            assert len(accepted) >= TARGET
            gw.close()

            # The same state dir: claims of the dead process are released, delivery resumes.
            gw = GatewayProcess(tmp_path, overrides, state_dir=gw.state_dir, name="gw-restarted").start()
            wanted = set(accepted)

            def delivered() -> set[str]:
                return {m.group(1).decode() for r in sink.messages for m in [QUEUE_ID.search(r.data)] if m}

            await sink.wait_until(lambda _sink: wanted <= delivered(), timeout=90)
            assert wanted <= delivered()
            assert gw.stop() == 0
            per_message = Counter(m.group(1).decode() for r in sink.messages for m in [QUEUE_ID.search(r.data)] if m)
            duplicates = sum(n - 1 for n in per_message.values())
            rate = duplicates / len(per_message)
            print(f"crash test: {len(per_message)} messages delivered, {duplicates} duplicates ({rate:.2%})")
            assert rate <= DUPLICATE_RATE_LIMIT, per_message.most_common(5)
        finally:
            gw.close()
