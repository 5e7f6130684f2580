"""The sweeper: ages out what the queue no longer needs, so the store does not grow forever.

    every queue.sweep_interval:  bodies of finished messages older than keep_bodies   -> emptied
                                 finished messages older than keep_messages           -> deleted (recipients, attempts)
                                 attempts older than keep_attempts                    -> deleted
                                 events older than keep_events                        -> deleted
                                 suppressions expired longer than keep_events, and
                                 soft-failure counts untouched that long              -> deleted
                                 Message-ID records older than keep_threads           -> deleted
                                 webhook delivery-log rows older than webhooks.keep_log_seconds -> deleted
                                 inbound messages processed longer ago than processor.keep_inbound -> deleted
                                 (their attachment rows too; then each attachment file no row references
                                 any more is removed, unless the processor pinned it: gateway/inbound/pins.py)
                                 (delivered outbox rows need no sweep: they go with the 2xx)

"Finished" means every recipient delivered, bounced or suppressed; pending, deferred and held mail is never
touched, however old. Held inbound messages are kept until an operator releases them (then they are
processed and age out like the rest); spooled ones are never swept. The decisions (what is old enough, how big a batch) are made here; the store
(gateway/store/retention.py) runs each batch as one short write through an index. Batches follow
each other until a kind is done, each its own write, with a rest as long as the batch between
them, so submission and delivery commits slip in between: the writer is never held longer than one
batch, and at most half the time. One log line per sweep that removed
something (an idle sweep logs at debug), and ``gateway_swept_rows_total{kind}`` counts the rows.

The database file does not shrink: freed pages are reused by new mail (``VACUUM`` offline to shrink).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from .config import Config, ProcessorConfig, QueueConfig, WebhooksConfig
from .errors import StorageFull
from .inbound.pins import Pins
from .lifecycle import Component
from .metrics import Metrics
from .store import Store

log = structlog.get_logger("sweeper")

# Body bytes one batch may free: freeing a body walks its overflow pages, so rows alone do not bound a batch.
BATCH_BYTES = 8 * 1024 * 1024
KINDS = ("bodies", "messages", "attempts", "events", "threads", "webhook_log", "suppressions", "inbound", "attachment_files",
         "idempotency")
# How long the send API remembers an Idempotency-Key's answer (as Stripe: retries come within a day).
KEEP_IDEMPOTENCY = 86400.0


class Sweeper(Component):
    name = "sweeper"

    def __init__(self, store: Store, config: QueueConfig, metrics: Metrics | None = None, *,
                 clock: Callable[[], float] = time.time, webhooks: WebhooksConfig | None = None,
                 processor: ProcessorConfig | None = None, files: Any = None, pins: Pins | None = None):
        self.store = store
        self.config = config
        self.webhooks = webhooks or WebhooksConfig()
        self.processor = processor or ProcessorConfig()
        self.files = files          # gateway.inbound.attachments.AttachmentFiles (None: no files to remove)
        self.pins = pins or Pins()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.sweeps = 0
        self.last: dict[str, Any] | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def reload(self, config: Config) -> None:
        self.config = config.queue
        self.webhooks = config.webhooks
        self.processor = config.processor
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {"sweeper": {"interval": self.config.sweep_interval, "sweeps": self.sweeps, "last": self.last}}

    async def _run(self) -> None:
        while True:
            interval = self.config.sweep_interval
            self._wake.clear()
            if interval > 0:
                try:
                    await self.sweep()
                except StorageFull:
                    pass  # the store logs the episode; the next sweep tries again
                except Exception:  # noqa: BLE001 - a failed sweep must not end the loop
                    log.exception("sweep_failed")
            try:
                await asyncio.wait_for(self._wake.wait(), interval if interval > 0 else None)
            except TimeoutError:
                pass

    async def sweep(self) -> dict[str, Any]:
        """One sweep of every kind; returns rows by kind, bytes freed, batches and the longest batch."""
        async with self._lock:
            return await self._sweep()

    async def _inbound_batch(self, cutoff: float, batch: int, summary: dict[str, Any]) -> dict[str, Any]:
        """One batch of old inbound rows, then the files only they referenced (outside the write)."""
        self.pins.begin()
        try:
            done = await self.store.retention.delete_inbound(cutoff, max_rows=batch, max_bytes=BATCH_BYTES)
            if done["files"] and self.files is not None:
                removed = await asyncio.to_thread(self._remove_files, done["files"])
                summary["attachment_files"] += removed
                if removed:
                    self.metrics.swept.labels(kind="attachment_files").inc(removed)
        finally:
            self.pins.end()
        return done

    def _remove_files(self, shas: list[str]) -> int:
        removed = 0
        with self.pins.removing():
            for sha in shas:
                # Pinned or touched since the batch began: a message being processed has the same bytes.
                if self.pins.removable(sha):
                    self.files.remove(sha)
                    removed += 1
        return removed

    async def _sweep(self) -> dict[str, Any]:
        cfg, now = self.config, self.clock()
        started = time.perf_counter()
        retention = self.store.retention
        batch = cfg.sweep_batch
        summary: dict[str, Any] = dict.fromkeys(KINDS, 0)
        summary.update(bytes=0, batches=0, longest_batch=0.0)
        plan = {
            "bodies": (cfg.keep_bodies, lambda cut: retention.drop_bodies(cut, max_rows=batch, max_bytes=BATCH_BYTES)),
            "messages": (cfg.keep_messages, lambda cut: retention.delete_messages(cut, max_rows=batch, max_bytes=BATCH_BYTES)),
            "attempts": (cfg.keep_attempts, lambda cut: retention.delete_attempts(cut, max_rows=batch)),
            "events": (cfg.keep_events, lambda cut: retention.delete_events(cut, max_rows=batch)),
            "threads": (cfg.keep_threads, lambda cut: retention.delete_threads(cut, max_rows=batch)),
            "webhook_log": (self.webhooks.keep_log_seconds, lambda cut: retention.delete_webhook_log(cut, max_rows=batch)),
            # Expired suppressions stay visible (`suppression show`) as long as events do, then go.
            "suppressions": (cfg.keep_events, lambda cut: retention.delete_expired_suppressions(cut, max_rows=batch)),
            "idempotency": (KEEP_IDEMPOTENCY, lambda cut: retention.delete_idempotency(cut, max_rows=batch)),
            "inbound": (self.processor.keep_inbound, lambda cut: self._inbound_batch(cut, batch, summary)),
        }
        for kind, (keep, run) in plan.items():
            if keep <= 0:
                continue  # kept forever
            cutoff = now - keep
            while True:
                began = time.perf_counter()
                done = await run(cutoff)
                # What the writer spent on it: the SQL plus the commit (WAL writes, fsync) it shared.
                held = time.perf_counter() - began
                summary["batches"] += 1
                summary[kind] += done["rows"]
                summary["bytes"] += done["bytes"]
                summary["longest_batch"] = max(summary["longest_batch"], held)
                self.metrics.sweep_batch_seconds.observe(held)
                if done["rows"]:
                    self.metrics.swept.labels(kind=kind).inc(done["rows"])
                if not done["more"] or not done["rows"]:
                    break
                # Rest as long as the batch took: writes that queued behind it commit on their own,
                # not beside the next batch, so none waits for more than about one batch.
                await asyncio.sleep(held)
        summary["seconds"] = time.perf_counter() - started
        summary["at"] = now
        self.sweeps += 1
        self.last = summary
        fields = {k: summary[k] for k in KINDS} | {
            "bytes": summary["bytes"], "batches": summary["batches"],
            "longest_batch_ms": round(summary["longest_batch"] * 1000, 1), "seconds": round(summary["seconds"], 3)}
        if any(summary[k] for k in KINDS):
            log.info("swept", **fields)
        else:
            log.debug("swept", **fields)
        return summary
