"""The webhook sender: one lane per enabled endpoint, POSTing its outbox head in event order.

    supervisor: every poll interval, one read names the endpoints with outbox rows and wakes
                their lanes (an idle lane makes no query of its own); every few intervals (or when
                woken by an admin change) it reads the enabled endpoints, starts a lane for each
                new one and stops the lanes of the others
    lane:       head = first batch_max outbox rows by id
                -> POST (inside the overall ``concurrency`` cap) -> 2xx: the rows go, one write
                -> else: failures + 1, the head waits backoff_base * 2^(failures-1) (+ jitter, up
                   to backoff_max); failing longer than disable_after -> disabled (webhook_disabled)

A lane sends one POST at a time, so its events arrive in id order, and a failing head holds back
the rest of its endpoint (order over progress, as documented in the README); lanes are
independent tasks, so an endpoint that is down or slow never delays another beyond the shared cap
of POSTs in flight (each bounded by ``timeout``); once failing, a lane takes its slots from a
separate pool (a quarter of ``concurrency``), so endpoints that are down cannot starve those that work. Nothing is held in a transaction while a POST
is out. A crash after a 2xx and before its write sends the batch again: at-least-once.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import structlog

from .. import __version__
from ..config import Config, WebhooksConfig
from ..delivery.backoff import retry_delay
from ..errors import StorageFull
from ..lifecycle import Component
from ..metrics import Metrics
from ..remotes import GuardedResolver, RefusedAddress
from ..store import Store
from .signing import EVENT_IDS, HEADER, sign
from .urls import address_refused

log = structlog.get_logger("webhooks")

# Bytes of a response body read (for the delivery log's error text); the rest is not read.
MAX_RESPONSE = 4096
# Seconds between two counts of a lane's backlog (against webhooks.max_backlog).
BACKLOG_CHECK = 10.0
# The endpoint list is read again every this many poll intervals (at most SUPERVISE_MAX seconds).
SUPERVISE_EVERY = 4
SUPERVISE_MAX = 2.0
# An idle lane looks at its outbox by itself at least this often, woken or not.
IDLE_MAX = 5.0
# Seconds a lane's lease on its endpoint lasts (at least LEASE_TIMEOUTS POST timeouts); it is renewed
# before a POST whenever less than a POST timeout and a margin is left.
LEASE = 30.0
LEASE_TIMEOUTS = 3


class InboundPayloads(Protocol):
    """What a ``received`` event's POST carries beyond the event (gateway/inbound/delivery.py)."""

    max_post_bytes: int

    async def payload(self, tenant_id: int, inbound_id: str) -> dict[str, Any] | None: ...


# json.dumps with separators builds an encoder on every call: one, made once, encodes the same.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _envelope(row: dict[str, Any]) -> dict[str, Any]:
    """An event's fields as the receiver sees them, but its data (which comes last)."""
    return {
        "id": row["event_id"],
        "type": row["kind"],
        "created_at": row["created_at"],
        "time": datetime.fromtimestamp(row["created_at"], timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "tenant": row["tenant"],
        "subject": row["subject"],
    }


def payload(row: dict[str, Any]) -> dict[str, Any]:
    """One event as the receiver sees it (a head row of store.webhooks)."""
    return {**_envelope(row), "data": json.loads(row["data_json"])}


def event_json(row: dict[str, Any]) -> bytes:
    """``payload(row)`` as compact JSON, the stored data spliced in as it is: the same bytes as
    json.dumps(payload(row), separators=(",", ":")), since append_event wrote the data with that
    json.dumps, without parsing and writing the data again (that was two thirds of the sender's CPU
    per event, in the process that accepts mail: scripts/bench_webhooks.py)."""
    head = _COMPACT.encode(_envelope(row))
    return f'{head[:-1]},"data":{row["data_json"]}}}'.encode()


def _printable(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()


class WebhookSender(Component):
    name = "webhooks"

    def __init__(self, store: Store, config: WebhooksConfig, metrics: Metrics | None = None, *, node: str = "",
                 clock: Callable[[], float] = time.time, rand: Callable[[], float] = random.random,
                 inbound: InboundPayloads | None = None):
        self.store = store
        self.inbound = inbound
        # Who holds an endpoint's lease: the same for a restarted daemon on the same state directory
        # (its lock says the previous one is gone), so it takes its lanes back at once.
        self.node = node or f"{socket.gethostname()}:{id(self)}"
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.rand = rand
        self.session: aiohttp.ClientSession | None = None
        self._endpoints: dict[int, dict[str, Any]] = {}
        self._lanes: dict[int, asyncio.Task] = {}
        self._due: dict[int, asyncio.Event] = {}
        self._supervisor: asyncio.Task | None = None
        self._wake = asyncio.Event()
        # Lanes in a run of failures take their slots from a pool of their own: endpoints that are
        # down (each POST waiting out the timeout) cannot take the slots of those that answer.
        self._slots = asyncio.Semaphore(config.concurrency)
        self._retry_slots = asyncio.Semaphore(max(1, config.concurrency // 4))
        self.backlog_check = BACKLOG_CHECK
        self.posts = 0
        self.failures = 0
        self.events_sent = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # Room for both pools of slots: the connector's own limit must never be the one that waits.
        connector = aiohttp.TCPConnector(limit=self.config.concurrency + max(1, self.config.concurrency // 4),
                                         limit_per_host=0, ttl_dns_cache=60,
                                         resolver=GuardedResolver(lambda: self.config.allow_loopback, "webhooks.allow_loopback"))
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             headers={"User-Agent": f"gateway-webhooks/{__version__}"})
        self._supervisor = asyncio.create_task(self._supervise(), name="webhooks")

    async def stop(self, deadline: float) -> None:
        # A POST cut off here was not recorded: its rows stay in the outbox and go again after the
        # restart (at-least-once), so there is nothing to drain.
        tasks = [t for t in (self._supervisor, *self._lanes.values()) if t is not None]
        try:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._supervisor = None
            self._lanes.clear()
            if self.session is not None:
                session, self.session = self.session, None
                await session.close()

    async def reload(self, config: Config) -> None:
        self.config = config.webhooks  # concurrency keeps its start value: the semaphore is shared by running lanes
        self.wake()

    def wake(self) -> None:
        """An endpoint was added, enabled, disabled or deleted: look again now."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {"webhooks": {"lanes": len(self._lanes), "posts": self.posts, "failed_posts": self.failures,
                             "events_sent": self.events_sent}}

    # ------------------------------------------------------------------ lanes

    async def _supervise(self) -> None:
        refreshed = float("-inf")
        while True:
            interval = self.config.poll_interval
            if self._wake.is_set() or time.monotonic() - refreshed >= min(SUPERVISE_MAX, interval * SUPERVISE_EVERY):
                self._wake.clear()
                refreshed = time.monotonic()
                await self._refresh()
            try:
                for endpoint_id in await self.store.webhooks.waiting():
                    if endpoint_id in self._due:
                        self._due[endpoint_id].set()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("webhooks_poll_failed")
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass

    async def _refresh(self) -> None:
        try:
            live = {e["id"]: e for e in await self.store.webhooks.live()}
        except Exception:  # noqa: BLE001 - the next round tries again
            log.exception("webhooks_refresh_failed")
            return
        self._endpoints = live
        for endpoint_id, task in list(self._lanes.items()):
            if endpoint_id not in live or task.done():
                task.cancel()
                del self._lanes[endpoint_id]
                self._due.pop(endpoint_id, None)
        for endpoint_id, endpoint in live.items():
            if endpoint_id not in self._lanes:
                self._due[endpoint_id] = asyncio.Event()
                self._lanes[endpoint_id] = asyncio.create_task(self._lane(endpoint), name=f"webhook-{endpoint_id}")

    async def _lane(self, endpoint: dict[str, Any]) -> None:
        endpoint_id = endpoint["id"]
        failures, next_at = endpoint["failures"], endpoint["next_attempt_at"]
        failing_since = endpoint["failing_since"]
        backlog_checked = 0.0
        leased_until = 0.0
        due = self._due[endpoint_id]
        while True:
            cfg = self.config
            current = self._endpoints.get(endpoint_id, endpoint)
            try:
                # Counted while backing off too: an endpoint that is down is the one whose backlog grows.
                if time.monotonic() - backlog_checked > self.backlog_check:
                    backlog_checked = time.monotonic()
                    backlog = await self.store.webhooks.backlog(endpoint_id)
                    if backlog > cfg.max_backlog:
                        await self._disable(current, f"more than webhooks.max_backlog ({cfg.max_backlog}) events waiting",
                                            {"backlog": backlog})
                        return
                now = self.clock()
                if next_at > now:
                    await asyncio.sleep(min(next_at - now, cfg.poll_interval))
                    continue
                due.clear()  # before the read: a wake during it is not lost
                rows = await self.store.webhooks.head(endpoint_id, cfg.batch_max)
                lost = [r["outbox_id"] for r in rows if r["kind"] is None]
                if lost:
                    # The events sweep (queue.keep_events) took these events first: nothing to send.
                    await self.store.webhooks.drop_lost(endpoint_id, lost)
                    log.warning("webhook_events_expired", endpoint=current["name"], tenant_id=current["tenant_id"], events=len(lost))
                    rows = [r for r in rows if r["kind"] is not None]
                if not rows:
                    try:
                        await asyncio.wait_for(due.wait(), IDLE_MAX)
                    except TimeoutError:
                        pass
                    continue
                if leased_until - self.clock() < cfg.timeout + 5.0:
                    now = self.clock()
                    until = now + max(LEASE, LEASE_TIMEOUTS * cfg.timeout)
                    if not await self.store.webhooks.lease(endpoint_id, self.node, now=now, until=until):
                        leased_until = 0.0
                        await asyncio.sleep(max(cfg.poll_interval, 1.0))  # another node sends for it
                        continue
                    leased_until = until
                rows, body = await self._body(rows)
                async with self._retry_slots if failures else self._slots:
                    attempt = await self.post(current["url"], current["secret"], body, [r["event_id"] for r in rows])
                attempt.update(first_event=rows[0]["event_id"], last_event=rows[-1]["event_id"], events=len(rows))
                if attempt["ok"]:
                    await self.store.webhooks.delivered(endpoint_id, rows[-1]["outbox_id"], attempt, keep=cfg.keep_log)
                    self.events_sent += len(rows)
                    self.metrics.webhook_events.inc(len(rows))
                    if failures:
                        log.info("webhook_recovered", endpoint=current["name"], tenant_id=current["tenant_id"], after_failures=failures)
                    failures, failing_since = 0, None
                    continue
                failures += 1
                next_at = attempt["at"] + retry_delay(failures, base=cfg.backoff_base, maximum=cfg.backoff_max,
                                                      jitter=cfg.backoff_jitter, rand=self.rand)
                state = await self.store.webhooks.failed(endpoint_id, attempt, next_at, keep=cfg.keep_log)
                failing_since = state["failing_since"]
                if failures == 1:
                    log.info("webhook_failing", endpoint=current["name"], tenant_id=current["tenant_id"],
                             status=attempt["status"], error=attempt["error"])
                if cfg.disable_after > 0 and attempt["at"] - failing_since >= cfg.disable_after:
                    await self._disable(current, f"failing for {attempt['at'] - failing_since:.0f} s (webhooks.disable_after)",
                                        {"failures": state["failures"], "failing_since": failing_since,
                                         "last_error": attempt["error"]})
                    return
            except StorageFull:
                await self.store.db.wait_writable()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the lane must go on; the head is tried again after a pause
                log.exception("webhook_lane_failed", endpoint=current["name"])
                await asyncio.sleep(max(cfg.poll_interval, 1.0))

    async def _body(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bytes]:
        """(the rows this POST carries, its body). A ``received`` event carries the message it names,
        built now (``inbound``); once the body passes the inbound max_post_bytes the rest waits
        for the next POST (at least one event always goes)."""
        parts: list[bytes] = []
        size = len(b'{"events":[]}') - 1   # each part adds itself and one comma
        limit = self.inbound.max_post_bytes if self.inbound is not None else 0
        for row in rows:
            if row["kind"] == "received" and self.inbound is not None and row["tenant_id"] is not None:
                event = payload(row)
                event["inbound"] = await self.inbound.payload(row["tenant_id"], row["subject"])
                part = json.dumps(event, separators=(",", ":"), default=str).encode()
            else:
                part = event_json(row)
            if parts and limit and size + len(part) > limit:
                break
            parts.append(part)
            size += len(part) + 1
        return rows[:len(parts)], b'{"events":[' + b",".join(parts) + b"]}"

    async def _disable(self, endpoint: dict[str, Any], reason: str, data: dict[str, Any]) -> None:
        if await self.store.webhooks.disable(endpoint["id"], reason, data):
            log.warning("webhook_disabled", endpoint=endpoint["name"], tenant_id=endpoint["tenant_id"], reason=reason)
        self.wake()

    # ------------------------------------------------------------------ one POST

    async def post(self, url: str, secret: str, body: bytes, event_ids: list[int]) -> dict[str, Any]:
        """POST ``body`` signed with ``secret``; {"at", "ok", "status", "latency", "error"}. Never raises
        for what the network or the receiver does."""
        at = self.clock()
        started = time.perf_counter()
        status: int | None = None
        error = ""
        self.posts += 1
        try:
            host = urlsplit(url).hostname or ""
            refused = address_refused(host, allow_loopback=self.config.allow_loopback)
            if refused:
                raise RefusedAddress(refused)
            headers = {"Content-Type": "application/json", HEADER: sign(secret, int(at), body),
                       EVENT_IDS: ",".join(map(str, event_ids))}
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            async with self.session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False) as resp:
                status = resp.status
                head = await resp.content.read(MAX_RESPONSE)
                if not 200 <= status < 300:
                    error = f"HTTP {status}" + (f": {_printable(head)}" if head else "")
        except TimeoutError:
            error = f"no answer within {self.config.timeout:g} s"
        except RefusedAddress as exc:
            error = f"refused: {exc}"
        except aiohttp.ClientConnectorError as exc:
            error = f"cannot connect: {exc.os_error.strerror or exc.os_error}" if exc.os_error else "cannot connect"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        ok = status is not None and 200 <= status < 300
        if not ok:
            self.failures += 1
        self.metrics.webhook_posts.labels(outcome="ok" if ok else "failed").inc()
        return {"at": at, "ok": ok, "status": status, "latency": round(time.perf_counter() - started, 6), "error": error}
