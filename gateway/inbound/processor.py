"""The processing stage: every spooled inbound message, classified, parsed, threaded and stored.

    spool (store.inbound.spooled) -> for each row, at most processor.concurrency at once:
        route      who it is for: recipients.resolve on the row's recipients (the connector's
                   incoming.usecase for polled mail without an address; the gateway's own addresses
                   resolve to their return-path domain, the report says whose message it was)
        authenticate  SPF, DKIM, DMARC (unless the MX did it at DATA: Spooled.auth_results); the
                   Authentication-Results header goes on the stored copy
        classify   dsn | arf | auto_reply | unsubscribe | message (classify.py)
        parse      MIME bodies and attachments (mime.py); attachment files written (attachments.py)
        thread     parent and thread among the tenant's Message-ID records (threads.py), refused
                   across use cases and tenants
        hooks      DSN/ARF -> suppression (the report handler the daemon injects), a mailto
                   unsubscribe -> the unsubscriber (likewise)
        finish     one write: the row processed, attachments, its message_ids record, events
    any exception -> store.inbound.hold(row, reason): nothing is dropped; logged with the
    traceback, counted (gateway_inbound_held_total); `inbox release` puts it back.

Woken at once by every spool commit (store.inbound.on_spooled, wired by the daemon), else it scans
every processor.poll_interval. The CPU-bound work of one message (authentication's header work,
classification, MIME parsing, reply stripping, hashing and writing attachment files) runs in a
parser process (pool.py: processor.processes of them, one message each), so processing uses every
core; a message past processor.process_max_bytes runs it in a worker thread instead (its
attachments streamed from the one copy). Either way the loop keeps answering the listeners, and
the store's reads and writes, the reply order and the finish stay here: one writer per row. A
parser process that dies leaves the row spooled; it is tried again, and held after MAX_DEATHS.

Idempotent: a crash between the attachment files and the finish write leaves the row spooled; it is
processed again and its files (content-addressed) are the same. The hooks run before the finish,
so a report is acted on at least once (suppressing twice changes nothing; a soft bounce may be
counted twice in that crash window).
"""

from __future__ import annotations

import asyncio
import functools
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from ..budget import ByteBudget
from ..config import Config, ProcessorConfig
from ..errors import GatewayError, SMTPError, StorageFull
from ..lifecycle import Component
from ..metrics import Metrics
from .. import verp
from ..feedback import arf
from ..store import Store
from ..store.inbound import Processed
from . import recipients, threads
from .analysis import CONVERSATION, Route, Work, address_of, analyse, display_of, ids
from .attachments import Syncs
from .order import ParentOrder
from .pins import Pins
from .pool import ParserDied, ParserPool, pool_size

log = structlog.get_logger("processor")

# A report handler: (raw, envelope recipient) -> {"type", "matched", "done"} (SuppressionService.handle_report).
ReportHook = Callable[[bytes, str], Awaitable[dict[str, Any]]]
# An unsubscribe: token -> {"tenant_id", "usecase_id", "changed"}, or None when the token is not ours.
UnsubscribeHook = Callable[[str], Awaitable[dict[str, Any] | None]]
# Whether a VERP tag carries our MAC (gateway/verp.py).
VerpHook = Callable[[verp.VerpTag], Awaitable[bool]]
MAX_REASON = 500
MEMORY_FACTOR = 3
STALL_AFTER = 300.0   # seconds without a finished message while some are in flight: /health says so
WORKER_THREADS = 4   # at most, for the CPU work (16 in flight: 16 threads measured no faster than 4)
HOLD_RETRY = 1.0   # seconds before a row whose hold write failed (disk full) is tried again
# A message whose parser process died this many times is held: it kills the parser, whatever the
# cause of one death (the OOM killer, an operator's kill) it is not chance three times running.
MAX_DEATHS = 3
DEATHS_KEPT = 10_000   # rows remembered with their parser deaths (a bound; forgotten: one more try)


@dataclass(frozen=True, kw_only=True)
class Hooks:
    report: ReportHook | None = None
    unsubscribe: UnsubscribeHook | None = None
    verp: VerpHook | None = None   # Keyring.signed: without it no VERP tag is trusted


class Unroutable(GatewayError):
    """No recipient of the row receives here any more (address deleted or disabled since it was spooled)."""


class Processor(Component):
    name = "processor"

    def __init__(self, store: Store, config: Config, metrics: Metrics | None = None, *, files: Any, pins: Pins | None = None,
                 hooks: Hooks | None = None, authenticate: Callable[..., Awaitable[Any]] | None = None,
                 parse: Callable[..., Any], stripped_reply: Callable[[str, str], str] | None = None,
                 limits: Callable[[ProcessorConfig], Any] | None = None,
                 rules: recipients.Rules | None = None, inline: bool = False, budget: ByteBudget | None = None):
        self.store = store
        self.config = config
        self.metrics = metrics or Metrics()
        self.files = files
        self.pins = pins or Pins()
        self.hooks = hooks or Hooks()
        self._authenticate = authenticate
        self._parse = parse
        self._stripped = stripped_reply
        self._limits = limits
        self.rules = rules or recipients.Rules.from_config(config)
        self.budget = budget   # the daemon's memory budget, shared with the listeners and delivery
        self.inline = inline   # the CPU work on the loop, not in worker threads (scripts/bench_processing.py compares)
        self.processed = 0
        self.held = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._inflight: dict[int, asyncio.Task] = {}
        self._slots: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._parsers: ParserPool | None = None   # pool.py: the MIME work of messages up to process_max_bytes
        self._deaths: dict[int, int] = {}   # row id -> times its parser process died (MAX_DEATHS)
        self._idle = asyncio.Event()
        self._idle.set()
        self._syncs = Syncs()
        self._order = ParentOrder()   # a reply waits for its parent still in flight (order.py)
        self._looked: dict[int, int] = {}  # row id -> the order's ended mark when its worker lookup began
        self._progress = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self.config.processor.enabled:
            log.warning("processor_disabled", reason="processor.enabled is false: spooled mail waits")
            return
        n = self.config.processor.concurrency
        self._slots = asyncio.Semaphore(n)
        self._start_pools()
        self._task = asyncio.create_task(self._run(), name="processor")

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            self._task = None
        # In-flight messages finish until the deadline; the rest stay spooled (processed again at start).
        pending = list(self._inflight.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=max(deadline - asyncio.get_running_loop().time(), 0.0))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._parsers is not None:
            await asyncio.to_thread(self._parsers.close)
            self._parsers = None
        self._syncs.close()

    def _start_pools(self) -> None:
        if self._pool is not None:
            return
        n = self.config.processor.concurrency
        parsers = 0
        if not self.inline and self.config.processor.process_max_bytes > 0:
            parsers = min(pool_size(self.config.processor.processes), n)
            self._parsers = ParserPool(parsers, self.files.root)
        # More threads than this only contend for the GIL: the CPU work of a message holds it. A
        # thread waits for each parser process besides those that parse big messages themselves.
        self._pool = ThreadPoolExecutor(max_workers=min(n, WORKER_THREADS + parsers), thread_name_prefix="processor")

    async def warm(self) -> None:
        """The parser processes started now, not when the first messages need them (benchmarks:
        before or after start)."""
        self._start_pools()
        if self._parsers is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._parsers.warm)

    async def reload(self, config: Config) -> None:
        self.config = config
        self.rules = recipients.Rules.from_config(config)
        self._wake.set()

    def wake(self) -> None:
        """New rows were spooled (store.inbound.on_spooled): scan now."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        return {"processor": {"processed": self.processed, "held": self.held, "in_flight": len(self._inflight),
                              "parser_processes": self._parsers.size if self._parsers is not None else 0,
                              "parser_deaths": self._parsers.deaths if self._parsers is not None else 0}}

    def problems(self) -> list[str]:
        # Work in flight and nothing finished for long: a stuck parse or store (each message takes ms).
        idle = time.monotonic() - self._progress
        if self._inflight and idle > STALL_AFTER:
            return [f"processor: {len(self._inflight)} messages in flight and none finished for {idle:.0f}s"]
        return []

    async def drain(self) -> None:
        """Until the spool is empty and nothing is in flight (tests, benchmarks)."""
        while True:
            self._wake.set()
            await self._idle.wait()
            await asyncio.sleep(0)
            if not self._inflight and not await self.store.inbound.spooled(limit=1):
                return
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        cursor = 0
        while True:
            self._wake.clear()
            try:
                rows = await self.store.inbound.spooled(after_id=cursor, limit=self.config.processor.batch)
            except Exception:  # noqa: BLE001 - a failed scan must not end the loop
                log.exception("spool_scan_failed")
                rows = []
            fresh = [r for r in rows if r["id"] not in self._inflight]
            for row in fresh:
                assert self._slots is not None
                await self._slots.acquire()
                if not self._inflight:
                    self._progress = time.monotonic()   # the stall clock starts with the work
                self._idle.clear()
                task = asyncio.create_task(self._one(row), name=f"inbound-{row['inbound_id']}")
                self._inflight[row["id"]] = task
                task.add_done_callback(lambda t, rid=row["id"]: self._done(rid))
            if rows:
                cursor = rows[-1]["id"]
                if len(rows) == self.config.processor.batch and fresh:
                    continue   # more waiting: read on without sleeping (a page all in flight waits for a wake)
            else:
                if not self._inflight:
                    self._idle.set()
                if cursor:
                    cursor = 0   # back to the start: rows whose finish or hold failed are still there
                    continue
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that arrives as
                # the wake is set, and stop() then waited for ever (seen in a test's teardown).
                async with asyncio.timeout(self.config.processor.poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _done(self, row_id: int) -> None:
        self._inflight.pop(row_id, None)
        self._progress = time.monotonic()
        assert self._slots is not None
        self._slots.release()
        if not self._inflight:
            self._wake.set()   # the scan decides whether we are idle

    async def _one(self, row: dict[str, Any]) -> None:
        # The raw copy, the stored copy with our header and the parser's decoded bodies: about three
        # times the message in memory. Taken from the daemon's budget first, as delivery does.
        need = row["size"] * MEMORY_FACTOR
        if self.budget is not None:
            await self.budget.acquire(need)
        started = time.perf_counter()
        shas: list[str] = []
        self._order.begin(row["id"], row.get("header_message_id") or "")
        try:
            processed, shas = await self.process(row)
            self._deaths.pop(row["id"], None)
            if await self.store.inbound.finish(row["id"], processed):
                self.processed += 1
                self.metrics.inbound_processed.labels(kind=processed.kind).inc()
                self.metrics.inbound_processing_seconds.observe(time.perf_counter() - started)
                log.info("inbound_processed", inbound_id=row["inbound_id"], kind=processed.kind, tenant_id=processed.tenant_id,
                         thread_id=processed.thread_id, parent=processed.parent_message_id or None, flags=list(processed.flags) or None,
                         attachments=len(processed.attachments))
        except asyncio.CancelledError:
            raise
        except StorageFull:
            # Not the message's fault: it stays spooled and is tried again once there is room.
            log.warning("inbound_deferred_store_full", inbound_id=row["inbound_id"])
            await asyncio.sleep(HOLD_RETRY)
        except ParserDied as exc:
            # Not lost, not doubled: the row is still spooled (nothing was written for it) and the
            # scan comes back to it; a message that kills its parser every time is held.
            deaths = self._deaths.get(row["id"], 0) + 1
            if deaths >= MAX_DEATHS:
                self._deaths.pop(row["id"], None)
                await self._hold(row, ParserDied(f"{exc} ({deaths} times: not tried again until released)"))
            else:
                if len(self._deaths) >= DEATHS_KEPT:
                    self._deaths.clear()
                self._deaths[row["id"]] = deaths
                log.warning("inbound_parser_died", inbound_id=row["inbound_id"], deaths=deaths, retry=True)
        except Exception as exc:  # noqa: BLE001 - nothing is dropped: held with the reason
            await self._hold(row, exc)
        finally:
            self._order.end(row["id"])
            self._looked.pop(row["id"], None)
            if shas:
                self.pins.unpin(shas)
            if self.budget is not None:
                self.budget.release(need)

    async def _hold(self, row: dict[str, Any], exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:MAX_REASON]
        log.error("inbound_held", inbound_id=row["inbound_id"], reason=reason,
                  traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])
        try:
            if await self.store.inbound.hold(row["id"], reason):
                self.held += 1
                self.metrics.inbound_held.inc()
        except Exception:  # noqa: BLE001 - the row stays spooled and comes round again
            log.exception("inbound_hold_failed", inbound_id=row["inbound_id"])
            await asyncio.sleep(HOLD_RETRY)

    # ------------------------------------------------------------------ one message

    async def process(self, row: dict[str, Any]) -> tuple[Processed, list[str]]:
        """What one spooled row is (no write yet): the Processed to finish it with, and the attachment
        files pinned for it (the caller unpins them after the finish)."""
        route = await self.route(row)
        raw: bytes | bytearray | None = None
        verdict = None
        if row["source"] == "mx" and not row["auth_results"] and self._authenticate is not None:
            raw = await self.store.inbound.raw(row["id"])
            verdict = await self._authenticate(raw, client_ip=row["client"], helo=row["helo"], mail_from=row["mail_from"])
        # The files are written in the worker thread, their fsyncs left to one group with those of
        # the other messages in flight (attachments.Syncs): on disk before the finish names them.
        batch = self.files.batch()
        # A parent that ends while the worker thread looks its thread up may be missed by that look:
        # the mark says whether one did (order.py), and the lookup is made again then.
        self._looked[row["id"]] = self._order.ended
        pooled = self._parsers is not None and row["size"] <= self.config.processor.process_max_bytes
        work_of = functools.partial(self._work_pooled if pooled else self._work, row, route, verdict, raw, batch)
        raw, work = work_of() if self.inline else await asyncio.get_running_loop().run_in_executor(self._pool, work_of)
        self._order.named(row["id"], self._record_id(row, work.parsed))
        try:
            # The thread lookup reads while the disk syncs; the finish waits for both.
            _, processed = await asyncio.gather(self._syncs.sync(batch.take()), self._finish_work(row, route, raw, work))
            return processed, work.shas
        except BaseException:
            self.pins.unpin(work.shas)
            raise

    def _work(self, row: dict[str, Any], route: Route, verdict: Any, raw: bytes | bytearray | None,
              files: Any) -> tuple[bytes | bytearray, Work]:
        """One worker-thread hop for a message: read it (unless authentication already did), analyse
        it, and look its thread up, so the loop hands over once instead of three times."""
        if raw is None:
            raw = self.store.inbound.raw_here(row["id"])
        work = analyse(raw, row, route, verdict, parse=self._parse, stripped_reply=self._stripped,
                       limits=self._limits(self.config.processor) if self._limits is not None else None,
                       files=files, pins=self.pins)
        self._lookup_here(row, work)
        return raw, work

    def _work_pooled(self, row: dict[str, Any], route: Route, verdict: Any, raw: bytes | bytearray | None,
                     files: Any) -> tuple[bytes | bytearray, Work]:
        """``_work`` with the analysis in a parser process (pool.py): this thread waits for it."""
        assert self._parsers is not None
        if raw is None:
            raw = self.store.inbound.raw_here(row["id"])
        work, pending = self._parsers.analyse(raw, row, route, verdict, pins=self.pins, parse=self._parse, stripped_reply=self._stripped,
                                              limits=self._limits(self.config.processor) if self._limits is not None else None)
        files.add(pending)   # fsynced with the other messages' files (Syncs), before the finish
        self._lookup_here(row, work)
        return raw, work

    def _lookup_here(self, row: dict[str, Any], work: Work) -> None:
        if work.classification.kind in CONVERSATION:
            try:
                work.lookup = self._thread_lookup(row, work.parsed)
                work.records = self.store.threads.known_here(work.lookup)
            except BaseException:
                self.pins.unpin(work.shas)
                raise

    def _record_id(self, row: dict[str, Any], parsed: Any) -> str:
        """The Message-ID an inbound message is recorded under: its own, else one made from its inbound id."""
        return (parsed.message_id or "").strip("<>") or self._fresh_id(row)

    def _fresh_id(self, row: dict[str, Any]) -> str:
        return f"{row['inbound_id'].lower()}.inbound@{self.config.daemon.hostname}"

    def _thread_lookup(self, row: dict[str, Any], parsed: Any) -> list[str]:
        # The message's own id too (first: the lookup is bounded): a thread root of another use case or tenant.
        return [self._record_id(row, parsed), *threads.candidates(ids(parsed.in_reply_to), parsed.references or [])]

    async def route(self, row: dict[str, Any]) -> Route:
        for rcpt in row["recipients"]:
            try:
                t = await recipients.resolve(self.store, rcpt, self.rules)
            except SMTPError:
                continue
            if row["tenant_id"] is not None and t.tenant_id != row["tenant_id"]:
                continue   # never route a row into another tenant than the one it was spooled for
            return Route(kind=t.kind, address=t.address, tenant_id=t.tenant_id, usecase_id=t.usecase_id, address_id=t.address_id)
        if row["source"] != "mx" and row["connector_id"] is not None:
            incoming = await self.store.inbound.incoming(row["connector_id"])
            if incoming is not None and incoming["tenant_id"] == row["tenant_id"] and incoming["usecase"]:
                usecase_id = await self.store.inbound.usecase_named(row["tenant_id"], incoming["usecase"])
                if usecase_id is not None:
                    return Route(kind="mailbox", address=incoming["address"], tenant_id=row["tenant_id"], usecase_id=usecase_id)
        raise Unroutable(f"no recipient of {row['recipients'][:5]} receives here any more")

    async def _finish_work(self, row: dict[str, Any], route: Route, raw: bytes, work: Work) -> Processed:
        p, c = work.parsed, work.classification
        tenant_id, usecase_id = route.tenant_id, route.usecase_id
        flags: list[str] = []
        events: list[tuple[str, dict[str, Any]]] = []
        report = dict(c.report) if c.report is not None else None
        kind = c.kind
        message_id = (p.message_id or "").strip("<>")
        thread_id = parent = ""
        record_id = ""
        if kind in ("dsn", "arf"):
            refers = await self._refers_to(report)
            if refers is not None and tenant_id is not None and refers["tenant_id"] != tenant_id:
                # A report at one tenant's return path about another tenant's message: acted on by
                # nobody, and the other tenant's message is not named to this one.
                log.warning("inbound_report_tenant_mismatch", inbound_id=row["inbound_id"], row_tenant=tenant_id,
                            report_tenant=refers["tenant_id"])
                flags.append("report_tenant_mismatch")
                refers = None
            elif refers is not None:
                tenant_id, usecase_id = refers["tenant_id"], refers.get("usecase_id")
                if self.hooks.report is not None:
                    report["outcome"] = await self.hooks.report(raw, route.address)
            report["refers_to"] = refers
        elif kind == "unsubscribe":
            done = await self.hooks.unsubscribe(c.token) if self.hooks.unsubscribe is not None else None
            if done is None:
                flags.append("unsubscribe_token_invalid")
            else:
                tenant_id = tenant_id if tenant_id is not None else done["tenant_id"]
                if tenant_id != done["tenant_id"]:
                    flags.append("unsubscribe_tenant_mismatch")
                else:
                    usecase_id = done.get("usecase_id")
                    report = {"type": "unsubscribe", "changed": bool(done.get("changed"))}
        if kind == "auto_reply" and route.kind == "return_path" and usecase_id is None:
            # A vacation reply to our VERP return path (RFC 3834 answers the envelope sender): the
            # tag names the message it answers, so its use case; the thread comes from In-Reply-To.
            tag = await self._signed(verp.decode(route.address))
            found = await self.store.suppressions.verp_recipient(tag.queue_id, tag.recipient_index) if tag else None
            if found is not None and found["tenant_id"] == tenant_id:
                usecase_id = found["usecase_id"]
        if kind in CONVERSATION and tenant_id is not None and usecase_id is not None:
            record_id = self._record_id(row, p)
            lookup = self._thread_lookup(row, p)
            # A parent still in flight is waited for (order.py); else the lookup made in the worker
            # thread (_work) stands, unless what it asked differs (a reload changed the host name).
            waited = await self._order.parents(row["id"], lookup, since=self._looked.get(row["id"]))
            fresh = waited or work.records is None or work.lookup != lookup
            records = await self.store.threads.known(lookup) if fresh else work.records
            t = threads.resolve(record_id, ids(p.in_reply_to), p.references or [], tenant_id=tenant_id, usecase_id=usecase_id,
                                records=records, fresh=self._fresh_id(row))
            thread_id, parent = t.thread_id, t.parent
            if t.flag:
                flags.append(t.flag)
                # The tenant learns that its message named a parent it may not attach to, never whose.
                events.append(("thread_refused", {"flag": t.flag, "parent": t.refused}))
                log.warning("thread_refused", inbound_id=row["inbound_id"], tenant_id=tenant_id, usecase_id=usecase_id,
                            flag=t.flag, parent=t.refused, **{f"parent_{k}": v for k, v in (t.refused_detail or {}).items()})
            if parent and kind == "message":
                kind = "reply"
        from_address = work.sender or address_of(p.from_)
        summary = {
            "text": p.text or "", "html": p.html or "", "stripped_text": work.stripped,
            "to": list(p.to or []), "cc": list(p.cc or []), "reply_to": list(p.reply_to or []),
            "date": p.date or "", "in_reply_to": (ids(p.in_reply_to) or [""])[0],
            "references": list(p.references or []), "auth": work.auth, "report": report,
            "defects": list(p.defects or []), "forwarded_by": work.forwarded_by,
            "from_name": display_of(p.from_), "classification": c.rule, "message_id": message_id,
        }
        return Processed(kind=kind, tenant_id=tenant_id, usecase_id=usecase_id, address_id=route.address_id,
                         thread_id=thread_id, parent_message_id=parent, flags=flags, from_address=from_address,
                         subject=p.subject or "", summary=summary, attachments=work.attachments, raw=work.raw,
                         message_id=record_id, events=events)

    async def _signed(self, tag: verp.VerpTag | None) -> verp.VerpTag | None:
        """``tag`` when its MAC verifies (a guessed or old unsigned tag names nothing), else None."""
        if tag is None or self.hooks.verp is None or not await self.hooks.verp(tag):
            return None
        return tag

    async def _refers_to(self, report: dict[str, Any] | None) -> dict[str, Any] | None:
        """The outbound message and recipient a report is about: its VERP tag (signed), else the returned
        Message-ID, else (a complaint whose receiver stripped both) our Feedback-ID and its recipient."""
        if not report:
            return None
        tag = await self._signed(verp.VerpTag(**report["verp"]) if report.get("verp") else None)
        if tag:
            found = await self.store.suppressions.verp_recipient(tag.queue_id, tag.recipient_index)
            if found is not None:
                return {"tenant_id": found["tenant_id"], "usecase_id": found["usecase_id"], "queue_id": found["queue_id"],
                        "recipient": found["rcpt"], "by": "verp"}
        mid = (report.get("message_id") or "").strip("<>")
        if mid:
            out = await self.store.threads.outbound(mid)
            if len({r["tenant_id"] for r in out}) == 1:
                r = out[0]
                return {"tenant_id": r["tenant_id"], "usecase_id": r["usecase_id"], "queue_id": r["queue_id"],
                        "recipient": report.get("recipient") or _first_bounce(report), "message_id": mid, "by": "message_id"}
        named = arf.parse_feedback_id(report.get("feedback_id") or "")
        if named is not None and report.get("recipient") and await self.store.tenants.get_by_id(named[0]):
            return {"tenant_id": named[0], "usecase_id": named[1], "queue_id": None, "recipient": report["recipient"],
                    "by": "feedback_id"}
        return None


# ---------------------------------------------------------------------- helpers


def _first_bounce(report: dict[str, Any]) -> str:
    bounces = report.get("bounces") or []
    return bounces[0].get("recipient", "") if bounces else ""
