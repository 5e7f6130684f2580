"""The mailbox poller: one task per connector with enabled incoming settings, pulling mail from an
external IMAP or POP3 mailbox into the inbound spool.

    poller (supervisor): connectors table -> one MailboxTask per enabled incoming setting
                         (rescanned every poller.rescan_interval, at once on a connector change or SIGHUP)
    MailboxTask: connect -> TLS -> login -> [select folder] -> batches:
                 list new -> sizes and Message-IDs -> skip known / too large -> fetch bodies
                 -> store.mailboxes.spool (rows + checkpoint, one commit) -> only then \\Seen / move / delete
                 -> IMAP: IDLE (re-issued every poller.idle_timeout) or sleep poller.interval; POP3: QUIT, sleep

What is new: IMAP, messages with a UID above the checkpoint's under the same UIDVALIDITY (first poll
and after a UIDVALIDITY change: with ``after seen`` the unseen ones, else the whole folder, which the
gateway drains). With ``move``/``delete`` every message still in the folder is looked at, so one
whose post-store action was cut off gets it on the next poll. POP3: UIDLs not in the checkpoint.
Whatever was spooled already (same content hash or Message-ID from this connector) is not spooled
again, only given its post-store action.

A message over poller.max_message_size stays on the server, counted and reported once (event
inbound_skipped). A failure (connect, TLS, login, a command, the store) ends the session; the task
backs off exponentially (poller.backoff_base doubling to backoff_max), records the error for
`connector show` and `gateway status`, and tries again. Nothing here can stop the daemon or another
connector's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..config import Config, PollerConfig
from .. import remotes
from ..errors import StoreError
from ..lifecycle import Component
from ..metrics import Metrics
from ..store import Store
from ..store.inbound import Spooled
from ..store.mailboxes import Checkpoint
from ..store.queue import QueueIds
from .imap import ImapSession
from .mailbox import Incoming, MailboxError, crlf, describe, header_message_id, tls_context
from .pop3 import Pop3Session

log = structlog.get_logger("poller")
SKIPPED = "skipped:"


def backoff(failures: int, config: PollerConfig) -> float:
    """Seconds to wait after ``failures`` consecutive failures: base doubling, capped, +-10% jitter
    so many mailboxes of one failing server do not come back in step."""
    delay = min(config.backoff_base * (2 ** max(failures - 1, 0)), config.backoff_max)
    return delay * random.uniform(0.9, 1.1) if delay else 0.0


def fingerprint(spec: dict[str, Any]) -> str:
    """What a running task depends on: any change restarts it."""
    return hashlib.sha256(json.dumps([spec["tenant_id"], spec["settings"].get("incoming"), spec["incoming_secret"]],
                                     sort_keys=True).encode()).hexdigest()


@dataclass
class TaskState:
    """What `gateway status` shows of one mailbox (no secrets)."""
    tenant: str
    name: str
    mailbox: str
    state: str = "starting"          # starting, polling, idle, waiting, backoff; elsewhere: another node holds its lease
    last_poll_at: float | None = None
    last_error: str = ""
    failures: int = 0
    backoff_until: float | None = None
    fetched: int = 0                 # spooled by this task since the daemon started

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Batch:
    """One round's worth of messages: what to spool and what to change on the server after the commit."""
    items: list[Spooled] = field(default_factory=list)
    done: list[Any] = field(default_factory=list)       # UIDs (IMAP) or message numbers (POP3) to act on
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    uidls: list[str] = field(default_factory=list)


def _groups(uids: list[int], sizes: dict[int, int], limit: int) -> list[list[int]]:
    """UIDs in fetch groups of at most ``limit`` bytes (a bigger message alone)."""
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for uid in uids:
        if group and total + sizes[uid] > limit:
            groups.append(group)
            group, total = [], 0
        group.append(uid)
        total += sizes[uid]
    if group:
        groups.append(group)
    return groups


class MailboxTask(Component):
    """Polls one connector's mailbox until stopped (under its own lease with several nodes: Poller)."""

    name = "mailbox"

    def __init__(self, spec: dict[str, Any], store: Store, config: Callable[[], PollerConfig], ids: QueueIds,
                 metrics: Metrics | None = None, on_spooled: Callable[[], None] | None = None,
                 allow_loopback: Callable[[], bool] = lambda: False):
        self.spec = spec
        self.allow_loopback = allow_loopback   # delivery.allow_loopback: a mailbox on loopback (remotes.py)
        self.connector_id: int = spec["id"]
        self.tenant_id: int = spec["tenant_id"]
        self.incoming = Incoming.from_settings(spec["settings"]["incoming"], spec["incoming_secret"])
        self.store = store
        self.config = config           # () -> PollerConfig, the current one (SIGHUP changes it)
        self.ids = ids
        self.metrics = metrics
        self.on_spooled = on_spooled
        self.state = TaskState(spec["tenant"], spec["name"], self.incoming.mailbox)
        self.fingerprint = fingerprint(spec)
        self.task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._worked = False           # the current session completed a round

    async def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"poller:{self.spec['tenant']}/{self.spec['name']}")

    async def stop(self, deadline: float = 0.0) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None

    def wake(self) -> None:
        """Poll now (a POP3 or non-IDLE mailbox otherwise waits poller.interval)."""
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        cp = await self._checkpoint()
        failures = cp["failures"] if cp else 0
        if cp and cp["backoff_until"] and cp["backoff_until"] > time.time():
            # The daemon restarted while this mailbox backed off: the wait goes on (a wrong password
            # is not tried again at once). A change of its settings cleared the backoff instead.
            self.state.state, self.state.last_error, self.state.failures = "backoff", cp["last_error"], failures
            self.state.backoff_until = cp["backoff_until"]
            await self._sleep(cp["backoff_until"] - time.time())
        last_quick_retry = 0.0
        while True:
            self._worked = False
            try:
                if self.incoming.protocol == "imap":
                    await self._imap_session()
                else:
                    await self._pop3_round()
                    await self._sleep(self.config().interval)
                    continue
            except asyncio.CancelledError:
                raise
            except MailboxError as exc:
                error = str(exc)
            except StoreError as exc:   # StorageFull included: nothing was spooled, nothing changed
                error = f"store: {exc}"
            except Exception as exc:  # noqa: BLE001 - one mailbox must never take the daemon down
                log.exception("mailbox_poll_crashed", tenant=self.state.tenant, connector=self.state.name)
                error = f"internal: {describe(exc)}"
            now = time.monotonic()
            if self._worked and now - last_quick_retry > self.config().backoff_base:
                # A session that had worked broke (the server restarted, an idle connection was cut):
                # reconnect at once, once per backoff_base; a second break in a row backs off.
                last_quick_retry = now
                log.info("mailbox_reconnecting", tenant=self.state.tenant, connector=self.state.name, reason=error)
                continue
            await self._backoff(self.state.failures + 1, error)

    async def _checkpoint(self) -> dict[str, Any] | None:
        """The stored checkpoint; a store that fails to read it is tried again after a backoff (one
        failed read must not end the task: nothing would poll the mailbox until a restart)."""
        failures = 0
        while True:
            try:
                return await self.store.mailboxes.checkpoint(self.connector_id)
            except StoreError as exc:
                failures += 1
                await self._backoff(failures, f"store: {exc}")

    async def _backoff(self, failures: int, error: str) -> None:
        if self.metrics is not None:
            self.metrics.mailbox_failures.labels(protocol=self.incoming.protocol).inc()
        config = self.config()
        now = time.time()
        until = now + backoff(failures, config)
        self.state.state, self.state.last_error, self.state.failures, self.state.backoff_until = "backoff", error, failures, until
        self.state.last_poll_at = now
        log.warning("mailbox_poll_failed", tenant=self.state.tenant, connector=self.state.name, error=error,
                    failures=failures, retry_in=round(until - now, 3))
        with contextlib.suppress(StoreError):
            await self.store.mailboxes.record(self.connector_id, error=error, failures=failures, backoff_until=until, now=now)
        await self._sleep(max(until - time.time(), 0.0))

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _ok(self) -> None:
        self._worked = True
        now = time.time()
        await self.store.mailboxes.record(self.connector_id, now=now)   # stored before it is shown as done
        self.state.last_poll_at, self.state.last_error, self.state.failures, self.state.backoff_until = now, "", 0, None

    # ------------------------------------------------------------------ shared by both protocols

    async def _prepare(self, bodies: dict[Any, bytes], order: Sequence[Any], batch: Batch) -> None:
        """Bodies -> spool items, minus what this connector spooled already (content hash, Message-ID)."""
        inc = self.incoming
        prepared = []
        for key in order:
            raw = crlf(bodies[key])
            prepared.append((key, raw, hashlib.sha256(raw).hexdigest(), header_message_id(raw)))
        hashes, mids = await self.store.mailboxes.known(self.connector_id, self.tenant_id,
                                                        hashes=[p[2] for p in prepared], message_ids=[p[3] for p in prepared])
        fresh_hashes: set[str] = set()
        for key, raw, digest, mid in prepared:
            batch.done.append(key)
            if digest in hashes or (mid and mid in mids) or digest in fresh_hashes:
                batch.duplicates += 1
                continue
            fresh_hashes.add(digest)
            batch.items.append(Spooled(inbound_id=self.ids.new(), source=inc.protocol, raw=raw, tenant_id=self.tenant_id,
                                       recipients=[inc.address] if inc.address else [], client=inc.client,
                                       connector_id=self.connector_id, header_message_id=mid))

    async def _commit(self, batch: Batch, checkpoint: Checkpoint) -> None:
        await self.store.mailboxes.spool(self.connector_id, self.tenant_id, batch.items, checkpoint)
        self.state.fetched += len(batch.items)
        if batch.items and self.on_spooled is not None:
            self.on_spooled()   # the processor looks at the spool now rather than at its next poll
        if self.metrics is not None:
            for outcome, n in (("spooled", len(batch.items)), ("duplicate", checkpoint.duplicates), ("skipped", len(checkpoint.skipped))):
                if n:
                    self.metrics.mailbox_messages.labels(protocol=self.incoming.protocol, outcome=outcome).inc(n)
        if batch.items or batch.duplicates or batch.skipped:
            log.info("mailbox_spooled", tenant=self.state.tenant, connector=self.state.name, spooled=len(batch.items),
                     duplicates=batch.duplicates, skipped=len(batch.skipped))

    # ------------------------------------------------------------------ IMAP

    async def _refuse_remote(self, config: PollerConfig) -> None:
        """MailboxError before connecting to a host remotes.py refuses (the tenant's name may resolve
        to link-local, e.g. cloud metadata, or to loopback): last_error would quote what answered."""
        why = await remotes.resolved_refusal(self.incoming.host, self.incoming.port, allow_loopback=self.allow_loopback(),
                                             setting="delivery.allow_loopback", timeout=config.connect_timeout)
        if why:
            raise MailboxError("connect", f"not connecting: {why}")

    async def _imap_session(self) -> None:
        config = self.config()
        inc = self.incoming
        await self._refuse_remote(config)
        self.state.state = "polling"
        session = ImapSession(inc, tls_context(inc, config.ca_file), connect_timeout=config.connect_timeout,
                              command_timeout=config.command_timeout)
        try:
            await session.open()
            folder = await session.select(inc.folder)
            cp = await self.store.mailboxes.checkpoint(self.connector_id)
            if cp is None or cp["mailbox"] != inc.mailbox or cp["uidvalidity"] != folder.uidvalidity:
                if cp is not None and cp["mailbox"] == inc.mailbox and cp["uidvalidity"]:
                    log.warning("mailbox_uidvalidity_changed", tenant=self.state.tenant, connector=self.state.name,
                                old=cp["uidvalidity"], new=folder.uidvalidity)
                await self.store.mailboxes.reset(self.connector_id, inc.mailbox, folder.uidvalidity)
                last_uid, fresh = 0, True
            else:
                last_uid, fresh = cp["last_uid"], False
            first = True
            while True:
                last_uid = await self._imap_round(session, folder.uidvalidity, last_uid, fresh=fresh, first=first)
                if fresh and inc.after == "seen" and folder.uidnext - 1 > last_uid:
                    # The unseen messages are taken; what else is below UIDNEXT is the mailbox's read
                    # history, not new mail: the next round's "UID n+1:*" must start above it.
                    last_uid = folder.uidnext - 1
                    await self._commit(Batch(), Checkpoint(mailbox=inc.mailbox, uidvalidity=folder.uidvalidity, last_uid=last_uid))
                fresh = first = False
                await self._ok()
                config = self.config()
                if config.idle and session.can_idle:
                    self.state.state = "idle"
                    await session.idle(config.idle_timeout)
                else:
                    self.state.state = "waiting"
                    await self._sleep(config.interval)
                    await session.select(inc.folder)   # a NOOP's worth: the server reports new mail
                self.state.state = "polling"
        finally:
            await session.close()

    async def _candidates(self, session: ImapSession, last_uid: int, *, fresh: bool, first: bool) -> list[int]:
        if self.incoming.after != "seen" and first:
            # The folder is the gateway's to drain: whatever is still there (an action cut off last
            # time, a message too large) is looked at once per session; deduplication does the rest.
            return await session.search("ALL")
        if fresh:
            return await session.search("UNSEEN")
        # "n:*" always names the highest UID even when it is below n: filter here.
        return [u for u in await session.search("UID", f"{last_uid + 1}:*") if u > last_uid]

    async def _imap_round(self, session: ImapSession, uidvalidity: int, last_uid: int, *, fresh: bool, first: bool) -> int:
        """Everything new, batch by batch; returns the new last UID."""
        config = self.config()
        candidates = await self._candidates(session, last_uid, fresh=fresh, first=first)
        for start in range(0, len(candidates), config.batch):
            last_uid = await self._imap_batch(session, uidvalidity, last_uid, candidates[start:start + config.batch])
        return last_uid

    async def _imap_batch(self, session: ImapSession, uidvalidity: int, last_uid: int, chunk: list[int]) -> int:
        config = self.config()
        inc = self.incoming
        metas = await session.meta(chunk)
        batch = Batch()
        _, known_ids = await self.store.mailboxes.known(self.connector_id, self.tenant_id,
                                                        message_ids=[m.message_id for m in metas])
        wanted: list[int] = []
        for m in metas:
            if m.size > config.max_message_size:
                if m.uid > last_uid:   # reported once; it stays where it is
                    batch.skipped.append(f"uid {m.uid} of {inc.folder}: {m.size} bytes, over poller.max_message_size "
                                         f"({config.max_message_size})")
                continue
            if m.message_id and m.message_id in known_ids:
                batch.done.append(m.uid)
                batch.duplicates += 1
                continue
            wanted.append(m.uid)
        new_last = max([last_uid, *(m.uid for m in metas)])
        groups = _groups(wanted, {m.uid: m.size for m in metas}, config.batch_bytes)
        for i, uids in enumerate(groups):
            bodies = await session.bodies(uids)
            missing = [u for u in uids if u not in bodies]   # expunged meanwhile by someone else
            if missing:
                log.info("mailbox_messages_vanished", connector=self.state.name, uids=missing[:20])
            await self._prepare(bodies, [u for u in uids if u in bodies], batch)
            if i < len(groups) - 1:
                # Commit each group as it comes, so memory holds one group; the checkpoint moves with the last.
                await self._commit(batch, Checkpoint(mailbox=inc.mailbox, uidvalidity=uidvalidity, last_uid=last_uid,
                                                     duplicates=batch.duplicates))
                await self._after_imap(session, batch.done)
                batch = Batch(skipped=batch.skipped)
        await self._commit(batch, Checkpoint(mailbox=inc.mailbox, uidvalidity=uidvalidity, last_uid=new_last,
                                             duplicates=batch.duplicates, skipped=batch.skipped))
        await self._after_imap(session, batch.done)
        return new_last

    async def _after_imap(self, session: ImapSession, uids: list[Any]) -> None:
        """The post-store action, only ever after the commit that holds these messages."""
        if not uids:
            return
        inc = self.incoming
        if inc.after == "seen":
            await session.mark_seen(uids)
        elif inc.after == "delete":
            await session.delete(uids)
        else:
            await session.move(uids, inc.move_to)

    # ------------------------------------------------------------------ POP3

    async def _pop3_round(self) -> None:
        config = self.config()
        inc = self.incoming
        await self._refuse_remote(config)
        self.state.state = "polling"
        session = Pop3Session(inc, tls_context(inc, config.ca_file), connect_timeout=config.connect_timeout,
                              command_timeout=config.command_timeout, max_line=config.max_message_size + 2)
        try:
            await session.open()
            cp = await self.store.mailboxes.checkpoint(self.connector_id)
            if cp is None or cp["mailbox"] != inc.mailbox:
                await self.store.mailboxes.reset(self.connector_id, inc.mailbox)
            listing = await session.listing()
            handled = await self.store.mailboxes.uidls(self.connector_id)
            # A message left on the server for its size is remembered as "skipped:UIDL": reported
            # once, and never deleted.
            todo = [(n, u, s) for n, u, s in listing if u not in handled and SKIPPED + u not in handled]
            to_delete: list[int] = []
            # With after=delete a message stored before a broken session is still listed and handled:
            # it gets its DELE now.
            if inc.after == "delete":
                to_delete += [n for n, u, _ in listing if u in handled]
            while todo:
                chunk, todo = self._pop3_chunk(todo, config)
                batch = Batch()
                bodies: dict[int, bytes] = {}
                order = []
                for number, uidl, size in chunk:
                    if size > config.max_message_size:
                        batch.uidls.append(SKIPPED + uidl)
                        batch.skipped.append(f"message {uidl}: {size} bytes, over poller.max_message_size ({config.max_message_size})")
                        continue
                    batch.uidls.append(uidl)
                    bodies[number] = await session.retrieve(number)
                    order.append(number)
                await self._prepare(bodies, order, batch)
                await self._commit(batch, Checkpoint(mailbox=inc.mailbox, uidls=batch.uidls, duplicates=batch.duplicates,
                                                     skipped=batch.skipped))
                if inc.after == "delete":
                    to_delete += batch.done
            if to_delete:
                await session.delete(to_delete)
            await session.quit()
            deleted = set(to_delete)
            kept = [u for n, u, _ in listing if n not in deleted]
            await self.store.mailboxes.prune_uidls(self.connector_id, kept + [SKIPPED + u for u in kept])
            await self._ok()
            self.state.state = "waiting"
        finally:
            await session.close()

    @staticmethod
    def _pop3_chunk(todo: list[tuple[int, str, int]], config: PollerConfig) -> tuple[list, list]:
        total = 0
        for i, (_, _, size) in enumerate(todo):
            if i >= config.batch or (i and total + min(size, config.max_message_size) > config.batch_bytes):
                return todo[:i], todo[i:]
            total += min(size, config.max_message_size)
        return todo, []


class Poller(Component):
    """The supervisor: keeps one MailboxTask per enabled incoming connector."""

    name = "poller"

    def __init__(self, store: Store, config: PollerConfig, metrics: Metrics | None = None,
                 on_spooled: Callable[[], None] | None = None, *, allow_loopback: bool = False,
                 lease: Callable[[Component, str], Component] | None = None):
        self.store = store
        self.config = config
        self.allow_loopback = allow_loopback   # delivery.allow_loopback (mailbox hosts follow remotes.py's rule)
        self.metrics = metrics
        self.on_spooled = on_spooled   # called after each commit that spooled messages (the processor's wake)
        self.tasks: dict[int, MailboxTask] = {}
        # Two nodes must never poll one mailbox at once (two sessions would fetch and spool its mail
        # twice): each connector's task runs under a lease of its own, ``poller:<connector id>``
        # (the daemon's Singleton; None: run it here, as tests that build a Poller do).
        self.lease = lease
        self._jobs: dict[int, Component] = {}
        self.ids = QueueIds()
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task | None = None
        self._scanned = asyncio.Event()

    async def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="poller")

    async def stop(self, deadline: float) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await asyncio.gather(*(t.stop(deadline) for t in self._jobs.values()))
        self.tasks.clear()
        self._jobs.clear()

    async def reload(self, config: Config) -> None:
        self.config = config.poller
        self.allow_loopback = config.delivery.allow_loopback
        self.wake()

    def wake(self) -> None:
        """Look at the connectors again now (the CLI changed one)."""
        self._wake.set()

    async def rescanned(self) -> None:
        """Wait until the next scan of the connectors has been applied (tests, benchmarks)."""
        self._scanned.clear()
        self.wake()
        await self._scanned.wait()

    async def _supervise(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._scan()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep supervising; the next scan tries again
                log.exception("poller_scan_failed")
            self._scanned.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.rescan_interval)

    async def _scan(self) -> None:
        specs = {s["id"]: s for s in await self.store.mailboxes.incoming()}
        for cid in [c for c in self.tasks if c not in specs or self.tasks[c].fingerprint != fingerprint(specs[c])]:
            self.tasks.pop(cid)
            await self._jobs.pop(cid).stop(asyncio.get_running_loop().time())
        for cid, spec in specs.items():
            if cid in self.tasks:
                continue
            try:
                task = MailboxTask(spec, self.store, lambda: self.config, self.ids, self.metrics, self.on_spooled,
                                   lambda: self.allow_loopback)
            except (KeyError, ValueError, TypeError) as exc:
                log.error("mailbox_settings_unusable", connector=spec["name"], tenant=spec["tenant"], error=describe(exc))
                continue
            job = self.lease(task, f"poller:{cid}") if self.lease is not None else task
            self.tasks[cid] = task
            self._jobs[cid] = job
            await job.start()

    def status(self) -> dict[str, Any]:
        return {"poller": {"mailboxes": [self._view(cid, t) for cid, t in sorted(self.tasks.items(), key=lambda i: (i[1].state.tenant, i[1].state.name))]}}

    def _view(self, cid: int, task: MailboxTask) -> dict[str, Any]:
        view = task.state.as_dict()
        job = self._jobs.get(cid)
        if job is not None and job is not task and not getattr(job, "running", True):
            view["state"] = "elsewhere"   # its lease is another node's: that node polls it
        return view
