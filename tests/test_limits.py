"""Limits shared by every process on one store (issue 11): rate limits, AUTH cool-downs, monthly
quotas, counted in the store (gateway/store/limits.py, usage_monthly), not in one process's memory.

Two handles on one file, as a second worker process has: the daemon's store and a ``secondary``;
and one test with a real second process taking tokens at the same time.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import SubmissionConfig
from gateway.errors import SMTPError
from gateway.store import Store
from gateway.store.limits import Limits
from gateway.store.queue import NewMessage, QueueIds
from gateway.submission.ratelimit import AuthCooldown, RateLimiter, TtlCache, chunk_size
from gateway.submission.submit import Submitter
from tests.support.submission import make_usecase

ROOT = Path(__file__).resolve().parent.parent

# The second process: opens the daemon's store as a secondary, says so, waits for "go", then asks
# for a token `tries` times as fast as it can and prints how many it got.
TAKER = """
import asyncio, sys
from pathlib import Path
from gateway.store import Store
from gateway.submission.ratelimit import RateLimiter

async def main(path, per_minute, tries):
    store = await Store.open(Path(path), secondary=True)
    try:
        rates = RateLimiter(shared=store.limits, scope="usecase")
        print("ready", flush=True)
        sys.stdin.readline()
        got = 0
        for _ in range(tries):
            got += await rates.allow(7, per_minute)
        await rates.close()
        print(got, flush=True)
    finally:
        await store.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


async def _barrier(store: Store) -> None:
    """Every write queued on this handle before now is committed (the writer's queue is FIFO)."""
    await store.db.write(lambda conn: None)


@pytest.fixture
async def two(tmp_path):
    primary = await Store.open(tmp_path / "gateway.db")
    secondary = await Store.open(tmp_path / "gateway.db", secondary=True)
    try:
        yield primary, secondary
    finally:
        await secondary.close()
        await primary.close()


async def test_a_rate_limit_holds_across_two_processes(tmp_path):
    """60 a minute for a use case, two processes asking at once: 60 between them (plus what refills
    while they ask), where each process used to get its own 60."""
    per_minute, tries = 60, 150
    store = await Store.open(tmp_path / "gateway.db")
    try:
        with subprocess.Popen([sys.executable, "-c", TAKER, str(tmp_path / "gateway.db"), str(per_minute), str(tries)],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
            try:
                assert await asyncio.to_thread(child.stdout.readline) == "ready\n"
                rates = RateLimiter(shared=store.limits, scope="usecase")
                began = time.monotonic()
                child.stdin.write("go\n")
                child.stdin.flush()
                got = 0
                for _ in range(tries):
                    got += await rates.allow(7, per_minute)
                    await asyncio.sleep(0)   # let the writer's replies in: the child asks meanwhile
                theirs = int(await asyncio.to_thread(child.stdout.readline))
                elapsed = time.monotonic() - began
                assert await asyncio.to_thread(child.wait, 30) == 0
            finally:
                if child.poll() is None:
                    child.kill()
        refilled = math.ceil(elapsed * per_minute / 60.0)
        assert per_minute <= got + theirs <= per_minute + refilled, (got, theirs, elapsed)
    finally:
        await store.close()


async def test_tokens_held_by_a_process_that_stops_go_back_to_the_others(two):
    primary, secondary = two
    first, second = RateLimiter(shared=primary.limits, scope="usecase"), RateLimiter(shared=secondary.limits, scope="usecase")
    assert chunk_size(1.0, 60.0) == 6
    assert await first.allow(1, 60)                    # takes a chunk of 6, spends one
    got = 0
    while await second.allow(1, 60):
        got += 1
    assert 54 <= got <= 56                             # 60 - the 6 the first holds (+ a refill of a token or two)
    await first.close()                                # the 5 it holds go back
    more = 0
    second.clock = lambda: time.monotonic() + 3600     # past the wait the store gave when it was empty
    while await second.allow(1, 60):
        more += 1
    assert 5 <= more <= 7


async def test_an_exhausted_bucket_is_not_asked_again_before_a_token_is_due(two):
    """A refused caller costs no write: the store said when the next token comes."""
    primary, _ = two
    rates = RateLimiter(shared=primary.limits, scope="usecase")
    while await rates.allow(2, 60):
        pass
    writes = primary.db.writes
    assert not any([await rates.allow(2, 60) for _ in range(100)])
    assert primary.db.writes == writes


async def test_an_api_failure_limiter_counts_every_failure_for_every_process(two):
    primary, secondary = two
    first = RateLimiter(shared=primary.limits, scope="apifail", exact=True)
    second = RateLimiter(shared=secondary.limits, scope="apifail", exact=True)
    waits = [await (first if i % 2 else second).wait("192.0.2.1", 0.1, 4.0) for i in range(6)]
    assert waits[:4] == [0.0] * 4 and all(w > 0 for w in waits[4:])


async def test_an_auth_cooldown_started_through_one_handle_is_seen_by_the_other(two):
    primary, secondary = two
    here = AuthCooldown(3, 60.0, address_limit=5, shared=primary.limits)
    there = AuthCooldown(3, 60.0, address_limit=5, shared=secondary.limits)
    assert not here.failed(await here.begin("192.0.2.1", "app"))
    assert not here.failed(await here.begin("192.0.2.1", "app"))
    await _barrier(primary)
    # The third failure, in the other process: the login is blocked there and here. ``begin`` reads
    # the store (before any password is checked); ``blocked`` then knows it too.
    assert there.failed(await there.begin("192.0.2.1", "app"))
    await _barrier(secondary)
    assert not here.blocked("192.0.2.1", "app")          # nothing read yet: this process's own count
    assert await here.begin("192.0.2.1", "app") is None and here.blocked("192.0.2.1", "app")
    assert not here.blocked("192.0.2.1")
    # The address limit (5) counts every username, whichever process saw it: 3 so far, 4, 5.
    assert not here.failed(await here.begin("192.0.2.1", "other"))
    assert here.failed(await here.begin("192.0.2.1", "x")) and here.blocked("192.0.2.1")
    await _barrier(primary)
    assert await there.begin("192.0.2.1", "y") is None and there.blocked("192.0.2.1")
    assert not there.blocked("192.0.2.2")


async def test_a_failure_counts_once_in_its_own_process_before_and_after_its_write(two):
    """failed() queues its write; the process counts its own failures itself and reads only the
    others' from the store, so a failure counts once whether or not its write has committed."""
    primary, _ = two
    cool = AuthCooldown(2, 60.0, shared=primary.limits)
    cool.failed(cool.reserve("192.0.2.7", "app"))
    assert not cool.blocked("192.0.2.7", "app")        # one failure, counted here or there, not twice
    await _barrier(primary)
    assert not cool.blocked("192.0.2.7", "app")
    assert cool.failed(cool.reserve("192.0.2.7", "app"))
    assert cool.blocked("192.0.2.7", "app")


def _submitters(*stores: Store) -> list[Submitter]:
    """Submission's MAIL/RCPT/DATA rules, one per process, each on its own handle (as the daemon wires them)."""
    return [Submitter(SubmissionConfig(), context=s.usecases.context, submit=s.queue.put, monthly_count=s.queue.monthly_count,
                      lifetime=3600.0, limits=s.limits) for s in stores]


async def test_the_monthly_quota_counts_what_every_process_accepted(two):
    """A tenant's quota of 5: three messages through one handle, two through the other; the next
    MAIL, on either, is refused (each process's tracker used to cache the count for 30 seconds)."""
    primary, secondary = two
    ctx = await make_usecase(primary, monthly_quota=5)
    submitters = _submitters(primary, secondary)
    ids = QueueIds()
    for i in range(5):
        sub, store = submitters[i % 2], (primary, secondary)[i % 2]
        await sub.mail(ctx["id"], "app@example.com")
        qid = ids.new()
        await store.queue.put(NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["id"], mail_from="app@example.com",
                                         message_id=f"{qid}@example.com", body=b"Subject: x\r\n\r\nhi\r\n", recipients=["b@example.org"]))
        sub.quota.accepted(ctx["tenant_id"])
    for sub in submitters:
        with pytest.raises(SMTPError) as refused:
            await sub.mail(ctx["id"], "app@example.com")
        assert refused.value.code == 452 and refused.value.enhanced == "4.5.3"


async def test_a_use_cases_rate_limit_is_one_budget_for_every_process(two):
    """3 a minute: two MAILs through one process and one through the other spend it; the next MAIL
    is refused in both (451 4.7.0), where each process used to allow its own 3."""
    primary, secondary = two
    ctx = await make_usecase(primary, rate_limit=3)
    here, there = _submitters(primary, secondary)
    for sub in (here, there, here):
        await sub.mail(ctx["id"], "app@example.com")
    for sub in (here, there):
        with pytest.raises(SMTPError) as refused:
            await sub.mail(ctx["id"], "app@example.com")
        assert (refused.value.code, refused.value.enhanced) == (451, "4.7.0")


async def test_the_shared_tables_are_bounded(tmp_path):
    """Rows go once they say nothing (a bucket full again, a failure or block past its cool-down),
    and a table past max_rows loses the rows nearest to expiring first."""
    primary = await Store.open(tmp_path / "gateway.db")
    try:
        limits = Limits(primary.db, max_rows=10)
        t0 = time.time()
        for i in range(30):   # k{i} is full again i + 1 seconds from t0
            assert await limits.take(f"k{i}", i + 1, 1.0, 100.0, now=t0) == (i + 1, 0.0)
        assert await limits.failed_soon([("auth a", 3), ("auth b", 3)], 60.0, now=t0) == []
        assert await limits.counts() == {"rate_buckets": 30, "auth_failures": 2, "auth_blocks": 0}
        await limits.sweep(now=t0 + 0.5)                                # none is full again yet: only the cap
        assert (await limits.counts())["rate_buckets"] == 10
        assert await limits.take("k29", 100, 1.0, 100.0, now=t0 + 0.5) == (70, 0.0)   # kept: 30 taken, half a token back
        assert await limits.take("k0", 100, 1.0, 100.0, now=t0 + 0.5) == (100, 0.0)   # forgotten: a full bucket
        await limits.sweep(now=t0 + 120.0)                              # every bucket full, every failure old
        assert await limits.counts() == {"rate_buckets": 0, "auth_failures": 0, "auth_blocks": 0}
        # A sweep rides along with a write at most every sweep_every seconds: no table grows unswept.
        limits.sweep_every = 0.0
        await limits.take("old", 1, 1.0, 1.0, now=t0 + 200.0)
        await limits.take("new", 1, 1.0, 1.0, now=t0 + 210.0)
        assert (await limits.counts())["rate_buckets"] == 1
    finally:
        await primary.close()


async def test_a_store_that_cannot_write_leaves_the_limit_to_the_process(tmp_path):
    """A full disk or a closed store refuses no mail by itself: the process's own bucket limits the
    key meanwhile (as before the limits were shared), and the store is asked again after STORE_RETRY."""
    store = await Store.open(tmp_path / "gateway.db")
    rates = RateLimiter(shared=store.limits, scope="usecase")
    await store.close()
    assert [await rates.allow(3, 3) for _ in range(4)] == [True, True, True, False]


async def test_a_bucket_at_its_limit_is_taken_from_a_few_tokens_at_a_time(two):
    """Spent as fast as it refills, a bucket would cost a write per token: below ``least`` tokens the
    store gives none and says when there will be that many."""
    primary, _ = two
    t0 = time.time()
    assert await primary.limits.take("usecase 9", 10, 1.0, 10.0, now=t0) == (10, 0.0)
    assert await primary.limits.take("usecase 9", 10, 1.0, 10.0, least=3, now=t0 + 1.5) == (0, 1.5)
    assert await primary.limits.take("usecase 9", 10, 1.0, 10.0, least=3, now=t0 + 3.0) == (3, 0.0)


async def test_a_policy_view_missed_by_many_requests_at_once_is_fetched_once():
    # When an entry runs out under load every request in flight misses it together; before, each
    # fetched its own copy (50 store reads where one does).
    fetched: list[int] = []
    gate = asyncio.Event()

    async def load(key: int) -> dict:
        fetched.append(key)
        await gate.wait()
        return {"usecase": key}

    cache = TtlCache(load, ttl=5.0)
    waiters = [asyncio.ensure_future(cache.get(7)) for _ in range(50)]
    await asyncio.sleep(0)   # every waiter has missed and is waiting for the fetch
    waiters[0].cancel()      # one client gone: the others' fetch goes on
    gate.set()
    got = await asyncio.gather(*waiters[1:])
    assert fetched == [7] and got == [{"usecase": 7}] * 49
    assert await cache.get(7) == {"usecase": 7} and fetched == [7]   # then from the cache
