"""The delivery scheduler: the component that turns due queue rows into delivery attempts.

    dispatcher  woken by wake() (new mail) or every poll_interval -> claim due recipients (partial
                index; envelopes, no bodies) -> group them by message and destination (routes.py)
                -> in chunks: take each body's size from the memory budget, load the bodies, sign
                (work.py, on a thread) -> hand to the destination's lane
    lanes       lanes.py: at most `per_destination` per destination and `workers` in all
    attempt     attempt.py: one work item over its route within a time budget; each transaction's
                replies kept as they come
    record      outcomes.py decides (classify, DSN); the accepted recipients of a transaction are
                written at once, the rest when the attempt ends; a failed write is retried, never
                turned into a resend; report.py logs and counts what was written

Claims are leases (delivery.claim_lease): ``_renew`` extends all of this process's claims in one
write every third of the lease while any is in flight; a process that stops renewing (dead, hung)
has its claims taken over by the next claim of any process or node once the lease ran out, and its
late record, if it comes, changes nothing (logged, counted). At start the scheduler releases only its
own node's claims (``release_at_start``; a worker process leaves that to its parent).

The promise: every claimed recipient is either recorded or released, on every path (a store
failure while routing or loading, our own exception, the time budget, a shutdown). A recipient the
remote accepted is recorded as delivered, whatever happens to the rest of its work item. When
delivery stops moving while work is due, ``problems()`` says so and /health answers 503.

Failure policy: what a remote or the network says is classified per recipient (2xx delivered,
4xx/unknown deferred with backoff, 5xx bounced; expiry after the message lifetime bounces). An
exception from our own code (signing, routing, building) holds the recipients it concerns with the
reason. A store that fails between claim and send releases the claims, to be tried at the next poll.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import structlog

from ..budget import ByteBudget
from ..config import Config
from ..errors import StorageFull
from ..lifecycle import Component
from ..metrics import Metrics
from ..node import default_node, token as new_token
from ..remotes import GuardedResolver
from ..store import Store
from ..store.delivery import Dsn, Outcome
from ..store.queue import QueueIds
from ..unsubscribe.links import Keyring, Links
from .attempt import Attempts
from .courier import SessionPool
from .dkim import Signer
from .lanes import Lanes
from .loops import LoopGuard
from .mx import MxResolver
from .outcomes import classify, conclude, held, make_dsn, suppressed, without_dsn
from .reply import Reply
from .report import StallWatch, report
from .routes import Routes
from .work import SIGN_CHUNK, Work, prepare_all

log = structlog.get_logger("delivery")

# A failed outcome write is retried (the attempt is not repeated): first after this, doubling to the cap.
RECORD_RETRY_FIRST = 0.1
RECORD_RETRY_MAX = 5.0


class Scheduler(Component):
    name = "delivery"

    def __init__(self, store: Store, config: Config, metrics: Metrics, *, resolver: MxResolver | None = None,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 budget: ByteBudget | None = None, own_addresses: Callable[[], Iterable[str]] = lambda: (),
                 links: Links | None = None, node: str = "", token: str | None = None, release_at_start: bool = True):
        self.store = store
        self.budget = budget or ByteBudget(config.daemon.memory_budget)
        self.config = config
        self.metrics = metrics
        self.resolver = resolver or MxResolver(config.dns)
        self.clock = clock
        self.rand = rand
        self.signer = Signer()
        self.links = links or Links(Keyring(store), lambda: self.config)
        # The claims' owner: <node>:<pid>:<random> (gateway/node.py), or the one a pipeline worker's
        # parent chose for it. A worker passes release_at_start=False: the others' claims are live;
        # the parent released the node's before it started any, and releases a dead worker's token.
        self.node = node or config.daemon.node_id or default_node()
        self.token = token or new_token(self.node)
        self.release_at_start = release_at_start
        self.pool = SessionPool(config.delivery.idle_timeout, config.delivery.messages_per_connection)
        self.routes = Routes(store)
        self.guard = LoopGuard(allow_loopback=config.delivery.allow_loopback, own=own_addresses)
        self.attempts = Attempts(lambda: self.config, self.pool, self.resolver, lambda: self._http, self.guard)
        self.lanes = Lanes(self._deliver, lambda: (self.config.delivery.workers, self.config.delivery.per_destination),
                           self._lane_done)
        self.watch = StallWatch(config.delivery.stall_after)
        self._ids = QueueIds()
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task | None = None
        self._renewer: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        self._inflight = 0                  # claimed recipients not yet recorded or released
        self._sending = 0                   # attempts running now
        self._due = False                   # the last claim found work
        self._more_due = False              # ... as much as it asked for: there is more
        self._unreleased: set[int] = set()  # claims whose release failed: retried before the next claim
        self._writes: set[asyncio.Task] = set()
        self._record_deadline: float | None = None  # loop time after which failed writes are given up (shutdown)
        self._stale_claims = False  # claims of a previous process still to release (the disk was full at start)
        # DKIM signing runs here, off the event loop: the RSA operation (OpenSSL) releases the GIL,
        # so it uses the second core while the loop serves submission and SMTP sessions.
        self._sign_pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ component

    async def start(self) -> None:
        try:
            await self._release_stale()
        except StorageFull:
            # A full disk must not stop the start (operators need the admin socket): the first
            # dispatch that can write releases them, before it claims anything.
            self._stale_claims = True
        # A SendGrid connector's base_url is the tenant's: its name may resolve nowhere remotes.py allows.
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            resolver=GuardedResolver(lambda: self.config.delivery.allow_loopback, "delivery.allow_loopback")))
        self._sign_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dkim-sign")
        self._dispatcher = asyncio.get_running_loop().create_task(self._run(), name="delivery-dispatcher")
        self._renewer = asyncio.get_running_loop().create_task(self._renew(), name="delivery-leases")

    async def stop(self, deadline: float) -> None:
        self._stopping = True
        self._record_deadline = deadline
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        # The renewer goes on while the lanes drain: their claims must not lapse before they are recorded.
        for work in self.lanes.take_waiting():  # not started: their claims are released below
            self._finish(work)
        # Lanes cut off at the deadline record what their remote already answered (see _deliver).
        await self.lanes.drain(max(0.0, deadline - asyncio.get_running_loop().time()))
        if self._writes:
            # Outcomes of attempts already made: let them commit (bounded by the writer, not the network).
            await asyncio.gather(*list(self._writes), return_exceptions=True)
        if self._sign_pool is not None:
            self._sign_pool.shutdown(wait=True)
            self._sign_pool = None
        await self.pool.close_all()
        if self._http is not None:
            await self._http.close()
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        try:
            released = await self.store.delivery.release(self.token)
        except Exception:  # noqa: BLE001 - the next start releases them anyway
            log.exception("delivery_release_failed")
        else:
            if released:
                log.info("delivery_claims_released", recipients=released, why="shutdown")

    async def reload(self, config: Config) -> None:
        self.config = config
        self.pool.idle_timeout = config.delivery.idle_timeout
        self.pool.max_messages = config.delivery.messages_per_connection
        self.guard.allow_loopback = config.delivery.allow_loopback
        self.watch.after = config.delivery.stall_after
        self.routes.clear()
        self.signer.forget()   # a key file replaced in place is read again now (dkim.py)

    def status(self) -> dict[str, Any]:
        return {"delivery": {"in_flight": self._inflight, "lanes": len(self.lanes.tasks), "sending": self._sending,
                             "waiting_for_lane": self.lanes.waiting, "idle_connections": self.pool.idle,
                             "budget_bytes": self.budget.in_use}}

    def problems(self) -> list[str]:
        """Why delivery is not healthy (for /health): a stall, with its reason; [] when fine."""
        if self._stopping or self._dispatcher is None:
            return []
        return self.watch.problems(claimed=self._inflight + len(self._unreleased), due=self._due, sending=self._sending)

    def wake(self, *_: Any) -> None:
        """New mail is due: claim it now rather than at the next poll. Cheap; call it after every commit."""
        self._wake.set()

    # ------------------------------------------------------------------ dispatcher

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._retry_releases()
                await self._fill()
            except asyncio.CancelledError:
                raise
            except StorageFull:
                pass  # the store logs the episode once, reports it in /health and wakes us when it ends
            except Exception as exc:  # noqa: BLE001 - the store failing: try again at the next poll
                log.exception("delivery_claim_failed")
                self.watch.failed(f"claiming due work failed: {type(exc).__name__}: {exc}")
            self.pool.sweep()
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.delivery.poll_interval)
            except TimeoutError:
                pass

    async def _release_stale(self) -> None:
        if not self.release_at_start:
            self._stale_claims = False
            return
        released = await self.store.delivery.release_node(self.node)
        self._stale_claims = False
        if released:
            log.info("delivery_claims_released", recipients=released, why="left claimed by a previous process of this node")

    async def _renew(self) -> None:
        """Every third of the lease: extend all of our claims in one write (none in flight: no write)."""
        while True:
            lease = self.config.delivery.claim_lease
            await asyncio.sleep(lease / 3)
            if not (self._inflight or self._unreleased or self._writes):
                continue
            try:
                await self.store.delivery.renew(self.token, self.clock() + lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - tried again a third of the lease later; two more chances
                log.warning("delivery_lease_renew_failed", error=f"{type(exc).__name__}: {exc}")
                self.watch.failed(f"renewing claim leases failed: {type(exc).__name__}: {exc}")

    def _taken_over(self, taken: dict[str, int]) -> None:
        for holder, n in taken.items():
            self.metrics.claims_taken_over.inc(n)
            log.warning("delivery_claims_taken_over", recipients=n, holder=holder, why="its lease ran out")

    async def _fill(self) -> None:
        cfg = self.config.delivery
        if self._stale_claims:
            await self._release_stale()
        while not self._stopping:
            room = cfg.max_inflight - self._inflight
            if room <= 0:
                return
            want = min(cfg.claim_batch, room)
            rows = await self.store.delivery.claim(self.token, want, self.clock(), lease=cfg.claim_lease)
            if rows.taken_over:
                self._taken_over(rows.taken_over)
            self._more_due = len(rows) == want
            self._due = bool(rows)
            if not rows:
                if not self._inflight and not self._unreleased:
                    self.watch.moved()  # nothing due and nothing held: idle, not stalled
                return
            self._inflight += len(rows)
            rows = await self._skip_suppressed(rows)
            await self._dispatch(rows)
            if not self._more_due:
                return

    async def _skip_suppressed(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Recipients suppressed since their message was queued are recorded 'suppressed', not sent.
        The RCPT check already ran at submission: if this second look fails, the mail goes out."""
        by_message: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            by_message.setdefault(row["message"]["id"], []).append(row)
        # One read for the whole claim: a read per message, one after the other, held delivery to
        # about 110 msg/s (scripts/bench_e2e.py, 20 sessions; 270 msg/s with this one read).
        try:
            suppressed_now = await self.store.suppressions.filter_many(
                [(g[0]["message"]["tenant_id"], g[0]["message"]["usecase_id"], [(r["id"], r["rcpt"]) for r in g])
                 for g in by_message.values()])
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("suppression_check_failed", recipients=len(rows), error=f"{type(exc).__name__}: {exc}")
            suppressed_now = {}
        if not suppressed_now:
            return rows
        keep: list[dict[str, Any]] = []
        for group in by_message.values():
            msg = group[0]["message"]
            found = {r["id"]: suppressed_now[r["id"]] for r in group if r["id"] in suppressed_now}
            if not found:
                keep += group
                continue
            keep += [r for r in group if r["id"] not in found]
            done = [r for r in group if r["id"] in found]
            outcomes = suppressed(done, found)
            try:
                await self.store.delivery.record(self.token, msg["tenant_id"], msg["queue_id"], outcomes, None, self.clock())
            except Exception:  # noqa: BLE001 - released: the next claim checks them again
                log.exception("suppressed_record_failed", queue_id=msg["queue_id"])
                await self._release([r["id"] for r in done])
            self._inflight -= len(done)
            for o in outcomes:
                log.info("suppressed", queue_id=msg["queue_id"], **o.event)
        return keep

    async def _dispatch(self, rows: list[dict[str, Any]]) -> None:
        """Group, budget, load, sign and hand to lanes; whatever is not handed over is released."""
        handed: set[int] = set()
        works: list[Work] = []
        try:
            groups: dict[tuple, Work] = {}
            verp_key = await self.links.keyring.signing()   # one key signs the whole claim's return paths
            for row in rows:
                msg = row.pop("message")
                route = await self.routes.get(msg["usecase_id"], msg["tenant_id"])
                dest = route.destination(row["domain"])
                # List-Unsubscribe names one recipient: such a copy is its own work item (not for DSNs).
                own = route.unsubscribe is not None and bool(msg["mail_from"])
                key = (msg["id"], dest, row["id"] if own else None)
                work = groups.get(key)
                if work is None:
                    work = groups[key] = Work(dest, msg, [], route, verp_key=verp_key)
                    if own:
                        work.fields = await self.links.fields(route.unsubscribe, msg["tenant_id"], row["rcpt"], route.domain)
                work.rcpts.append(row)
            works = list(groups.values())
            i = 0
            while i < len(works):
                chunk: list[Work] = []
                while i < len(works) and len(chunk) < SIGN_CHUNK:
                    work = works[i]
                    need = work.size if work.route.kind != "problem" else 0
                    if need and chunk and not self.budget.fits(need):
                        break  # hand over what this chunk holds before waiting, or it would wait on itself
                    if need:
                        await self.budget.acquire(need)
                        work.budgeted = need
                    chunk.append(work)
                    i += 1
                await self._prepare(chunk)
                for work in chunk:
                    self.lanes.add(work)
                    handed.update(r["id"] for r in work.rcpts)
                self.lanes.start()
        except BaseException as exc:
            left = [r["id"] for r in rows if r["id"] not in handed]
            for work in works:
                if work.budgeted and work.rcpts[0]["id"] not in handed:
                    self.budget.release(work.budgeted)
                    work.budgeted = 0
            self._inflight -= len(left)
            if isinstance(exc, Exception):
                log.warning("delivery_claims_released", recipients=len(left), why=f"dispatch failed: {type(exc).__name__}: {exc}")
                await self._release(left)
            else:
                self._unreleased.update(left)  # cancelled (shutdown): stop() releases every claim of ours
            raise

    async def _prepare(self, chunk: list[Work]) -> None:
        ids = [w.message["id"] for w in chunk if w.route.kind != "problem"]
        bodies = await self.store.delivery.bodies(ids) if ids else {}
        if self._sign_pool is None:
            prepare_all(chunk, bodies, self.signer)
        else:
            await asyncio.get_running_loop().run_in_executor(self._sign_pool, prepare_all, chunk, bodies, self.signer)

    async def _release(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            await self.store.delivery.release(self.token, ids)
        except Exception as exc:  # noqa: BLE001 - kept, and retried before the next claim
            self._unreleased.update(ids)
            self.watch.failed(f"releasing {len(ids)} claims failed: {type(exc).__name__}: {exc}")
            log.exception("delivery_release_failed", recipients=len(ids))

    async def _retry_releases(self) -> None:
        if not self._unreleased:
            return
        ids = list(self._unreleased)
        await self.store.delivery.release(self.token, ids)
        self._unreleased.difference_update(ids)
        log.info("delivery_claims_released", recipients=len(ids), why="retried after a failed release")

    def _lane_done(self) -> None:
        if self._more_due and not self._stopping and self._inflight < self.config.delivery.max_inflight // 2:
            self._wake.set()

    # ------------------------------------------------------------------ one work item

    async def _deliver(self, work: Work) -> None:
        """A lane's step: attempt, then record. Never raises for the item's own trouble."""
        work.started = time.monotonic()
        self._sending += 1
        self.watch.moved()
        failure = interrupted = ""
        try:
            if work.route.kind == "problem":
                failure = work.route.problem
            elif work.error is not None:
                log.error("delivery_internal_error", queue_id=work.queue_id, exc_info=work.error)
                failure = f"internal error: {type(work.error).__name__}: {work.error}"
            else:
                await self.attempts.run(work, self._transaction_done)
        except asyncio.CancelledError:
            interrupted = "delivery interrupted by shutdown"
            raise
        except Exception as exc:  # noqa: BLE001 - our own failure: hold what the remote did not answer
            log.exception("delivery_internal_error", queue_id=work.queue_id)
            failure = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._sending -= 1
            try:
                self._conclude(work, failure=failure, interrupted=interrupted)
            except Exception as exc:  # noqa: BLE001 - a bug in deciding: still record, never leak the claims
                log.exception("delivery_conclude_failed", queue_id=work.queue_id)
                outcomes = held(work.rows_left(), f"internal error recording the attempt: {type(exc).__name__}: {exc}")
                work.recorded.update(o.recipient_id for o in outcomes)
                self._write(work, outcomes, None, last=True)

    def _transaction_done(self, work: Work, got: dict[str, Reply]) -> None:
        """A transaction ended: write its accepted recipients now, shrinking the window in which a
        crash after the remote's 250 would send them again."""
        rows = [r for r in work.rows_left() if r["rcpt"] in got and got[r["rcpt"]].outcome == "delivered"]
        if not rows:
            return
        outcomes, _ = classify(work, rows, got, now=self.clock(), duration=time.monotonic() - work.started,
                               config=self.config.delivery, rand=self.rand)
        work.recorded.update(r["id"] for r in rows)
        self._write(work, outcomes, None, last=False)

    def _conclude(self, work: Work, *, failure: str, interrupted: str) -> None:
        outcomes, failed = conclude(work, now=self.clock(), duration=time.monotonic() - work.started,
                                    config=self.config.delivery, rand=self.rand, failure=failure, interrupted=interrupted)
        dsn = None
        if failed and work.message["mail_from"]:
            try:
                host = self.config.daemon.hostname
                dsn = make_dsn(work, failed, now=self.clock(), hostname=host, ids=self._ids,
                               sender=self.config.delivery.dsn_sender or f"MAILER-DAEMON@{host}")
            except Exception as exc:  # noqa: BLE001 - only the bounced recipients wait for it
                log.exception("delivery_dsn_failed", queue_id=work.queue_id)
                outcomes = without_dsn(outcomes, exc)
        work.recorded.update(o.recipient_id for o in outcomes)
        self._write(work, outcomes, dsn, last=True)

    # ------------------------------------------------------------------ recording

    def _write(self, work: Work, outcomes: list[Outcome], dsn: Dsn | None, *, last: bool) -> None:
        # The lane goes on with its next message while this waits for its group commit: the
        # recipients stay claimed until then (a crash before it releases them, and they are tried again).
        earlier = list(work.writes) if last else []
        task = asyncio.get_running_loop().create_task(self._record(work, outcomes, dsn, earlier, last))
        work.writes.append(task)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record(self, work: Work, outcomes: list[Outcome], dsn: Dsn | None, earlier: list[asyncio.Task], last: bool) -> None:
        try:
            if earlier:
                await asyncio.gather(*earlier, return_exceptions=True)
            if outcomes or dsn is not None:
                result = await self._commit(work, outcomes, dsn)
                if result is not None and result.get("ignored"):
                    # Our claim was taken over (we did not renew in time): the other holder records these.
                    self.metrics.records_ignored.inc(len(result["ignored"]))
                    log.warning("delivery_record_ignored", queue_id=work.queue_id, recipients=len(result["ignored"]),
                                why="the claim is no longer ours (released or taken over after its lease)")
                if result is not None:
                    self.watch.moved()
                    report(self.metrics, work, outcomes, result, self.clock())
                    if result.get("dsn"):
                        self.wake()
        finally:
            if last:
                self._finish(work)

    async def _commit(self, work: Work, outcomes: list[Outcome], dsn: Dsn | None) -> dict[str, Any] | None:
        """Write the outcomes, retrying a failed write with backoff: the claims stay ours meanwhile, so
        nobody sends these recipients again. Gives up (None) only past the shutdown deadline."""
        loop = asyncio.get_running_loop()
        delay, failures = RECORD_RETRY_FIRST, 0
        msg = work.message
        while True:
            try:
                return await self.store.delivery.record(self.token, msg["tenant_id"], msg["queue_id"], outcomes, dsn, self.clock())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - store trouble: keep the outcome, try the write again
                failures += 1
                self.watch.failed(f"recording outcomes failed: {type(exc).__name__}: {exc}")
                if failures == 1:
                    log.exception("delivery_record_failed", queue_id=msg["queue_id"], recipients=len(outcomes), will="retry")
                elif failures % 10 == 0:
                    log.warning("delivery_record_failed", queue_id=msg["queue_id"], failures=failures, error=str(exc))
                if self._record_deadline is not None and loop.time() >= self._record_deadline:
                    log.error("delivery_record_abandoned", queue_id=msg["queue_id"], recipients=len(outcomes),
                              why="shutting down while the store fails; the next start tries them again")
                    return None
                wait = delay if self._record_deadline is None else max(0.0, min(delay, self._record_deadline - loop.time()))
                if isinstance(exc, StorageFull):
                    # The disk is full: try again as soon as the episode ends, not at the next backoff step
                    # (still bounded by it, and by the shutdown deadline).
                    wait = RECORD_RETRY_MAX if self._record_deadline is None else max(0.0, self._record_deadline - loop.time())
                    try:
                        await asyncio.wait_for(self.store.db.wait_writable(), wait)
                    except TimeoutError:
                        pass
                    continue
                await asyncio.sleep(wait)
                delay = min(delay * 2, RECORD_RETRY_MAX)

    def _finish(self, work: Work) -> None:
        """The work item is done with (recorded, or given up at shutdown): its claims and budget go back."""
        if work.finished:
            return
        work.finished = True
        if work.budgeted:
            self.budget.release(work.budgeted)
            work.budgeted = 0
        self._inflight -= len(work.rcpts)
        if self._more_due and not self._stopping and self._inflight < self.config.delivery.max_inflight // 2:
            self._wake.set()
