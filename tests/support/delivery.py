"""Helpers for delivery tests: a daemon wired to the test DNS server and a sink, and ways to queue
mail and wait for its outcome.

    async with delivering_daemon(tmp_path, dns_server, sink) as (d, setup):
        qid = await enqueue(d, setup, ["bob@dest.test"])
        await wait_events(d, qid, "delivered")
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import dns.exception
import dns.resolver

from gateway.store.queue import NewMessage, QueueIds
from tests.support.daemon import merge, running_daemon
from tests.support.dns import DnsServer, dns_overrides
from tests.support.tenancy import sending_setup

_ids = QueueIds()

FAST_RETRIES = {"backoff_base": 0.2, "backoff_max": 0.4, "backoff_jitter": 0.0, "poll_interval": 0.1,
                "connect_timeout": 5.0, "command_timeout": 10.0}


def publish_mx(dns: DnsServer, domain: str, host: str | None = None) -> None:
    """MX of ``domain`` -> a host on 127.0.0.1 (where the sink listens)."""
    host = host or f"mx.{domain}"
    dns.set(domain, "MX", f"10 {host}.")
    dns.set(host, "A", "127.0.0.1")


@contextlib.asynccontextmanager
async def delivering_daemon(tmp_path, dns: DnsServer, port: int, extra: dict | None = None,
                            **setup_kwargs: Any) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    overrides = merge(dns_overrides(dns), {"delivery": {**FAST_RETRIES, "remote_port": port}})
    async with running_daemon(tmp_path, merge(overrides, extra or {})) as d:
        setup = await sending_setup(d, dns, **setup_kwargs)
        yield d, setup


def message(sender: str, to: list[str], subject: str = "hello", body: str = "Hello there.\r\n", message_id: str | None = None) -> bytes:
    message_id = message_id or f"{_ids.new()}@acme.test"
    return (f"From: App <{sender}>\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            f"Message-ID: <{message_id}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


async def enqueue(d, setup: dict[str, Any], rcpts: list[str], *, mail_from: str | None = None, body: bytes | None = None,
                  lifetime: float = 5 * 86400) -> str:
    """Queue a message directly through the store (as the submission listener does) and wake delivery."""
    qid = _ids.new()
    sender = setup["sender"] if mail_from is None else mail_from
    data = body or message(setup["sender"], rcpts)
    await d.store.queue.put(NewMessage(queue_id=qid, tenant_id=(await d.store.tenants.get(setup["tenant"]))["id"],
                                       usecase_id=setup["usecase_id"], mail_from=sender, message_id=f"{qid}@acme.test",
                                       body=data, recipients=rcpts, lifetime=lifetime))
    d.daemon.scheduler.wake()
    return qid


async def wait_events(d, subject: str, kind: str, count: int = 1, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Until ``count`` events of ``kind`` about ``subject`` exist (the store is the only place to look)."""
    async with asyncio.timeout(timeout):
        while True:
            events = await d.store.events.list(subject=subject, kind=kind)
            if len(events) >= count:
                return events
            await asyncio.sleep(0.05)


async def recipients(d, qid: str) -> dict[str, dict[str, Any]]:
    shown = await d.store.queue.show(qid)
    return {r["rcpt"]: r for r in shown["recipients"]}


def dkim_dnsfunc(server: DnsServer):
    """dkimpy's dnsfunc, answered by the test DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup
