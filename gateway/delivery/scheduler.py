"""The delivery scheduler: a component that turns due queue rows into delivery attempts.

    dispatcher: woken by wake() (new mail) or every poll_interval -> claim due recipients (partial
                index) -> group them by message and destination -> append to that destination's lane
    lanes:      at most `per_destination` per destination and `workers` in all; a lane takes the
                destination's work in order and sends it over one SMTP session (pooled, so the next
                lane to the same MX reuses it) -> classify each recipient -> record (one commit:
                attempts, states, events, DSN)

Failure policy: what a remote or the network says is classified per recipient (2xx delivered,
4xx/unknown deferred with backoff, 5xx bounced; expiry after the message lifetime bounces). An
exception from our own code (signing, routing, building) holds the recipients with the reason.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from .. import verp
from ..budget import ByteBudget
from ..config import Config
from ..errors import DeliveryError
from ..lifecycle import Component
from ..metrics import Metrics
from ..store import Store
from ..store.delivery import Dsn, Outcome
from ..store.queue import NewMessage, QueueIds
from .backoff import next_attempt
from .connectors import ConnectorSpec, SendGridCourier, relay_courier
from .courier import DirectCourier, Envelope, SessionOptions, SessionPool
from .dkim import Signer, SigningKey
from .dsn import FailedRecipient, build_dsn, failure_status
from .mx import MxResolver
from .reply import Reply

log = structlog.get_logger("delivery")

ROUTE_TTL = 10.0


@dataclass
class Route:
    kind: str                               # direct | smtp | sendgrid | problem
    tenant_id: int
    domain: str = ""                        # the use case's sending domain (DKIM d=, VERP)
    keys: list[SigningKey] = field(default_factory=list)
    connector: ConnectorSpec | None = None
    problem: str = ""                       # why this use case cannot be routed (kind 'problem')

    def destination(self, rcpt_domain: str) -> tuple:
        if self.kind == "direct":
            return ("direct", rcpt_domain)
        if self.connector is not None:
            return ("connector", self.connector.id)
        return ("problem", self.tenant_id)


@dataclass
class Work:
    dest: tuple
    message: dict[str, Any]
    rcpts: list[dict[str, Any]]
    route: Route
    data: bytes | None = None             # what goes on the wire (signed), prepared off the loop
    error: BaseException | None = None    # preparing it failed (e.g. a DKIM key): the lane holds the message


# Messages signed per call to the signing thread: one hand-off per chunk, and lanes start on the
# first chunk while the next is signed.
SIGN_CHUNK = 32


class Scheduler(Component):
    name = "delivery"

    def __init__(self, store: Store, config: Config, metrics: Metrics, *, resolver: MxResolver | None = None,
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 budget: ByteBudget | None = None):
        self.store = store
        self.budget = budget or ByteBudget(config.daemon.memory_budget)
        self.config = config
        self.metrics = metrics
        self.resolver = resolver or MxResolver(config.dns)
        self.clock = clock
        self.rand = rand
        self.signer = Signer()
        self.token = f"{config.daemon.hostname}:{os.getpid()}:{secrets.token_hex(4)}"
        self.pool = SessionPool(config.delivery.idle_timeout, config.delivery.messages_per_connection)
        self._ids = QueueIds()
        self._wake = asyncio.Event()
        self._stopping = False
        self._dispatcher: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None
        self._queues: dict[tuple, deque[Work]] = {}
        self._lanes: dict[tuple, int] = {}
        self._lane_tasks: set[asyncio.Task] = set()
        self._inflight = 0
        self._more_due = False
        self._routes: dict[int, tuple[float, Route]] = {}
        self._recording: set[asyncio.Task] = set()
        # DKIM signing runs here, off the event loop: the RSA operation (OpenSSL) releases the GIL,
        # so it uses the second core while the loop serves submission and SMTP sessions.
        self._sign_pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ component

    async def start(self) -> None:
        released = await self.store.delivery.release_all()
        if released:
            log.info("delivery_claims_released", recipients=released, why="left claimed by a previous process")
        self._http = aiohttp.ClientSession()
        self._sign_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dkim-sign")
        self._dispatcher = asyncio.get_running_loop().create_task(self._run(), name="delivery-dispatcher")

    async def stop(self, deadline: float) -> None:
        self._stopping = True
        self._wake.set()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        self._queues.clear()  # not started: their claims are released below
        if self._lane_tasks:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            _, pending = await asyncio.wait(set(self._lane_tasks), timeout=remaining)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._recording:
            # Outcomes of attempts already made: let them commit (bounded by the writer, not the network).
            await asyncio.gather(*list(self._recording), return_exceptions=True)
        if self._sign_pool is not None:
            self._sign_pool.shutdown(wait=True)
            self._sign_pool = None
        await self.pool.close_all()
        if self._http is not None:
            await self._http.close()
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
        self._routes.clear()

    def status(self) -> dict[str, Any]:
        return {"delivery": {"in_flight": self._inflight, "lanes": len(self._lane_tasks), "idle_connections": self.pool.idle}}

    def wake(self, *_: Any) -> None:
        """New mail is due: claim it now rather than at the next poll. Cheap; call it after every commit."""
        self._wake.set()

    # ------------------------------------------------------------------ dispatcher

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._fill()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the store failing: try again at the next poll
                log.exception("delivery_claim_failed")
            self.pool.sweep()
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.delivery.poll_interval)
            except TimeoutError:
                pass

    async def _fill(self) -> None:
        cfg = self.config.delivery
        while not self._stopping:
            room = cfg.max_inflight - self._inflight
            if room <= 0:
                return
            want = min(cfg.claim_batch, room)
            rows = await self.store.delivery.claim(self.token, want, self.clock())
            self._more_due = len(rows) == want
            if not rows:
                return
            self._inflight += len(rows)
            groups: dict[tuple, Work] = {}
            for row in rows:
                msg = row.pop("message")
                route = await self._route(msg["usecase_id"], msg["tenant_id"])
                dest = route.destination(row["domain"])
                work = groups.get((msg["id"], dest))
                if work is None:
                    work = groups[(msg["id"], dest)] = Work(dest, msg, [], route)
                work.rcpts.append(row)
            works = list(groups.values())
            for i in range(0, len(works), SIGN_CHUNK):
                chunk = works[i:i + SIGN_CHUNK]
                await self._prepare_chunk(chunk)
                for work in chunk:
                    self._queues.setdefault(work.dest, deque()).append(work)
                self._start_lanes()
            if not self._more_due:
                return

    def _start_lanes(self) -> None:
        cfg = self.config.delivery
        for dest, queue in list(self._queues.items()):
            while queue and len(self._lane_tasks) < cfg.workers and self._lanes.get(dest, 0) < min(cfg.per_destination, len(queue)):
                self._lanes[dest] = self._lanes.get(dest, 0) + 1
                task = asyncio.get_running_loop().create_task(self._lane(dest))
                self._lane_tasks.add(task)
                task.add_done_callback(self._lane_done)
            if len(self._lane_tasks) >= cfg.workers:
                return

    def _lane_done(self, task: asyncio.Task) -> None:
        self._lane_tasks.discard(task)
        if self._stopping:
            return
        self._start_lanes()
        if self._more_due and self._inflight < self.config.delivery.max_inflight // 2:
            self._wake.set()

    async def _lane(self, dest: tuple) -> None:
        try:
            while not self._stopping:
                queue = self._queues.get(dest)
                if not queue:
                    break
                work = queue.popleft()
                if not queue:
                    del self._queues[dest]
                await self._deliver(work)
        finally:
            left = self._lanes.get(dest, 1) - 1
            if left:
                self._lanes[dest] = left
            else:
                self._lanes.pop(dest, None)

    # ------------------------------------------------------------------ routing

    async def _route(self, usecase_id: int, tenant_id: int) -> Route:
        now = time.monotonic()
        hit = self._routes.get(usecase_id)
        if hit and hit[0] > now:
            return hit[1]
        route = await self._load_route(usecase_id, tenant_id)
        self._routes[usecase_id] = (now + ROUTE_TTL, route)
        return route

    async def _load_route(self, usecase_id: int, tenant_id: int) -> Route:
        info = await self.store.delivery.routing(usecase_id)
        if info is None:
            return Route("problem", tenant_id, problem=f"use case {usecase_id} no longer exists")
        keys = [SigningKey(info["domain"], k["selector"], k["algorithm"], k["key_path"]) for k in info["keys"]]
        route = info["route"] or "direct"
        if route == "direct":
            return Route("direct", tenant_id, info["domain"], keys)
        kind, _, name = route.partition(":")
        if kind != "connector" or not name:
            return Route("problem", tenant_id, problem=f"use case {info['name']!r} has an unknown route {route!r}")
        spec = await self.store.connectors.spec(tenant_id, name)
        if spec is None:
            return Route("problem", tenant_id, problem=f"route {route!r}: the tenant has no such connector")
        if not spec["enabled"]:
            return Route("problem", tenant_id, problem=f"route {route!r}: the connector is disabled")
        if spec["kind"] not in ("smtp", "sendgrid"):
            return Route("problem", tenant_id, problem=f"route {route!r}: a {spec['kind']} connector cannot send")
        connector = ConnectorSpec(spec["id"], spec["tenant_id"], spec["name"], spec["kind"], spec["enabled"], spec["settings"], spec["secret"])
        return Route(spec["kind"], tenant_id, info["domain"], keys, connector)

    # ------------------------------------------------------------------ preparing (signing)

    def _prepare(self, work: Work) -> bytes:
        """The bytes to send: Reply-To a relay connector wants, then DKIM (not for the SendGrid API)."""
        route, data = work.route, work.message["body"]
        connector = route.connector
        if connector is not None and connector.settings.get("reply_to") and b"\nreply-to:" not in data.split(b"\r\n\r\n", 1)[0].lower():
            data = f"Reply-To: {connector.settings['reply_to']}\r\n".encode() + data
        if route.kind != "sendgrid":
            data = self.signer.sign(data, route.keys)
        return data

    def _prepare_all(self, works: list[Work]) -> None:
        for work in works:
            if work.route.kind == "problem":
                continue
            try:
                work.data = self._prepare(work)
            except Exception as exc:  # noqa: BLE001 - handed to the lane, which holds the message
                work.error = exc

    async def _prepare_chunk(self, works: list[Work]) -> None:
        if self._sign_pool is None:
            self._prepare_all(works)
            return
        await asyncio.get_running_loop().run_in_executor(self._sign_pool, self._prepare_all, works)

    # ------------------------------------------------------------------ one message to one destination

    async def _deliver(self, work: Work) -> None:
        msg = work.message
        started = time.monotonic()
        dsn = None
        try:
            if work.route.kind == "problem":
                raise RoutingProblem(work.route.problem)
            results = await self._attempt(work)
            outcomes, failed = self._classify(work, results, time.monotonic() - started)
            if failed and msg["mail_from"]:
                dsn = self._dsn(work, failed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - our own failure: hold, never drop
            reason = str(exc) if isinstance(exc, RoutingProblem) else f"internal error: {type(exc).__name__}: {exc}"
            if not isinstance(exc, RoutingProblem):
                log.exception("delivery_internal_error", queue_id=msg["queue_id"])
            outcomes = [Outcome(recipient_id=r["id"], state="held", hold_reason=reason, attempted=False,
                                event={"rcpt": r["rcpt"]}) for r in work.rcpts]
        # The lane goes on with its next message while this outcome waits for its group commit: the
        # recipients stay claimed until then (a crash before it releases them, and they are tried again).
        task = asyncio.get_running_loop().create_task(self._record(work, outcomes, dsn))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record(self, work: Work, outcomes: list[Outcome], dsn: Dsn | None) -> None:
        msg = work.message
        try:
            result = await self.store.delivery.record(self.token, msg["tenant_id"], msg["queue_id"], outcomes, dsn, self.clock())
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - store trouble: leave the rows claimed until release
            log.exception("delivery_record_failed", queue_id=msg["queue_id"])
            try:
                await self.store.delivery.release(self.token, [r["id"] for r in work.rcpts])
            except Exception:  # noqa: BLE001
                pass
        else:
            self._report(work, outcomes, result)
        finally:
            self._inflight -= len(work.rcpts)
            if self._more_due and not self._stopping and self._inflight < self.config.delivery.max_inflight // 2:
                self._wake.set()

    async def _attempt(self, work: Work) -> dict[str, Reply]:
        cfg, route, msg = self.config.delivery, work.route, work.message
        connector = route.connector
        if work.error is not None:
            raise work.error
        data = work.data if work.data is not None else self._prepare(work)
        rcpts = [r["rcpt"] for r in work.rcpts]
        budget = cfg.connect_timeout * 2 + cfg.command_timeout * (4 + 3 * len(rcpts))
        try:
            async with asyncio.timeout(budget):
                if route.kind == "sendgrid":
                    return await SendGridCourier(connector, self._http, cfg).deliver(rcpts, data, msg["queue_id"])
                envelopes = self._envelopes(work)
                if route.kind == "smtp":
                    return await relay_courier(connector, cfg, self._helo(), self.pool).deliver(envelopes, data)
                courier = DirectCourier(self.resolver, self.pool, self._options(), cfg.remote_port)
                return await courier.deliver(work.dest[1], envelopes, data)
        except TimeoutError:
            reply = Reply.temporary(f"delivery did not finish within {budget:.0f}s", "4.4.2")
            return {r: reply for r in rcpts}

    def _envelopes(self, work: Work) -> list[Envelope]:
        msg, route = work.message, work.route
        sender = route.connector.settings.get("sender", "") if route.connector else ""
        if not msg["mail_from"] or sender:
            # Null sender (a DSN) or a relay that wants its own sender: one transaction for all.
            return [Envelope(sender if msg["mail_from"] else "", tuple(r["rcpt"] for r in work.rcpts))]
        base = verp.bounce_address(f"{self.config.domains.return_path_prefix}.{route.domain}")
        return [Envelope(verp.return_path(base, msg["queue_id"], r["index"]), (r["rcpt"],)) for r in work.rcpts]

    def _helo(self) -> str:
        return self.config.delivery.helo_name or self.config.daemon.hostname

    def _options(self) -> SessionOptions:
        cfg = self.config.delivery
        return SessionOptions(helo=self._helo(), connect_timeout=cfg.connect_timeout, command_timeout=cfg.command_timeout,
                              tls="opportunistic" if cfg.starttls == "opportunistic" else "off")

    def _classify(self, work: Work, results: dict[str, Reply], duration: float) -> tuple[list[Outcome], list[FailedRecipient]]:
        cfg, msg = self.config.delivery, work.message
        now = self.clock()
        outcomes, failed = [], []
        for r in work.rcpts:
            reply = results.get(r["rcpt"]) or Reply.temporary("no reply recorded for this recipient", "4.0.0")
            state = reply.outcome
            expired = state == "deferred" and now >= msg["expires_at"]
            next_at = 0.0
            if expired:
                state = "bounced"
            elif state == "deferred":
                next_at = next_attempt(now, r["attempts"] + 1, msg["expires_at"], base=cfg.backoff_base,
                                       maximum=cfg.backoff_max, jitter=cfg.backoff_jitter, rand=self.rand)
            event = {"rcpt": r["rcpt"], "delay": round(now - msg["created_at"], 3), "attempts": r["attempts"] + 1,
                     "route": work.route.kind}
            if expired:
                event["expired"] = True
            outcomes.append(Outcome(recipient_id=r["id"], state=state, code=reply.code or None, enhanced=reply.enhanced,
                                    reply=reply.line, remote=reply.remote, duration=duration, next_attempt_at=next_at, event=event))
            if state == "bounced":
                failed.append(FailedRecipient(r["rcpt"], failure_status(reply.status, expired),
                                              reply.line + (" (gave up: message lifetime ran out)" if expired else ""),
                                              reply.remote.split("[")[0] if reply.remote else "", expired))
        return outcomes, failed

    def _dsn(self, work: Work, failed: list[FailedRecipient]) -> Dsn:
        msg = work.message
        now = self.clock()
        host = self.config.daemon.hostname
        sender = self.config.delivery.dsn_sender or f"MAILER-DAEMON@{host}"
        body, message_id = build_dsn(original=msg["body"], queue_id=msg["queue_id"], arrival=msg["created_at"],
                                     envelope_from=msg["mail_from"], failed=failed, reporting_mta=host, sender=sender, now=now)
        by_rcpt = {r["rcpt"]: r["id"] for r in work.rcpts}
        new = NewMessage(queue_id=self._ids.new(now), tenant_id=msg["tenant_id"], usecase_id=msg["usecase_id"], mail_from="",
                         message_id=message_id, body=body, recipients=[msg["mail_from"]], now=now,
                         counts_to_quota=False)
        return Dsn(message=new, recipient_ids=[by_rcpt[f.rcpt] for f in failed], original_queue_id=msg["queue_id"],
                   tenant_id=msg["tenant_id"])

    def _report(self, work: Work, outcomes: list[Outcome], result: dict[str, Any]) -> None:
        msg = work.message
        recorded = set(result.get("recorded", ()))
        kind = work.route.kind
        now = self.clock()
        for o in outcomes:
            if o.recipient_id not in recorded:
                continue
            fields = {"queue_id": msg["queue_id"], **o.event, "reply": o.reply, "remote": o.remote}
            if o.state == "delivered":
                self.metrics.delivered.labels(route=kind).inc()
                self.metrics.delivery_duration.observe(max(0.0, now - msg["created_at"]))
                log.info("delivered", **fields)
            elif o.state == "deferred":
                self.metrics.deferred.labels(route=kind).inc()
                log.info("deferred", next_attempt_in=round(o.next_attempt_at - now, 1), **fields)
            elif o.state == "bounced":
                self.metrics.bounced.labels(route=kind).inc()
                log.info("bounced", **fields)
            else:
                self.metrics.held.inc()
                log.warning("held", queue_id=msg["queue_id"], rcpt=o.event.get("rcpt"), reason=o.hold_reason)
        if result.get("dsn"):
            self.metrics.dsns.inc()
            log.info("dsn_sent", queue_id=msg["queue_id"], dsn_queue_id=result["dsn"], to=msg["mail_from"])
            self.wake()


class RoutingProblem(DeliveryError):
    """The use case cannot be routed (missing or disabled connector...): held until an operator fixes it."""
