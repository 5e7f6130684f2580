#!/usr/bin/env python3
"""Several nodes on one PostgreSQL under load, for long: every accepted message delivered exactly once.

    .venv/bin/python scripts/soak_nodes.py --nodes 2 --messages 100000 --kill-at 0.5
    .venv/bin/python scripts/soak_nodes.py --nodes 3 --messages 100000 --kill-at 0.5
    .venv/bin/python scripts/soak_nodes.py --compare --nodes 2 --messages 5000   # 1 node SQLite, then 2 on PG

Starts a throwaway PostgreSQL (tests/support/postgres.py), N `gateway run` nodes on it (each with a
state directory of its own, as separate hosts), one in-process SMTP sink as every recipient's MX, and
`--sessions` STARTTLS+AUTH client sessions spread over the nodes, until exactly `--messages` got a
250. With `--kill-at F` one node is SIGKILLed once a fraction F of the messages was accepted and the
others go on (the clients of the dead node move to the others).

Printed at the end: accepted, delivered, missing (accepted, never delivered: must be 0), duplicates
(delivered more than once) and, of those, how many lie in the kill's crash window (one copy sent by
the killed node: it got the remote's 250 and died before recording it) and outside it (must be 0);
the time from the kill to the takeover of its claims; msg/s end to end; CPU per message of the
nodes and of the PostgreSQL server (from /proc). Exit status 1 when a message is missing, a
duplicate lies outside the crash window or the count accepted is not --messages.

`--compare` runs the same client and sink twice in one go: one node on SQLite (its state
directory), then --nodes nodes on the PostgreSQL, and prints both figures (issue 11's "two nodes on
PostgreSQL against the single-node SQLite figure of the same run"). `--statements` logs every
statement the server runs (log_statement = all) and prints how many per message, by kind.

SIGTERM and SIGINT stop the nodes and the PostgreSQL server before the script exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from aiosmtpd.smtp import SMTP  # noqa: E402
from bench_e2e import cpu_seconds, server_cpu  # noqa: E402

from tests.support.delivery import publish_mx  # noqa: E402
from tests.support.dns import DnsServer  # noqa: E402
from tests.support.nodes import QUEUE_ID, Node, Quota, host_of, submit_until, wanted  # noqa: E402
from tests.support.postgres import Postgres  # noqa: E402


class CountingSink:
    """(queue id, recipient) -> the EHLO names of the nodes that delivered it."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.delivered = 0
        self.changed = asyncio.Event()

    def reset(self) -> None:
        self.seen.clear()
        self.delivered = 0

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
            self.changed.set()
        return "250 2.0.0 OK"


@dataclass
class Outcome:
    label: str
    nodes: int
    accepted: int
    wanted: int           # --messages
    delivered: int
    deliveries: int
    missing: int
    unexpected: int
    duplicates: int
    in_window: int
    copies: dict[int, int]
    accept_rate: float
    e2e_rate: float
    node_cpu: float       # seconds, every node's process tree (the killed one's until the kill)
    pg_cpu: float         # seconds, the PostgreSQL server
    takeover: float | None
    lease: float
    writer: dict[str, float]  # the live nodes' store counters at the end: round trips, commits, replays
    statements: Counter | None = None

    @property
    def failed(self) -> bool:
        return bool(self.missing or self.duplicates > self.in_window or self.accepted != self.wanted)

    def report(self) -> str:
        per = 1000 / max(self.delivered, 1)
        lines = [
            f"[{self.label}] nodes {self.nodes}  accepted {self.accepted} (asked {self.wanted})  delivered {self.delivered}"
            f" recipients ({self.deliveries} deliveries)",
            f"[{self.label}] missing {self.missing}  unexpected {self.unexpected} (committed as the victim died, no 250 seen)"
            f"  duplicates {self.duplicates} (in the kill's crash window: {self.in_window}, outside it:"
            f" {self.duplicates - self.in_window})  copies per recipient {dict(sorted(self.copies.items()))}",
            f"[{self.label}] accept {self.accept_rate:.0f} msg/s, end to end {self.e2e_rate:.0f} msg/s;"
            f" CPU per message {self.node_cpu * per:.2f} ms nodes + {self.pg_cpu * per:.2f} ms PostgreSQL"
            f" = {(self.node_cpu + self.pg_cpu) * per:.2f} ms"
            + (f"; claims taken over {self.takeover:.2f}s after the kill (lease {self.lease}s)" if self.takeover is not None else ""),
        ]
        if self.writer.get("round_trips"):
            w = self.writer
            lines.append(f"[{self.label}] writer (live nodes, since start): {w['round_trips']:.0f} round trips,"
                         f" {w['commits']:.0f} commits ({w['writes'] / max(w['commits'], 1):.1f} writes each),"
                         f" {w['replays']:.0f} batches run again; {w['round_trips'] / max(self.delivered, 1):.2f}"
                         " round trips per message delivered" + (" (the killed node's not counted)" if self.takeover is not None else ""))
        if self.statements:
            total = sum(self.statements.values())
            lines.append(f"[{self.label}] PostgreSQL statements per message {total / max(self.delivered, 1):.2f}, by kind:")
            lines += [f"    {n / max(self.delivered, 1):6.2f}  {kind}" for kind, n in self.statements.most_common()
                      if n / max(self.delivered, 1) >= 0.01]
        return "\n".join(lines)


def postmaster(pg: Postgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


_STATEMENT = re.compile(r"LOG:  (?:statement|execute [^:]*): (.*)")
_LITERAL = re.compile(r"'(?:[^']|'')*'|\$\d+|\b\d+\b")


def statement_kinds(log: Path, start: int, width: int = 70) -> tuple[Counter, int]:
    """The statements in the server log from byte ``start``, by their first words; the log's end."""
    kinds: Counter = Counter()
    with open(log, "rb") as f:
        f.seek(start)
        data = f.read()
    for line in data.decode(errors="replace").splitlines():
        m = _STATEMENT.search(line)
        if m:
            for part in m.group(1).split(";"):
                if part.strip():
                    kinds[_LITERAL.sub("?", " ".join(part.split()))[:width]] += 1
    return kinds, start + len(data)


async def run(a: argparse.Namespace, label: str, url: str, count: int, kill_at: float, tmp: Path, sink: CountingSink,
              sink_port: int, dns: DnsServer, pg: Postgres) -> Outcome:
    sink.reset()
    dns.clear()  # the phase before published its own domain's records (a DKIM key of another node)
    publish_mx(dns, "dest.test")
    log_from = pg.log.stat().st_size if a.statements else 0
    nodes: list[Node] = []
    try:
        for i in range(count):  # one after the other: the first creates the schema
            nodes.append(await Node.start(tmp / label, f"node{i}", url, dns, sink_port, lease=a.lease))
        setup = await nodes[0].setup(dns)
        accepted: list[tuple[str, list[str]]] = []
        stop = asyncio.Event()
        quota = Quota(a.messages)
        victim = nodes[-1] if kill_at else None
        killed_at = taken_at = None
        cpu_at_kill = 0.0
        seeds = iter(range(1, 1 << 62))
        pg_pid = postmaster(pg)
        cpu0 = {n.name: server_cpu(n.proc.proc.pid) for n in nodes}
        pg_cpu0 = server_cpu(pg_pid)
        started = time.monotonic()

        async def session(n: int) -> None:
            # A session whose node dies moves to the next live node, as a client behind a balancer would.
            k = n
            while len(accepted) < a.messages:
                node = nodes[k % len(nodes)]
                if node is victim and killed_at is not None:
                    k += 1
                    continue
                if quota.left <= 0:  # the last slots are in flight on other sessions; one may come back
                    await asyncio.sleep(0.05)
                    continue
                before = len(accepted)
                await submit_until(node.port, setup, accepted, stop, next(seeds), rcpts=1, size=a.size, quota=quota)
                if len(accepted) == before or node is victim:
                    k += 1

        async def killer() -> None:
            nonlocal killed_at, taken_at, cpu_at_kill
            while len(accepted) < a.messages * kill_at:
                await asyncio.sleep(0.05)
            cpu_at_kill = server_cpu(victim.proc.proc.pid)
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

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                print(f"  [{label}] {time.monotonic() - started:6.0f}s  accepted {len(accepted):7d}  delivered {sink.delivered:7d}",
                      flush=True)

        tasks = [asyncio.create_task(session(n)) for n in range(a.sessions)]
        kill_task = asyncio.create_task(killer()) if victim else None
        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*tasks)
            stop.set()
            accepted_done = time.monotonic()
            want = wanted(accepted)
            deadline = time.monotonic() + a.timeout
            while not want <= sink.seen.keys() and time.monotonic() < deadline:
                sink.changed.clear()
                try:
                    await asyncio.wait_for(sink.changed.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
            done = time.monotonic()
        finally:
            reporter.cancel()
            for t in tasks:
                t.cancel()
            if kill_task and not kill_task.done():  # the dead node had no claim left to take over
                kill_task.cancel()
            await asyncio.gather(reporter, *tasks, *([kill_task] if kill_task else []), return_exceptions=True)
        node_cpu = sum(cpu_at_kill if n is victim else server_cpu(n.proc.proc.pid) for n in nodes) - sum(cpu0.values())
        pg_cpu = server_cpu(pg_pid) - pg_cpu0 if url else 0.0
        statements = statement_kinds(pg.log, log_from)[0] if a.statements and url else None
        writer = {key: sum([await n.metric(f"gateway_store_{key}_total") for n in nodes if n is not victim])
                  for key in ("round_trips", "commits", "writes", "replays")}
    finally:
        for node in nodes:
            node.close()
    missing = want - sink.seen.keys()
    dups = {k: v for k, v in sink.seen.items() if len(v) > 1}
    window = {k for k, v in dups.items() if victim and host_of(victim.name) in v}
    return Outcome(
        label=label, nodes=count, accepted=len(accepted), wanted=a.messages, delivered=len(sink.seen), deliveries=sink.delivered,
        missing=len(missing), unexpected=len(sink.seen.keys() - want), duplicates=len(dups), in_window=len(window),
        copies=dict(Counter(len(v) for v in sink.seen.values())),
        accept_rate=len(accepted) / (accepted_done - started), e2e_rate=len(sink.seen) / (done - started),
        node_cpu=node_cpu, pg_cpu=pg_cpu, takeover=(taken_at - killed_at) if taken_at else None, lease=a.lease,
        writer=writer, statements=statements)


async def main(a: argparse.Namespace) -> int:
    # SIGTERM ends the run as Ctrl-C does (asyncio.run cancels this task on SIGINT): the finally
    # blocks and the Postgres context stop the nodes and the server.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    tmp = Path(tempfile.mkdtemp(prefix="soak-nodes-"))
    sink = CountingSink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(sink, hostname="sink.test", data_size_limit=1 << 20), "127.0.0.1", 0)
    sink_port = server.sockets[0].getsockname()[1]
    client0 = cpu_seconds(os.getpid())
    outcomes: list[Outcome] = []
    try:
        settings = {"log_statement": "all"} if a.statements else {}
        with Postgres(max_connections=100 + 20 * a.nodes, settings=settings) as pg, DnsServer() as dns:
            if a.compare:
                outcomes.append(await run(a, "sqlite", "", 1, 0.0, tmp, sink, sink_port, dns, pg))
                print(outcomes[-1].report(), flush=True)
            url = pg.create_database("soak")
            outcomes.append(await run(a, "postgresql", url, a.nodes, a.kill_at, tmp, sink, sink_port, dns, pg))
            print(outcomes[-1].report(), flush=True)
    finally:
        server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if a.compare and len(outcomes) == 2:
        lite, pgo = outcomes
        print(f"compare: {pgo.nodes} nodes on PostgreSQL {pgo.e2e_rate:.0f} msg/s end to end"
              f" ({pgo.e2e_rate / max(lite.e2e_rate, 1e-9):.2f}x) against 1 node on SQLite {lite.e2e_rate:.0f} msg/s;"
              f" CPU per message {(pgo.node_cpu + pgo.pg_cpu) * 1000 / max(pgo.delivered, 1):.2f} ms against"
              f" {lite.node_cpu * 1000 / max(lite.delivered, 1):.2f} ms")
    print(f"client CPU {cpu_seconds(os.getpid()) - client0:.1f}s (this script: TLS clients and the sink)")
    return 1 if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--lease", type=float, default=10.0, help="claim and job lease of every node, seconds")
    ap.add_argument("--kill-at", type=float, default=0.0, help="SIGKILL the last node at this fraction accepted (0: never)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--compare", action="store_true", help="first 1 node on SQLite, then --nodes on PostgreSQL (no kill on SQLite)")
    ap.add_argument("--statements", action="store_true", help="log the server's statements and print them per message")
    try:
        sys.exit(asyncio.run(main(ap.parse_args())))
    except asyncio.CancelledError:  # SIGTERM: everything was stopped on the way out
        sys.exit(143)
