"""The delivery pieces alone: outcomes (pure), lanes (with a plain coroutine as the delivery), the
stall watch (with a settable clock)."""

from __future__ import annotations

import asyncio

from gateway.config import DeliveryConfig
from gateway.delivery.lanes import Lanes
from gateway.delivery.outcomes import conclude, without_dsn
from gateway.delivery.reply import Reply
from gateway.delivery.report import StallWatch
from gateway.delivery.routes import Route
from gateway.delivery.work import Work

CFG = DeliveryConfig(backoff_base=10.0, backoff_max=100.0, backoff_jitter=0.0)
NOW = 1_000_000.0


def work(*rcpts: str, expires_at: float = NOW + 3600, dest: tuple = ("direct", "dest.test")) -> Work:
    msg = {"id": 1, "queue_id": "01m8rfvx4d0bf4pd", "tenant_id": 1, "usecase_id": 1, "mail_from": "app@acme.test", "size": 10,
           "created_at": NOW - 5, "expires_at": expires_at}
    rows = [{"id": i + 1, "rcpt": r, "attempts": 0, "index": i} for i, r in enumerate(rcpts)]
    return Work(dest, msg, rows, Route("direct", 1, "acme.test"), verp_key=(1, b"k" * 32))


def states(outcomes) -> dict[int, str]:
    return {o.recipient_id: o.state for o in outcomes}


def test_conclude_keeps_what_the_remote_said_and_defers_the_rest_when_interrupted():
    w = work("a@dest.test", "b@dest.test", "c@dest.test")
    w.results = {"a@dest.test": Reply(250, "2.0.0", "ok"), "b@dest.test": Reply(550, "5.1.1", "no such user")}
    outcomes, failed = conclude(w, now=NOW, duration=1.0, config=CFG, rand=lambda: 0.0, interrupted="delivery interrupted by shutdown")
    assert states(outcomes) == {1: "delivered", 2: "bounced", 3: "deferred"}
    assert [f.rcpt for f in failed] == ["b@dest.test"]
    deferred = outcomes[2]
    assert "interrupted by shutdown" in deferred.reply and deferred.next_attempt_at == NOW + 10.0


def test_conclude_holds_only_the_unanswered_on_our_own_failure_and_skips_recorded_rows():
    w = work("a@dest.test", "b@dest.test", "c@dest.test")
    w.results = {"b@dest.test": Reply(250, "2.0.0", "ok")}
    w.recorded = {1}  # a's outcome was written already
    outcomes, _ = conclude(w, now=NOW, duration=1.0, config=CFG, rand=lambda: 0.0, failure="internal error: boom")
    assert states(outcomes) == {2: "delivered", 3: "held"}
    assert outcomes[1].hold_reason == "internal error: boom" and not outcomes[1].attempted


def test_a_deferral_past_the_lifetime_bounces():
    w = work("a@dest.test", expires_at=NOW - 1)
    w.results = {"a@dest.test": Reply(451, "4.7.1", "greylisted")}
    outcomes, failed = conclude(w, now=NOW, duration=1.0, config=CFG, rand=lambda: 0.0)
    assert states(outcomes) == {1: "bounced"} and failed[0].expired and failed[0].status == "4.7.1"


def test_without_dsn_holds_the_bounced_only():
    w = work("a@dest.test", "b@dest.test")
    w.results = {"a@dest.test": Reply(250, "2.0.0", "ok"), "b@dest.test": Reply(550, "5.1.1", "no")}
    outcomes, _ = conclude(w, now=NOW, duration=1.0, config=CFG, rand=lambda: 0.0)
    fixed = without_dsn(outcomes, UnicodeEncodeError("ascii", "ä", 0, 1, "no"))
    assert states(fixed) == {1: "delivered", 2: "held"} and "DSN" in fixed[1].hold_reason


async def test_lanes_respect_per_destination_and_total_limits():
    running: dict[tuple, int] = {}
    peak: dict[tuple, int] = {}
    total_peak = 0
    gate = asyncio.Event()
    done = []

    async def deliver(w: Work) -> None:
        nonlocal total_peak
        running[w.dest] = running.get(w.dest, 0) + 1
        peak[w.dest] = max(peak.get(w.dest, 0), running[w.dest])
        total_peak = max(total_peak, sum(running.values()))
        await gate.wait()
        running[w.dest] -= 1
        done.append(w)

    lanes = Lanes(deliver, lambda: (3, 2))
    for dest in ("a", "b"):
        for _ in range(4):
            lanes.add(work("x@dest.test", dest=("direct", dest)))
    lanes.start()
    await asyncio.sleep(0)
    assert len(lanes.tasks) == 3 and lanes.waiting == 5
    gate.set()
    while len(done) < 8:
        await asyncio.sleep(0.01)
    assert max(peak.values()) <= 2 and total_peak <= 3
    await lanes.drain(1.0)
    assert not lanes.tasks


def test_stall_watch():
    now = [0.0]
    watch = StallWatch(5.0, clock=lambda: now[0])
    now[0] = 10.0
    assert watch.problems(claimed=0, due=False, sending=0) == []           # idle is not a stall
    assert watch.problems(claimed=3, due=True, sending=1) == []            # an attempt is running
    [problem] = watch.problems(claimed=3, due=True, sending=0)
    assert "3 recipients claimed" in problem
    watch.failed("recording outcomes failed: disk I/O error")
    assert "disk I/O error" in watch.problems(claimed=3, due=False, sending=0)[0]
    watch.moved()
    assert watch.problems(claimed=3, due=True, sending=0) == []


async def test_time_budget_keeps_the_recipients_the_remote_accepted(dns_server):
    """One session, two VERP transactions: bob's gets its 250, carol's RCPT hangs past the attempt's
    time budget. bob's reply was handed over the moment it came; carol alone is deferred."""
    from gateway.delivery.attempt import Attempts
    from gateway.delivery.courier import SessionPool
    from gateway.delivery.loops import LoopGuard
    from gateway.delivery.mx import MxResolver
    from tests.support.daemon import make_config, merge
    from tests.support.delivery import FAST_RETRIES, publish_mx
    from tests.support.dns import dns_overrides
    from tests.support.sink import mail_sink

    class ShortBudget(Attempts):
        def budget(self, work: Work) -> float:
            return 1.0  # the real formula allows minutes; the mechanism is the same

    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        go = sink.stall("carol@dest.test")
        config = make_config(merge(dns_overrides(dns_server), {"delivery": {**FAST_RETRIES, "remote_port": sink.port}}))
        pool = SessionPool(0.0, 100)
        attempts = ShortBudget(lambda: config, pool, MxResolver(config.dns), lambda: None, LoopGuard(allow_loopback=True))
        w = work("bob@dest.test", "carol@dest.test")
        w.data = b"From: app@acme.test\r\nSubject: hi\r\n\r\nhello\r\n"
        seen: list[dict[str, Reply]] = []
        await attempts.run(w, lambda _w, got: seen.append(dict(got)))
        go.set()
        await pool.close_all()
    assert seen[0] == {"bob@dest.test": w.results["bob@dest.test"]} and w.results["bob@dest.test"].code == 250
    assert "did not finish within 1s" in w.results["carol@dest.test"].text
    outcomes, _ = conclude(w, now=NOW, duration=1.0, config=CFG, rand=lambda: 0.0)
    assert states(outcomes) == {1: "delivered", 2: "deferred"}
    assert [m.rcpt_tos for m in sink.messages] == [["bob@dest.test"]]
