"""Several gateway nodes on one PostgreSQL store, as separate hosts would run them: each node is a
`gateway run` subprocess with a state directory of its own, its own node id and EHLO name, and the
same ``store.url``. Used by tests/test_nodes.py and scripts/soak_nodes.py.

    nodes = [Node.start(tmp_path, f"node{i}", url, dns, sink.port) for i in range(3)]
    setup = await nodes[0].setup(dns)             # tenant, verified domain, use case, credential
    await submit_until(port, setup, accepted, stop, n)   # one client session, 250s recorded

Deliveries are told apart at the sink by the queue id in the Received header each node writes
(``id <queue id>``), and the node that sent a delivery by the EHLO name (``<node>.nodes.test``).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path
from typing import Any

import aiosmtplib

from gateway.submission import client_tls_context
from tests.support.daemon import merge
from tests.support.delivery import FAST_RETRIES
from tests.support.dns import DnsServer
from tests.support.process import AdminHandle, GatewayProcess
from tests.support.sink import Sink
from tests.support.submission import message
from tests.support.tenancy import dns_overrides, sending_setup

QUEUE_ID = re.compile(rb"\bid ([0-9a-hjkmnp-tv-z]{16})\b")
METRIC = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})? (?P<value>\S+)$")


def host_of(name: str) -> str:
    return f"{name}.nodes.test"


class Node:
    """One node: its process, its admin socket, its submission port."""

    def __init__(self, proc: GatewayProcess, name: str):
        self.proc, self.name = proc, name
        self.admin = AdminHandle(proc)
        self.port = 0

    @classmethod
    async def start(cls, tmp_path: Path, name: str, url: str, dns: DnsServer, sink_port: int, *,
                    lease: float = 2.0, extra: dict[str, Any] | None = None) -> "Node":
        overrides = merge(dns_overrides(dns), {
            "store": {"url": url},
            "daemon": {"hostname": host_of(name), "node_id": name, "job_lease": lease},
            "delivery": {**FAST_RETRIES, "remote_port": sink_port, "claim_lease": lease},
            "log": {"level": "warning"},
        })
        proc = await asyncio.to_thread(GatewayProcess(tmp_path, merge(overrides, extra or {}), name=name).start)
        node = cls(proc, name)
        node.port = await node.admin.listener_port("submission")
        return node

    async def setup(self, dns: DnsServer) -> dict[str, Any]:
        return await sending_setup(self.admin, dns, domain="acme.test", sender="app@acme.test")

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples on this node (0 when it has none)."""
        text = await self.admin.call("daemon.metrics")
        return sum(float(m["value"]) for line in text.splitlines() if (m := METRIC.match(line)) and m["name"] == name)

    def kill(self) -> None:
        self.proc.proc.kill()
        self.proc.proc.wait(10)

    def close(self) -> None:
        self.proc.close()


class Quota:
    """Exactly ``total`` messages accepted over every session: a session takes a slot before each
    message and gives it back when the message got no 250 (its node died under it), so the last
    slots go to whichever session is still connected; nobody overshoots."""

    def __init__(self, total: int):
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def give_back(self) -> None:
        self.left += 1


async def submit_until(port: int, setup: dict[str, Any], accepted: list[tuple[str, list[str]]], stop: asyncio.Event,
                       n: int, *, rcpts: int = 2, limit: int | None = None, size: int = 2048,
                       quota: Quota | None = None) -> None:
    """One session submitting until ``stop`` (or ``limit`` messages, or ``quota`` is spent, or the node
    dies); the queue id and recipients of every 250 go into ``accepted``."""
    try:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls_context(), timeout=30)
        async with smtp:
            await smtp.login(setup["username"], setup["password"])
            i = 0
            while not stop.is_set() and (limit is None or i < limit) and (quota is None or quota.take()):
                i += 1
                to = [f"r{n}-{i}-{k}@dest.test" for k in range(rcpts)]
                try:
                    _, reply = await smtp.sendmail(setup["sender"], to, message(sender=setup["sender"], to=", ".join(to), size=size))
                except BaseException:
                    if quota is not None:
                        quota.give_back()
                    raise
                accepted.append((reply.rsplit(" ", 1)[1], to))
    except (aiosmtplib.SMTPException, OSError):
        pass  # the node was killed under us: what got no 250 is the client's to send again


def deliveries(sink: Sink) -> Counter:
    """(queue id, recipient) -> how many times the sink accepted it."""
    return Counter((m.group(1).decode(), rcpt) for r in sink.messages for m in [QUEUE_ID.search(r.data)] if m
                   for rcpt in r.rcpt_tos)


def wanted(accepted: list[tuple[str, list[str]]]) -> set[tuple[str, str]]:
    return {(qid, rcpt) for qid, rcpts in accepted for rcpt in rcpts}


__all__ = ["Node", "Quota", "submit_until", "deliveries", "wanted", "host_of", "QUEUE_ID"]
