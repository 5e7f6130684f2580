"""Claims with a lease and jobs under a lease (issue 11): several processes (or nodes) on one queue.

Two store handles on one file stand for two processes (the daemon's primary and a secondary); a
subprocess SIGKILLed after claiming stands for a node that died mid-delivery. Leases are short or
the claims' clock is given, so nothing here waits a real lease out for long.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from gateway.lifecycle import Component
from gateway.singleton import Singleton
from gateway.store import Store
from gateway.store.delivery import Outcome
from gateway.store.queue import NewMessage, QueueIds
from tests.support.submission import make_usecase


async def _queue(store: Store, ctx: dict, n_messages: int, per_message: int = 1) -> list[str]:
    ids, qids = QueueIds(), []
    for i in range(n_messages):
        qid = ids.new()
        qids.append(qid)
        await store.queue.put(NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["id"], mail_from="app@example.com",
                                         message_id=f"{qid}@example.com", body=b"Subject: x\r\n\r\nhi\r\n",
                                         recipients=[f"r{i}-{j}@example.org" for j in range(per_message)]))
    return qids


def _claims(conn):
    return {r[0]: r[1] for r in conn.execute("SELECT id, claimed_by FROM recipients WHERE claimed_by IS NOT NULL")}


async def test_two_processes_on_one_file_never_claim_a_recipient_twice(tmp_path):
    path = tmp_path / "g.db"
    primary = await Store.open(path)
    secondary = await Store.open(path, secondary=True)
    try:
        ctx = await make_usecase(primary)
        await _queue(primary, ctx, 30, per_message=2)

        async def drain(store: Store, token: str) -> list[int]:
            got: list[int] = []
            while rows := await store.delivery.claim(token, 7, lease=60):
                got += [r["id"] for r in rows]
            return got

        a, b = await asyncio.gather(drain(primary, "node-a:1:x"), drain(secondary, "node-b:2:y"))
        assert not set(a) & set(b)
        assert len(a) + len(b) == len(set(a) | set(b)) == 60
    finally:
        await secondary.close()
        await primary.close()


# The dead node: claims everything due under a 2 s lease, says what and when, then hangs until killed.
HOLDER = r'''
import asyncio, json, sys, time
from pathlib import Path
from gateway.store import Store
async def main():
    store = await Store.open(Path(sys.argv[1]), secondary=True)
    now = time.time()
    rows = await store.delivery.claim(sys.argv[2], 100, now, lease=2.0)
    print(json.dumps({"now": now, "ids": [r["id"] for r in rows]}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
'''


async def test_a_killed_holders_claims_are_taken_over_after_the_lease_and_its_late_record_is_ignored(tmp_path):
    path = tmp_path / "g.db"
    store = await Store.open(path)
    try:
        ctx = await make_usecase(store)
        [qid] = await _queue(store, ctx, 1, per_message=3)
        dead = "node-b:4242:dead"
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), dead], stdout=subprocess.PIPE, text=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            line = await asyncio.to_thread(proc.stdout.readline)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        held = json.loads(line)
        assert len(held["ids"]) == 3
        # While its lease runs, nobody takes them (the clock is given: no waiting for 2 s).
        early = await store.delivery.claim("node-a:1:live", 100, held["now"] + 1.9, lease=60)
        assert early == [] and early.taken_over == {}
        # Past it, the next claim takes them over, and says from whom.
        taken = await store.delivery.claim("node-a:1:live", 100, held["now"] + 2.1, lease=60)
        assert sorted(r["id"] for r in taken) == sorted(held["ids"])
        assert taken.taken_over == {dead: 3}
        # The dead holder's late record (say its 250 came back just before it hung) changes nothing.
        late = [Outcome(recipient_id=i, state="delivered", code=250, reply="250 ok") for i in held["ids"]]
        result = await store.delivery.record(dead, ctx["tenant_id"], qid, late)
        assert result["recorded"] == [] and sorted(result["ignored"]) == sorted(held["ids"])
        assert await store.events.list(subject=qid, kind="delivered") == []
        assert set((await store.db.read(_claims)).values()) == {"node-a:1:live"}
        # Nor can it release them.
        assert await store.delivery.release(dead) == 0
        # The new holder records as usual.
        mine = [Outcome(recipient_id=i, state="delivered", code=250, reply="250 ok") for i in held["ids"]]
        assert sorted((await store.delivery.record("node-a:1:live", ctx["tenant_id"], qid, mine))["recorded"]) == sorted(held["ids"])
    finally:
        await store.close()


async def test_a_renewed_claim_is_not_taken_over(tmp_path):
    store = await Store.open(tmp_path / "g.db")
    try:
        ctx = await make_usecase(store)
        await _queue(store, ctx, 2)
        t = time.time()
        assert len(await store.delivery.claim("node-a:1:x", 100, t, lease=1.0)) == 2
        assert await store.delivery.renew("node-a:1:x", t + 10) == 2     # one write for both
        assert await store.delivery.claim("node-b:1:y", 100, t + 5) == []
        assert len(await store.delivery.claim("node-b:1:y", 100, t + 11)) == 2
    finally:
        await store.close()


async def test_release_by_node_and_by_process_touches_only_theirs(tmp_path):
    store = await Store.open(tmp_path / "g.db")
    try:
        ctx = await make_usecase(store)
        await _queue(store, ctx, 4)
        for holder in ("me:10:a", "me:11:b", "other:10:c", "me1:10:d"):   # me1 shares the text, not the node
            assert len(await store.delivery.claim(holder, 1, lease=60)) == 1
        assert await store.delivery.release_process("me", 10) == 1
        assert sorted((await store.db.read(_claims)).values()) == ["me1:10:d", "me:11:b", "other:10:c"]
        assert await store.delivery.release_node("me") == 1
        assert sorted((await store.db.read(_claims)).values()) == ["me1:10:d", "other:10:c"]
    finally:
        await store.close()


async def test_at_start_a_node_releases_its_own_claims_and_leases_only(tmp_path):
    """A node restarted after a crash: its dead process's claims and job leases go at once; another
    node's (alive, as far as anyone knows) stay until their lease runs out."""
    from gateway.paths import Paths
    from tests.support.daemon import running_daemon

    state = tmp_path / "state"
    state.mkdir()
    store = await Store.open(Paths(state_dir=state, socket=state / "admin.sock").database)
    try:
        ctx = await make_usecase(store)
        await _queue(store, ctx, 3)
        [mine] = await store.delivery.claim("nodea:99:dead", 1, lease=3600)
        [theirs] = await store.delivery.claim("nodeb:7:live", 1, lease=3600)
        [lapsed] = await store.delivery.claim("nodec:5:gone", 1, lease=-1)   # a node that died a while ago
        far = time.time() + 3600
        assert await store.leases.acquire("sweeper", "nodeb:7:live", now=time.time(), until=far) is None
        assert await store.leases.acquire("inbound.processor", "nodea:99:dead", now=time.time(), until=far) is None
    finally:
        await store.close()
    # No DNS answers in this test: a claimed row of ours would only be deferred.
    async with running_daemon(tmp_path, {"daemon": {"node_id": "nodea"}, "delivery": {"poll_interval": 3600}}) as d:
        claims = await d.store.db.read(_claims)
        assert claims.get(theirs["id"]) == "nodeb:7:live"
        assert claims.get(mine["id"]) != "nodea:99:dead"   # released (and maybe claimed again by this daemon)
        leases = {l["name"]: l["holder"] for l in await d.store.leases.all()}
        assert leases["sweeper"] == "nodeb:7:live"                                  # not ours to take yet
        assert leases["inbound.processor"].startswith(f"nodea:{os.getpid()}:")    # ours again at once
        jobs = {c.lease: c.running for c in d.daemon.components if isinstance(c, Singleton)}
        assert jobs == {"domains.reverify": True, "inbound.processor": True, "sweeper": False}
        status = await d.call("status")
        assert status["node"] == "nodea"
        assert status["jobs"] == {"domains.reverify": "running", "inbound.processor": "running", "sweeper": "elsewhere"}
        # The lapsed claim is taken over by the scheduler's first claim (counted).
        async with asyncio.timeout(5):
            while not d.daemon.metrics.registry.get_sample_value("gateway_delivery_claims_taken_over_total"):
                await asyncio.sleep(0.01)   # the dispatcher's first round runs just after the start
        assert d.daemon.metrics.registry.get_sample_value("gateway_delivery_claims_taken_over_total") == 1
        assert (await d.store.db.read(_claims)).get(lapsed["id"]) != "nodec:5:gone"


class Job(Component):
    """A job that says when it runs."""

    def __init__(self, name: str, log: list[tuple[str, str]], running: set[str]):
        self.name, self.log, self.running = name, log, running
        self.started, self.stopped = asyncio.Event(), asyncio.Event()

    async def start(self) -> None:
        assert not self.running, f"{self.name} started while {self.running} runs"   # never two at once
        self.running.add(self.name)
        self.log.append(("start", self.name))
        self.started.set()

    async def stop(self, deadline: float) -> None:
        self.running.discard(self.name)
        self.log.append(("stop", self.name))
        self.stopped.set()


async def test_a_job_lease_is_held_by_one_runner_and_moves_on_when_it_dies(tmp_path):
    path = tmp_path / "g.db"
    primary = await Store.open(path)
    secondary = await Store.open(path, secondary=True)
    log: list[tuple[str, str]] = []
    running: set[str] = set()
    lease = 0.3
    a = Singleton(Job("a", log, running), primary.leases, "sweeper", "node-a:1:x", lambda: lease)
    b = Singleton(Job("b", log, running), secondary.leases, "sweeper", "node-b:2:y", lambda: lease)
    try:
        await a.start()
        await b.start()
        assert a.running and not b.running
        await asyncio.sleep(lease * 1.5)        # several renewals: a keeps it, b keeps waiting
        assert a.running and not b.running and log == [("start", "a")]
        # a's process dies: it neither renews nor releases (its loop is gone, the job with it).
        a._task.cancel()
        await asyncio.gather(a._task, return_exceptions=True)
        running.discard("a")
        died = time.monotonic()
        await asyncio.wait_for(b.job.started.wait(), lease * 3)
        # Within the lease after a's last renewal, plus one of b's waits (a third of it) and slack.
        assert time.monotonic() - died <= lease * 4 / 3 + 0.25
        assert b.running and (await primary.leases.all())[0]["holder"] == "node-b:2:y"
        # b stops: it gives the lease back, so the next try anywhere takes it at once.
        await b.stop(asyncio.get_running_loop().time())
        assert await primary.leases.all() == []
    finally:
        await b.stop(0)
        await secondary.close()
        await primary.close()


async def test_a_job_whose_lease_was_taken_stops(tmp_path):
    store = await Store.open(tmp_path / "g.db")
    log: list[tuple[str, str]] = []
    running: set[str] = set()
    a = Singleton(Job("a", log, running), store.leases, "poller:1", "node-a:1:x", lambda: 0.3)
    try:
        await a.start()
        assert a.running
        # Another node took it (our renewal was held up past the lease): the next renewal fails.
        assert await store.leases.release("poller:1", "node-a:1:x")
        assert await store.leases.acquire("poller:1", "node-b:1:y", now=time.time(), until=time.time() + 60) is None
        await asyncio.wait_for(a.job.stopped.wait(), 1.0)
        assert log == [("start", "a"), ("stop", "a")] and running == set()
        # And it does not come back while the other holds it.
        assert await store.leases.renew("poller:1", "node-a:1:x", time.time() + 60) is False
    finally:
        await a.stop(0)
        await store.close()


async def test_the_scheduler_renews_its_claims_while_an_attempt_runs(tmp_path, dns_server):
    """A remote that takes longer than the lease: the claim is renewed, so no other process takes it
    over, and the recipient is sent once."""
    from tests.support.delivery import delivering_daemon, enqueue, publish_mx, wait_events
    from tests.support.sink import mail_sink

    lease = 0.3
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        go = sink.stall("bob@dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, {"delivery": {"claim_lease": lease}}) as (d, setup):
            qid = await enqueue(d, setup, ["bob@dest.test"])
            await sink.wait_until(lambda s: s.stalled == 1)
            claimed_at = time.time()
            await asyncio.sleep(lease * 2)   # the lease would have run out twice without renewals
            [(rid, holder)] = (await d.store.db.read(_claims)).items()
            assert holder == d.daemon.scheduler.token
            until = await d.store.db.read(lambda conn: conn.execute("SELECT claim_until FROM recipients WHERE id = ?", (rid,)).fetchone()[0])
            assert until > claimed_at + lease
            other = await d.store.delivery.claim("elsewhere:1:x", 100, lease=60)
            assert other == [] and other.taken_over == {}
            go.set()
            await wait_events(d, qid, "delivered")
            assert len(sink.for_rcpt("bob@dest.test")) == 1
            assert await d.store.db.read(_claims) == {}
            assert d.daemon.metrics.registry.get_sample_value("gateway_delivery_claims_taken_over_total") == 0
