"""The daemon: wires the store, services and components together and runs their lifecycle.

    start:  lock state dir -> open store (integrity check, migrations) -> build services
            -> start components in order -> READY=1
    SIGHUP: load the config again; a valid one is handed to every component, an invalid one is
            logged and the old one stays
    SIGTERM/SIGINT: STOPPING=1 -> stop components in reverse order (listeners stop accepting,
            workers finish in-flight work until daemon.shutdown_timeout) -> flush the writer -> exit 0

Everything is passed through constructors; this module is the only place that knows the whole graph.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import generate_latest

from . import __version__, allocator, logs, submission
from .admin.registry import checked, collect
from .admin.server import AdminServer
from .api.endpoints import Deps as ApiDeps, endpoints as api_endpoints
from .api.routes import collect as collect_routes
from .api.server import ApiServer
from .budget import ByteBudget
from .config import Config, load_config, restart_keys, workers_count
from .delivery.scheduler import Scheduler
from .domains.keyimport import KeyImport
from .domains.verifier import Reverifier
from .errors import ConfigError, GatewayError, StartupError, StorageFull
from .inbound import authres
from .inbound import server as inbound_server
from .inbound.attachments import AttachmentFiles
from .inbound.delivery import AppDelivery
from .inbound.dnscache import DnsCache
from .inbound.forwarder import Forwarder
from .inbound.mime import MimeLimits, parse as parse_mime
from .inbound.pins import Pins
from .inbound.processor import Hooks, Processor
from .inbound.reply import stripped_reply
from .wakes import Coalesced
from .inbound.poller import Poller
from .lifecycle import Component, loop_factory
from .metrics import Metrics, budget_families, merged_exposition, store_families
from .node import node_id, node_prefix, token
from .paths import Paths, resolve_paths
from .services.addresses import AddressService
from .services.apikeys import ApiKeyService
from .services.connectors import ConnectorService
from .services.daemon import DaemonService
from .services.domains import DomainService
from .services.inbox import InboxService
from .services.pauses import PauseService
from .services.queue import QueueMonitor, QueueService
from .services.suppressions import SuppressionService
from .services.tenants import TenantService
from .services.unsubscribe import UnsubscribeService
from .services.usecases import UsecaseService
from .services.webhooks import EventService, WebhookService
from .statelock import StateLock
from .store import Store
from .singleton import Singleton
from .sweeper import Sweeper
from .systemd import Notifier
from .unsubscribe.links import Keyring, Links
from .unsubscribe.web import Unsubscriber
from .web import WebServer
from .pipelines import Pipelines, lower_priority
from .workers import WebWorker
from .webhooks.sender import WebhookSender

log = structlog.get_logger("daemon")

# Seconds /health waits for its probe write to commit before calling the store unwritable.
HEALTH_PROBE_TIMEOUT = 5.0
# Seconds past daemon.shutdown_timeout a component's stop() may take before it is abandoned.
STOP_GRACE = 2.0


def prepare_state_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
    except OSError as exc:
        raise StartupError(f"cannot create state directory {path}: {exc.strerror}") from None
    if not path.is_dir():
        raise StartupError(f"state directory {path} is not a directory")
    probe = path / f".write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # Writable but full: start anyway (degraded, the store says so in /health), so operators
            # get the admin socket rather than a restart loop.
            probe.unlink(missing_ok=True)
            log.warning("state_dir_full", path=str(path), error=exc.strerror)
            return
        raise StartupError(f"state directory {path} is not writable: {exc.strerror}") from None


class Daemon:
    """``role``: "single" (daemon.workers = 1: everything in this process), "parent" (the listeners and
    delivery in pipeline worker processes, gateway/pipelines.py; the rest here) or "pipeline" (one of those
    workers, gateway/pipeline.py: submission, the MX, the HTTP API and a scheduler on the parent's sockets and store)."""

    def __init__(self, config: Config, paths: Paths, *, config_path: str | None = None, notifier: Notifier | None = None,
                 role: str | None = None):
        self.role = role or ("parent" if workers_count(config.daemon.workers) > 1 else "single")
        self.config = config
        self.paths = paths
        self.config_path = config_path
        self.notifier = notifier or Notifier({})
        self.metrics = Metrics()
        self.store: Store | None = None
        self.components: list[Component] = []
        self.services: list[object] = []
        self.started_at = time.time()
        self.reloads = 0
        self._lock: StateLock | None = None
        self._stop_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self.pipelines: Pipelines | None = None
        # A pipeline worker's: its claim token, the listening sockets by endpoint name, and a way to
        # tell its parent something (gateway/pipeline.py sets them).
        self.token: str | None = None
        self.sockets: dict[str, socket.socket] = {}
        self.tell_parent: Any = lambda message: None
        # A pipeline worker's question to its parent, answered over the control channel (what only the
        # parent can do: a webhook test POST through its sender); gateway/pipeline.py sets it.
        self.ask_parent: Any = None
        self.api: ApiServer | None = None   # this process's API listener (none in a parent of workers: they serve it)
        # A pipeline worker's part of the mail path (gateway/pipelines.py roles): "accept" (its
        # listeners), "deliver" (its scheduler), or both; what wakes delivery when it has no scheduler
        # of its own; and, when it has no listeners, the addresses its loop guard refuses.
        self.serves = frozenset({"accept", "deliver"})
        self.wake_elsewhere: Any = lambda: None
        self.listening: dict[str, str] = {}
        self.node = ""   # this node's id (gateway/node.py), known once the state directory is locked

    # ------------------------------------------------------------------ wiring

    def _build(self) -> None:
        """Create the services and components. Later capabilities add theirs here, in start order."""
        store = self.store
        usecases = UsecaseService(store, return_path_prefix=self.config.domains.return_path_prefix,
                                  check_concurrency=self.config.submission.auth_concurrency)
        domains = DomainService(store, self.config)
        monitor = QueueMonitor(store, self.metrics)
        self.domains = domains  # SIGHUP hands it the new config (daemon.reload)
        # One count of message bytes in memory, shared by submission (refuses past it) and delivery (waits).
        self.budget = ByteBudget(self.config.daemon.memory_budget)
        # One keyring: delivery mints List-Unsubscribe links and VERP return paths with it; the web
        # pages, the MX's RCPT check and the report handling verify them.
        self.keyring = keyring = Keyring(store)
        suppressions = SuppressionService(store, verp=keyring.signed)
        # The loop guard reads the listening addresses when it checks one: listeners bind after this.
        self.scheduler = Scheduler(store, self.config, self.metrics, budget=self.budget,
                                   own_addresses=lambda: [*self.listening.values(), *(l["address"] for l in self.listeners())],
                                   links=Links(keyring, lambda: self.config), node=self.node, token=self.token,
                                   release_at_start=self.role != "pipeline")
        # Jobs that must run on one node at a time hold a lease in the store (gateway/singleton.py):
        # the README's "Several processes and nodes" says which and why.
        holder = token(self.node)

        def once(job: Component, lease: str) -> Component:
            return Singleton(job, store.leases, lease, holder, lambda: self.config.daemon.job_lease, metrics=self.metrics)

        # Delivery runs in the pipeline workers when there are some: what wakes it wakes them all.
        if self.role == "parent":
            self.pipelines = Pipelines(lambda: self.config, self.paths, self.metrics, node=self.node, release=store.delivery.release,
                                       release_all=lambda: store.delivery.release_node(self.node), wakes={})
            keyring.on_change(self.pipelines.keys_changed)  # their deliveries mint links with the keys
        if self.pipelines is not None:
            wake_delivery = self.pipelines.wake
        elif "deliver" not in self.serves:  # an accepting pipeline: the delivery processes' schedulers
            wake_delivery = self.wake_elsewhere
        else:
            wake_delivery = self.scheduler.wake
        # A full disk's episode ends: claim what waited at once rather than at the next poll.
        store.db.on_recovered(wake_delivery)
        # Mailbox polling: a connector change through the CLI wakes it to look at the connectors again.
        self.poller = Poller(store, self.config.poller, self.metrics, allow_loopback=self.config.delivery.allow_loopback,
                             lease=lambda job, name: once(job, name))
        # Received mail: the processor writes attachment files, the sweeper removes them, the
        # application's delivery serves them (one AttachmentFiles for all); the pins keep the sweeper
        # off files being written (gateway/inbound/pins.py). Webhook payloads and attachment URLs of
        # received mail come from app_delivery (the link keys sign those URLs too); forwards go
        # through the outbound queue.
        files, pins = AttachmentFiles(self.paths.attachments_dir), Pins()
        # One DNS cache for the MX's DMARC check at DATA and the processor's authentication.
        dns = DnsCache.from_config(self.config.dns)
        app_delivery = AppDelivery(store, keyring, lambda: self.config, files, self.metrics)
        forwarder = Forwarder(store, lambda: self.config, on_queued=wake_delivery)
        webhooks = WebhookSender(store, self.config.webhooks, self.metrics,
                                 node=f"{socket.gethostname()}:{self.paths.state_dir.resolve()}", inbound=app_delivery)
        unsubscriber = Unsubscriber(store, keyring, self.metrics, lambda: self.config)
        self.processor = self._processor(store, files, pins, suppressions, unsubscriber, dns)
        # Every spool commit (MX, poller, a release) wakes the processor; every finish, the forwarder.
        if self.role == "pipeline":  # the processor runs in the parent; one line per loop turn, not per message
            store.inbound.on_spooled(Coalesced(lambda: self.tell_parent({"op": "wake", "what": "processor"})))
        else:
            store.inbound.on_spooled(self.processor.wake)
        if self.pipelines is not None:
            self.pipelines.wakes.update(processor=self.processor.wake, poller=self.poller.wake, webhooks=webhooks.wake,
                                        delivery=self.pipelines.wake)   # an accepting pipeline queued mail
            self.pipelines.answers["webhook_post"] = lambda m: webhooks.post(m["url"], m["secret"], m["body"].encode(), m["event_ids"])
            self.pipelines.answers["forget_key"] = lambda m: self.pipelines.forget_key(m["key"])
        store.inbound.on_finished(forwarder.wake)
        self.services = [TenantService(store, on_switch=self._forget_keys), domains, usecases,
                         QueueService(store, wake=wake_delivery, on_change=monitor.kick),
                         PauseService(store, wake=wake_delivery, on_change=monitor.kick), DaemonService(self),
                         ConnectorService(store, lambda: self.config, on_change=self._parents("poller", self.poller.wake)),
                         WebhookService(store, allow_loopback=lambda: self.config.webhooks.allow_loopback,
                                        post=self._webhook_post if self.role == "pipeline" else webhooks.post,
                                        on_change=self._parents("webhooks", webhooks.wake)),
                         EventService(store), UnsubscribeService(store, keyring), suppressions, AddressService(store),
                         InboxService(store, files)]
        apikeys = ApiKeyService(store)
        self.services.append(apikeys)
        submission_server = submission.build(
            self.config, paths=self.paths, authenticate=usecases.authenticate, context=usecases.context,
            submit=store.queue.put, monthly_count=store.queue.monthly_count, metrics=self.metrics,
            on_queued=wake_delivery, budget=self.budget, check_recipient=suppressions.at_rcpt,
            lineage=store.queue.lineage, limits=store.limits,
        )
        self.submission, self.tls = submission_server, submission_server.tls
        # The MX listener shares submission's certificate and the memory budget. It starts after
        # submission and stops before it. It wakes the processor through store.inbound.on_spooled.
        listeners: list[Component] = [submission_server]
        if self.config.inbound.enabled:
            listeners.append(inbound_server.build(self.config, store=store, tls=submission_server.tls, budget=self.budget,
                                                  metrics=self.metrics, authenticate=inbound_server.dmarc_at_data(self.config, dns),
                                                  return_path=self.keyring.return_path))
        workers: list[Component] = [
            KeyImport(store),  # before the scheduler: keys from before the store held them sign from the first claim
            monitor,
            once(Reverifier(domains.reverify, interval=self.config.domains.reverify_interval,
                            concurrency=self.config.domains.verify_concurrency), "domains.reverify"),
            self.scheduler,
            unsubscriber,
            once(self.processor, "inbound.processor"),
            once(Sweeper(store, self.config.queue, self.metrics, webhooks=self.config.webhooks, processor=self.config.processor,
                         files=files, pins=pins), "sweeper"),
            webhooks,
            self.poller,
            app_delivery,
            forwarder,
            *listeners,
        ]
        # The tenant API calls the same service functions as the admin socket (gateway/api/endpoints.py).
        # It starts after the listeners' TLS context exists and stops before the workers it feeds.
        # With pipeline workers they serve it, each on its own socket (gateway/pipelines.py), and the
        # parent only passes revocations on.
        if self.config.api.enabled and self.pipelines is not None:
            apikeys.on_revoke = self._forget_keys
        elif self.config.api.enabled:
            methods = checked(collect(*self.services))
            deps = ApiDeps(store, methods, lambda: self.config, sending=submission_server.handler.submitter)
            api = self.api = ApiServer(lambda: self.config, store, collect_routes(*api_endpoints(deps)), self.metrics,
                                       tls=submission_server.tls, budget=self.budget, sock=self.sockets.get("api"))
            apikeys.on_revoke = self._forget_keys
            workers.append(api)
        # Components start in this order and stop in reverse. Web and admin start first and stop
        # last, so status and /health answer until the end; the listeners stop accepting before the
        # scheduler drains in-flight deliveries. The web server serves every component's routes (from its
        # own process with web.process: gateway/workers.py; it stops last there too).
        if self.role == "pipeline":
            # A pipeline worker serves its parent's sockets and delivers; the rest is the parent's.
            for listener in listeners:
                listener.sockets = {name: sock for name, sock in self.sockets.items() if name in {l.name for l in listener.listeners()}}
            self.components = [*([self.scheduler] if "deliver" in self.serves else []),
                               *(listeners if "accept" in self.serves else []),
                               *([self.api] if self.api is not None and "accept" in self.serves else [])]
            return
        if self.pipelines is not None:  # their place in the start order: last, after what they feed
            workers = [c for c in workers if c is not self.scheduler and c not in listeners]
            workers.append(self.pipelines)
        self.components = [
            self._web([r for c in workers for r in c.web_routes()], keyring),
            AdminServer(self.paths.socket, collect(*self.services), max_request_bytes=self.config.admin.max_request_bytes, metrics=self.metrics),
            *workers,
        ]

    def _parents(self, what: str, wake: Any) -> Any:
        """``wake`` where its component runs: here, or (in a pipeline worker) in the parent, told to."""
        if self.role != "pipeline":
            return wake
        return lambda: self.tell_parent({"op": "wake", "what": what})

    async def _forget_keys(self, public_id: str | None = None) -> None:
        """An API key revoked (None: every key, a tenant was switched), wherever it was done: this
        process's cache forgets it at once and so does every pipeline worker's before this returns
        (the parent tells them all; a worker asks its parent to)."""
        if self.api is not None:
            self.api.keys.forget(public_id)
        if self.pipelines is not None:
            await self.pipelines.forget_key(public_id)
        elif self.role == "pipeline":
            await self.ask_parent({"op": "forget_key", "key": public_id})

    async def _webhook_post(self, url: str, secret: str, body: bytes, event_ids: list[int]) -> dict[str, Any]:
        """A pipeline worker's webhook test: the parent's sender POSTs it (its session, its figures)."""
        reply = await self.ask_parent({"op": "webhook_post", "url": url, "secret": secret, "body": body.decode(),
                                       "event_ids": event_ids}, timeout=self.config.webhooks.timeout + 10.0)
        if reply is None:
            return {"at": time.time(), "ok": False, "status": None, "latency": 0.0, "error": "the daemon did not answer"}
        return reply["result"]

    def _web(self, routes: list[Any], keyring: Keyring) -> Component:
        """The public web server: in a child process of its own (web.process, gateway/workers.py),
        which serves the same routes from its own copy of the components, or in this one."""
        if not self.config.web.process:
            return WebServer(self.config.web.listen, self.metrics, self.health, routes=routes,
                             exposition=self.exposition if self.pipelines is not None else None)
        worker = WebWorker(lambda: self.config, self.paths, self.metrics)
        keyring.on_change(worker.keys_changed)  # a retired key stops working there at once too
        return worker

    def _processes_alive(self) -> bool:
        """Every child process serves (a worker being restarted is not alive)."""
        return all(c.alive for c in self.components if isinstance(c, (WebWorker, Pipelines)))

    def _processor(self, store: Store, files: AttachmentFiles, pins: Pins, suppressions: SuppressionService,
                   unsubscriber: Unsubscriber, dns: DnsCache) -> Processor:
        config = self.config
        authserv_id = config.domains.mx_hostname or config.daemon.hostname

        async def authenticate(raw: bytes, **envelope: Any) -> authres.Verdict:
            return await authres.authenticate(raw, resolver=dns, authserv_id=authserv_id, **envelope)

        async def report(raw: bytes, envelope_to: str) -> dict[str, Any]:
            d = self.config.delivery
            return await suppressions.handle_report(raw, envelope_to, soft_limit=d.soft_bounce_limit,
                                                    soft_window=d.soft_bounce_window, soft_for=d.soft_bounce_suppress_for)

        def limits(p: Any) -> MimeLimits:
            return MimeLimits(max_depth=p.max_depth, max_parts=p.max_parts, max_header_bytes=p.max_header_bytes,
                              max_decoded_bytes=p.max_decoded_bytes)

        return Processor(store, config, self.metrics, files=files, pins=pins, authenticate=authenticate, parse=parse_mime,
                         stripped_reply=stripped_reply, limits=limits, budget=self.budget,
                         hooks=Hooks(report=report, unsubscribe=unsubscriber.apply_token, verp=self.keyring.signed))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.notifier.notify(STATUS="starting: locking the state directory")
        pipeline = self.role == "pipeline"  # its parent holds the state directory and migrated the store
        if not pipeline:
            prepare_state_dir(self.paths.state_dir)
        self._lock = StateLock(self.paths.lock) if pipeline else StateLock(self.paths.lock).acquire()
        try:
            self.notifier.notify(STATUS="starting: opening the store")
            self.store = await Store.open(self.paths.database, self.config.store, secondary=pipeline)
            self.metrics.add_collector(lambda: store_families(self.store.db) if self.store else [])
            self.metrics.add_collector(lambda: budget_families(self.budget))
            self.node = node_id(self.config.daemon.node_id, self.paths.state_dir)
            # The lock says no earlier process of this node lives: its job leases go now (its claims at
            # the scheduler's start), so a restarted node runs its jobs at once; other nodes' wait out their lease.
            # A pipeline worker holds no jobs (its parent does, and lives).
            try:
                released = 0 if pipeline else await self.store.leases.release_prefix(node_prefix(self.node))
            except StorageFull:
                released = 0  # a full disk must not stop the start: those leases run out by themselves
            if released:
                log.info("job_leases_released", leases=released, why="held by a previous process of this node")
            if pipeline and "accept" not in self.serves:
                # A delivery process: its store writer runs at the daemon's priority, the rest lower.
                lower_priority(self.config.delivery.nice)
            self._build()
            if self.role == "parent":
                # The workers and the API load the same pair: a self-signed one is made here, once.
                self.tls.load()
            started: list[Component] = []
            try:
                for component in self.components:
                    self.notifier.notify(STATUS=f"starting: {component.name}")
                    await component.start()
                    started.append(component)
            except BaseException:
                deadline = asyncio.get_running_loop().time() + 5
                for component in reversed(started):
                    await component.stop(deadline)
                raise
        except BaseException:
            if self.store is not None:
                await self.store.close()
                self.store = None
            self._lock.release()
            raise
        self.started_at = time.time()
        listening = ", ".join(f"{l.name} {l.address}" for c in self.components for l in c.listeners())
        log.info("daemon_started", version=__version__, pid=os.getpid(), state_dir=str(self.paths.state_dir), listening=listening)
        self.notifier.notify(READY="1", STATUS=f"running; listening: {listening}", MAINPID=str(os.getpid()))
        interval = self.notifier.watchdog_interval
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))

    async def stop(self) -> None:
        self.notifier.notify(STOPPING="1", STATUS="stopping: finishing in-flight work")
        log.info("daemon_stopping", timeout=self.config.daemon.shutdown_timeout)
        deadline = asyncio.get_running_loop().time() + self.config.daemon.shutdown_timeout
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        loop = asyncio.get_running_loop()
        for component in reversed(self.components):
            # A component that overruns the deadline is cut off (after a short grace), so the writer
            # still gets flushed before systemd's TimeoutStopSec turns into a SIGKILL.
            grace = max(deadline - loop.time(), 0.0) + STOP_GRACE
            try:
                await asyncio.wait_for(component.stop(deadline), grace)
            except TimeoutError:
                log.error("component_stop_timed_out", component=component.name, seconds=round(grace, 3))
            except Exception:  # noqa: BLE001 - keep stopping the others
                log.exception("component_stop_failed", component=component.name)
        if self.store is not None:
            self.notifier.notify(STATUS="stopping: flushing the store")
            await self.store.close()
            self.store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        log.info("daemon_stopped")

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def reload(self) -> bool:
        """Load the configuration again; True when applied. Reloads never overlap."""
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        # systemd wants RELOADING=1 with the CLOCK_MONOTONIC time, then READY=1 once done.
        self.notifier.notify(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000), STATUS="reloading the configuration")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            self.metrics.config_reloads.labels(outcome="refused").inc()
            log.error("config_reload_refused", problems=exc.problems, path=self.config_path)
            self.notifier.notify(READY="1", STATUS="running; configuration reload refused, the previous one stays")
            return False
        needs_restart = restart_keys(self.config, new)
        if needs_restart:
            # Bound sockets and open files keep their old values until the daemon restarts.
            log.warning("config_change_needs_restart", keys=needs_restart)
        await self.apply(new)
        self.reloads += 1
        self.metrics.config_reloads.labels(outcome="applied").inc()
        log.info("config_reloaded", path=self.config_path, reloads=self.reloads)
        self.notifier.notify(READY="1", STATUS=f"running; configuration reloaded ({self.reloads})")
        return True

    async def apply(self, new: Config) -> None:
        """Hand a checked configuration to everything (a pipeline worker gets its parent's this way)."""
        self.config = new
        self.domains.apply_config(new)  # new records and resolvers for new work; runs in flight keep theirs
        logs.configure(new.log)
        self.budget.configure(new.daemon.memory_budget)
        if self.store is not None:
            self.store.db.space.min_free = new.store.min_free_bytes
        # The parent's submission listeners are its workers', but their handler sends for the API and
        # their certificate serves it: both take the new values here too.
        here = [self.submission] if self.pipelines is not None else []
        for component in [*here, *self.components]:
            try:
                await component.reload(new)
            except Exception:  # noqa: BLE001 - one component failing must not stop the others
                log.exception("component_reload_failed", component=component.name)
        allocator.settle(again=True)   # what the old configuration left in cycles is collected, the new parts frozen

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop. SIGHUP reloads.

        The handlers go in before start: a SIGTERM while starting stops cleanly once started, and a
        SIGHUP that early must not kill the process (its default action).
        """
        loop = asyncio.get_running_loop()
        reloading: set[asyncio.Task] = set()
        started = asyncio.Event()

        async def reload_when_started() -> None:
            await started.wait()
            await self.reload()

        def on_hup() -> None:
            task = loop.create_task(reload_when_started())
            reloading.add(task)
            task.add_done_callback(reloading.discard)

        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await self.start()
            allocator.settle()   # what start built lives as long as we do: no full collection walks it again
            started.set()
            try:
                await self._stop_requested.wait()
            finally:
                for task in list(reloading):
                    task.cancel()
                await asyncio.gather(*reloading, return_exceptions=True)
                await self.stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 every ``interval`` while the store writer and every worker process live: a dead
        writer means no 250s can be given, a worker that stays dead no pages, so systemd should
        restart us rather than think we are fine (a worker restarted within the interval is fine)."""
        while True:
            if self.store is None or not self.store.db.writer_alive:
                log.error("watchdog_withheld", reason="store writer is not running")
            elif not self._processes_alive():
                log.error("watchdog_withheld", reason="a worker process is not running")
            else:
                self.notifier.notify(WATCHDOG="1")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ reporting

    def listeners(self) -> list[dict[str, Any]]:
        return [l.as_dict() for c in self.components for l in c.listeners()]

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when nobody reports a problem. The store, the listeners and every component name
        their own (``problems()``), so /health says why it answers 503."""
        problems: list[str] = []
        writable = self.store is not None and await self.store.probe_writable(timeout=HEALTH_PROBE_TIMEOUT)
        if self.store is None:
            problems.append("store: not open")
        else:
            problems += self.store.problems()
            if not writable and not problems:
                problems.append(f"store: a probe write did not commit within {HEALTH_PROBE_TIMEOUT:g}s")
        down = [l["name"] for l in self.listeners() if not l["up"]]
        problems += [f"{name}: listener is down" for name in down]
        for component in self.components:
            problems += component.problems()
        return not problems, {"problems": problems, "store_writable": writable, "listeners_down": down}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "state_dir": str(self.paths.state_dir),
            "socket": str(self.paths.socket),
            "config_path": self.config_path,
            "reloads": self.reloads,
            "listeners": self.listeners(),
            "node": self.node,
            # The jobs that run on one node at a time: here, or on the node holding the lease.
            "jobs": {c.lease: "running" if c.running else "elsewhere" for c in self.components if isinstance(c, Singleton)},
        }
        if self.store is not None:
            db = self.store.db
            status["store"] = {"full": db.full, "full_since": db.full_since, "reason": db.full_reason or None,
                               "refused_writes": db.full_refused, "free_bytes": db.space.free(),
                               "min_free_bytes": db.space.min_free}
        for component in self.components:
            for key, value in component.status().items():
                if key == "workers":  # the web worker's and the pipelines' rows, together
                    status.setdefault("workers", []).extend(value)
                else:
                    status[key] = value
        return status

    async def live_status(self) -> dict[str, Any]:
        """status(), each pipeline worker's row with its own components' status, and their deliveries summed."""
        status = self.status()
        if self.pipelines is None:
            return status
        live = {row["name"]: row["status"] for row in await self.pipelines.live_status()}
        total: dict[str, Any] = {}
        for row in status.get("workers", []):
            if row["name"] in live:
                row["status"] = live[row["name"]]
                for key, value in ((row["status"] or {}).get("delivery") or {}).items():
                    total[key] = total.get(key, 0) + value
        status["delivery"] = total
        return status

    async def exposition(self) -> bytes:
        """/metrics for the whole daemon: this process's figures and every pipeline worker's."""
        own = generate_latest(self.metrics.registry)
        if self.pipelines is None:
            return own
        texts = await self.pipelines.expositions()
        return await asyncio.to_thread(merged_exposition, own.decode(), *texts)   # CPU: not on the loop


# ---------------------------------------------------------------------- entry point


def run_daemon(config_path: str | None, state_dir: str | None) -> int:
    """`gateway run`: returns the process exit code. Errors print one line, never a traceback."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gateway: config error: {problem}", file=sys.stderr)
        return 2
    logs.configure(config.log)
    allocator.tune()
    # The event loop shares the GIL with the store's writer thread (and the read pool): a loop that
    # let go of it for a SQLite call waits for the writer's next release, up to the switch interval.
    # 0.5 ms cut unsubscribe POST p99 beside submission (scripts/bench_unsubscribe.py: 421-427 ms ->
    # 177-210 ms, loaded machine) but MX acceptance fell 1,030-1,120 -> 909-974 msg/s in interleaved
    # runs of scripts/bench_mx.py: mail comes first, so the default stays Python's 5 ms.
    sys.setswitchinterval(config.daemon.gil_switch_interval)
    paths = resolve_paths(config, state_dir)
    daemon = Daemon(config, paths, config_path=config_path, notifier=Notifier())
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(daemon.run())
    except GatewayError as exc:
        # StartupError, StoreError...: the message already names the problem.
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the log keeps the traceback; the terminal gets one line
        log.exception("daemon_crashed")
        print(f"gateway: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
