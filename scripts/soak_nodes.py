#!/usr/bin/env python3
"""Several nodes on one PostgreSQL under load, for long: every accepted message delivered exactly once.

    .venv/bin/python scripts/soak_nodes.py --nodes 2 --messages 100000            # no kill
    .venv/bin/python scripts/soak_nodes.py --nodes 3 --messages 100000 --kill-at 0.5

Starts a throwaway PostgreSQL (tests/support/postgres.py), N `gateway run` nodes on it (each with a
state directory of its own, as separate hosts), one in-process SMTP sink as every recipient's MX, and
`--sessions` STARTTLS+AUTH client sessions spread over the nodes, until `--messages` got a 250. With
`--kill-at F` one node is SIGKILLed once a fraction F of the messages was accepted and the others go
on (the clients of the dead node move to the others).

Printed at the end: accepted, delivered, missing (accepted, never delivered: must be 0), duplicates
(delivered more than once) and, of those, how many lie in the kill's crash window (one copy sent by
the killed node: it got the remote's 250 and died before recording it); the time from the kill to the
takeover of its claims; msg/s end to end. Exit status 1 when a message is missing or a duplicate lies
outside the crash window.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmtpd.smtp import SMTP  # noqa: E402

from tests.support.delivery import publish_mx  # noqa: E402
from tests.support.dns import DnsServer  # noqa: E402
from tests.support.nodes import QUEUE_ID, Node, host_of, submit_until  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402


class CountingSink:
    """(queue id, recipient) -> the EHLO names of the nodes that delivered it."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.delivered = 0
        self.port = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802 - aiosmtpd's naming
        session.host_name = hostname
        return responses

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        m = QUEUE_ID.search(envelope.content)
        if m:
            qid = m.group(1).decode()
            for rcpt in envelope.rcpt_tos:
                self.seen[(qid, rcpt)].append(session.host_name)
                self.delivered += 1
        return "250 2.0.0 OK"


async def main(a: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="soak-nodes-"))
    sink = CountingSink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink, hostname="sink.test", data_size_limit=1 << 20), "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    with Postgres(max_connections=100 + 20 * a.nodes) as pg, DnsServer() as dns:
        url = pg.create_database("soak")
        publish_mx(dns, "dest.test")
        nodes: list[Node] = []
        try:
            for i in range(a.nodes):
                nodes.append(await Node.start(tmp, f"node{i}", url, dns, sink.port, lease=a.lease))
            setup = await nodes[0].setup(dns)
            accepted: list[tuple[str, list[str]]] = []
            stop = asyncio.Event()
            victim = nodes[-1] if a.kill_at else None
            killed_at = taken_at = None
            per_session = -(-a.messages // a.sessions)
            started = time.monotonic()

            async def session(n: int) -> None:
                # A session whose node dies moves to the next live node, as a client behind a balancer would.
                k = n
                while not stop.is_set() and len(accepted) < a.messages:
                    node = nodes[k % len(nodes)]
                    if node is victim and killed_at is not None:
                        k += 1
                        continue
                    before = len(accepted)
                    await submit_until(node.port, setup, accepted, stop, n * 1_000_000 + k, rcpts=1, size=a.size,
                                       limit=min(per_session, a.messages - len(accepted)))
                    if len(accepted) == before or node is victim:
                        k += 1

            async def killer() -> None:
                nonlocal killed_at, taken_at
                while len(accepted) < a.messages * a.kill_at:
                    await asyncio.sleep(0.05)
                victim.kill()
                killed_at = time.monotonic()
                print(f"killed {victim.name} after {len(accepted)} accepted", flush=True)
                while True:
                    took = sum([await n.metric("gateway_delivery_claims_taken_over_total") for n in nodes if n is not victim])
                    if took:
                        taken_at = time.monotonic()
                        print(f"{took:.0f} of its claims taken over {taken_at - killed_at:.2f}s after the kill", flush=True)
                        return
                    await asyncio.sleep(0.2)

            tasks = [asyncio.create_task(session(n)) for n in range(a.sessions)]
            kill_task = asyncio.create_task(killer()) if victim else None

            async def progress() -> None:
                while True:
                    await asyncio.sleep(10)
                    print(f"  {time.monotonic() - started:6.0f}s  accepted {len(accepted):7d}  delivered {sink.delivered:7d}", flush=True)
            reporter = asyncio.create_task(progress())
            await asyncio.gather(*tasks)
            stop.set()
            accepted_done = time.monotonic()
            want = {(qid, rcpt) for qid, rcpts in accepted for rcpt in rcpts}
            deadline = time.monotonic() + a.timeout
            while not want <= sink.seen.keys() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            done = time.monotonic()
            reporter.cancel()
            if kill_task and not kill_task.done():  # the dead node had no claim left to take over
                kill_task.cancel()
                await asyncio.gather(kill_task, return_exceptions=True)
        finally:
            for node in nodes:
                node.close()
            server.close()
    missing = want - sink.seen.keys()
    extra = sink.seen.keys() - want
    copies = Counter(len(v) for v in sink.seen.values())
    dups = {k: v for k, v in sink.seen.items() if len(v) > 1}
    window = {k for k, v in dups.items() if victim and host_of(victim.name) in v}
    print(f"nodes {a.nodes}  accepted {len(accepted)}  delivered {len(sink.seen)} recipients ({sink.delivered} deliveries)")
    print(f"missing {len(missing)}  unexpected {len(extra)}  duplicates {len(dups)} (in the kill's crash window: {len(window)}, "
          f"outside it: {len(dups) - len(window)})  copies per recipient {dict(sorted(copies.items()))}")
    print(f"accept {len(accepted) / (accepted_done - started):.0f} msg/s, end to end {len(sink.seen) / (done - started):.0f} msg/s"
          + (f", claims taken over {taken_at - killed_at:.2f}s after the kill (lease {a.lease}s)" if taken_at else ""))
    return 1 if missing or len(dups) > len(window) else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--lease", type=float, default=10.0, help="claim and job lease of every node, seconds")
    ap.add_argument("--kill-at", type=float, default=0.0, help="SIGKILL the last node at this fraction accepted (0: never)")
    ap.add_argument("--timeout", type=float, default=600.0)
    sys.exit(asyncio.run(main(ap.parse_args())))
