"""Two and three nodes on one PostgreSQL (separate `gateway run` processes, each with its own state
directory and node id, as separate hosts would be), under submission load on every node.

The remote holds every RCPT at a gate, so each node has recipients claimed and in flight. One node is
SIGKILLed while the clients keep submitting to all of them. The survivors keep renewing their own
claims for as long as the gate stays shut (longer than the lease: a claim that was not renewed would
be taken over and sent twice), take the dead node's claims over once their lease has run out, and
then, with the gate open, every message that got a 250 on any node reaches the remote exactly once:
the dead node's deliveries never got past RCPT, so there is no crash window to allow for. (A message
the dead node committed as it died may be delivered without its client having seen the 250.)

The long form (100,000 messages, kills at random) is scripts/soak_nodes.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.delivery import publish_mx
from tests.support.nodes import QUEUE_ID, Node, deliveries, host_of, submit_until, wanted
from tests.support.sink import mail_sink

LEASE = 5.0  # claim and job lease of every node (seconds): renewed every third, so a loaded machine keeps up
BEFORE_KILL = 30  # messages accepted before the kill


@pytest.mark.parametrize("count", [2, 3], ids=["two-nodes", "three-nodes"])
async def test_a_killed_nodes_claims_are_taken_over_and_every_accepted_message_is_delivered_once(tmp_path, dns_server, pg_url, count):
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        sink.gate = asyncio.Event()
        nodes: list[Node] = []
        try:
            for i in range(count):  # one after the other: the first creates the schema
                nodes.append(await Node.start(tmp_path, f"node{i}", pg_url, dns_server, sink.port, lease=LEASE))
            setup = await nodes[0].setup(dns_server)  # in the shared store: every node serves it
            victim, survivors = nodes[-1], nodes[:-1]

            accepted: list[tuple[str, list[str]]] = []
            stop = asyncio.Event()
            clients = [asyncio.create_task(submit_until(nodes[k % count].port, setup, accepted, stop, k))
                       for k in range(2 * count)]
            # The victim has deliveries in flight (its sessions wait at the gate) and mail was accepted on every node.
            await sink.wait_until(lambda s: s.waiting_hosts[host_of(victim.name)] >= 1 and len(accepted) >= BEFORE_KILL,
                                  timeout=60)
            # The survivors take the dead node's claims over once their lease ran out, no sooner;
            # and nobody's claims were taken over while every node was alive and renewing.
            async def taken_over() -> float:
                return sum([await n.metric("gateway_delivery_claims_taken_over_total") for n in survivors])
            assert await taken_over() == 0, "a live node's claims were taken over"
            in_flight = sink.waiting_hosts[host_of(victim.name)]
            victim.kill()
            killed = time.monotonic()
            while (took := await taken_over()) < 1:
                assert time.monotonic() - killed < LEASE + 20, "nobody took the dead node's claims over"
                await asyncio.sleep(0.1)
            waited = time.monotonic() - killed
            assert waited >= LEASE / 2, f"claims taken over {waited:.2f}s after the kill, before the lease ran out"
            stop.set()
            await asyncio.gather(*clients)
            sink.gate.set()

            want = wanted(accepted)
            await sink.wait_until(lambda s: want <= set(deliveries(s)), timeout=60)
            got = deliveries(sink)
            twice = {k: v for k, v in got.items() if v > 1}
            assert not twice, f"{len(twice)} recipients delivered more than once: {list(twice.items())[:5]}"
            # Delivered without a 250 to its client: only what the victim committed as it died (the
            # reply lost with the connection; the client sends it again, as SMTP has it), at most one
            # message per session the victim had.
            unacknowledged = {qid for qid, _ in set(got) - want}
            victims = {qid for r in sink.messages if f"by {host_of(victim.name)}".encode() in r.data
                       for m in [QUEUE_ID.search(r.data)] if m for qid in [m.group(1).decode()]}
            assert unacknowledged <= victims, f"delivered, never acknowledged, not the victim's: {unacknowledged - victims}"
            assert len(unacknowledged) <= sum(1 for k in range(2 * count) if k % count == count - 1)
            accepted_by = {n.name: sum(1 for r in sink.messages if f"by {host_of(n.name)}".encode() in r.data) for n in nodes}
            print(f"{count} nodes: {len(accepted)} accepted, {len(got)} recipients delivered once, {in_flight} in flight "
                  f"on the victim at the kill, {took:.0f} claims taken over {waited:.2f}s after it; accepted by {accepted_by}")
            assert len(accepted) > BEFORE_KILL  # the survivors kept accepting after the kill
        finally:
            for node in nodes:
                node.close()
