"""The pipeline workers as the daemon sees them (``daemon.workers`` > 1): their listening sockets, their
share of the daemon's bounds, their claim tokens, and one component ("pipelines") that starts, wakes,
reloads, asks and stops them all. Each is a ``workers.Child`` running gateway/pipeline.py.

Why N full pipelines, each on its own SO_REUSEPORT sockets, rather than submission processes around
one writer process: every write already goes through one group-committing writer per process, and
the writers of the processes take turns on the file (gateway/store/turns.py); funnelling each write
to one process would add a round trip per write and keep every commit's CPU on one core. Why a
socket per worker rather than one shared by all: on one shared socket the worker that wakes first
takes nearly every connection (measured: 4 of 4 sessions, 90 of 134 log lines, on one of two
workers); the kernel spreads SO_REUSEPORT connections evenly.

Roles (``daemon.delivery_workers``, auto: as many as the pipelines): the N pipelines only accept
("accept": submission and the MX) and M delivery processes ("deliver": a scheduler, no sockets) run
beside them at ``delivery.nice``. In one process a 250 waits behind the delivery work on its event
loop and GIL (signing, SMTP sessions, result commits), so acceptance ran at the end-to-end rate;
apart, and at a lower priority, the kernel gives acceptance the cores first and delivery drains the
queue behind it (never starved: a nice value lowers a share). A pipeline's queued messages wake
delivery through the daemon (``_event``), as the daemon's own wakes do (``wake``). With 0 delivery
processes each pipeline does both ("both"), the layout before.

Figures (``scripts/bench_submission.py --messages 100 --workers N``, 20 sessions of 4 KiB, STARTTLS +
AUTH; this 2-core machine shared with six other sessions, load average 8-11 throughout, so they
say little beyond "no worse"): workers 1: 146 msg/s, p99 278 ms, 1.81 ms CPU/msg; 2: 156 and 113
msg/s, p99 243-294 ms, 2.2-2.5 ms CPU/msg; 3: 96 msg/s, p99 359 ms, 2.4 ms CPU/msg. The side-by-side
kit (``/work/shared/bench/side_by_side.py --modes gw -n 3000 -r 1 --gw-set delivery.allow_loopback=true
--gw-set daemon.workers=N``, interleaved, load 8-9, the machine 99% busy before each run): 2 workers
81.0 / 88.7 msg/s end to end, 1 process 100.7 / 136.8. With no idle core a second process only adds
overhead; the gain on an idle machine is still to be measured, hence the default of 1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
from collections.abc import Callable
from typing import Any

import structlog

from .config import Config, delivery_workers_count, workers_count
from .errors import StorageFull
from .lifecycle import Component, Listener, format_address
from .metrics import Metrics, worker_families
from .paths import Paths
from .workers import Child, bind

log = structlog.get_logger("workers")


def share(config: Config, n: int, *, delivering: int | None = None) -> Config:
    """The config one of the daemon's ``n`` child processes of the mail path runs with: the daemon-wide
    bounds divided among them, so they hold no more message bytes, outbound connections and claims
    than one process would. The memory budget is shared by all ``n``; the delivery bounds by the
    ``delivering`` ones (all ``n`` unless said)."""
    delivering = n if delivering is None else delivering
    if n <= 1 and delivering <= 1:
        return config
    d, dl, api, m = config.daemon, config.delivery, config.api, max(delivering, 1)
    a = max(n - delivering if delivering < n else n, 1)   # the processes that accept (and serve the API)
    return dataclasses.replace(
        config,
        daemon=dataclasses.replace(d, memory_budget=max(d.memory_budget // max(n, 1), 1 << 20)),
        api=dataclasses.replace(api, max_inflight=max(api.max_inflight // a, 1), max_inflight_per_client=max(api.max_inflight_per_client // a, 1),
                                max_inflight_per_key=max(api.max_inflight_per_key // a, 1)),
        delivery=dataclasses.replace(dl, workers=max(dl.workers // m, 1), per_destination=max(dl.per_destination // m, 1),
                                     max_inflight=max(dl.max_inflight // m, 1)))


def lower_priority(nice: int) -> None:
    """A delivery process's event loop (delivery.nice): the calling thread and the threads it starts
    from now on (DKIM signing) run at ``nice``, so acceptance gets the cores first. On Linux a nice value
    is a thread's: the store's writer and readers, started before this, keep the daemon's priority, so
    a commit of theirs does not hold the turn at the file (and the acceptance commits behind it)
    while the kernel runs everything else first."""
    if nice > 0:
        os.setpriority(os.PRIO_PROCESS, 0, min(os.getpriority(os.PRIO_PROCESS, 0) + nice, 19))


class PipelineWorker(Child):
    """One pipeline process (gateway/pipeline.py): submission, the MX and a delivery scheduler; with
    delivery processes beside it (``role`` "accept") submission and the MX only; as one of those
    (``role`` "deliver") the scheduler only, at a lower priority."""

    module = "gateway.pipeline"

    def __init__(self, index: int, of: int, config: Callable[[], Config], paths: Paths, *, node: str,
                 on_event: Callable[[dict[str, Any]], None], release: Callable[[str], Any], role: str = "both",
                 delivering: int | None = None, listening: Callable[[], dict[str, str]] = dict):
        super().__init__(f"{'delivery' if role == 'deliver' else 'pipeline'}-{index}", config, paths)
        self.index, self.of, self.node, self.role, self.delivering = index, of, node, role, delivering
        self.on_event, self.release, self.listening = on_event, release, listening
        self.on_ask: Callable[[dict[str, Any]], Any] = lambda message: asyncio.sleep(0)
        self._asked: set[asyncio.Task] = set()
        self.token = self._new_token()

    @property
    def delivers(self) -> bool:
        return self.role != "accept"

    def _new_token(self) -> str:
        # The scheduler's claim token: chosen here, so claims of a worker that died before it said
        # anything are released all the same. <node>:<parent pid>/<name>:<random>: of this node (its
        # start releases them), not of the parent's own process (gateway/node.py).
        return f"{self.node}:{os.getpid()}/{self.name}:{secrets.token_hex(4)}"

    def argv(self) -> list[str]:
        # A delivery process has no sockets of its own: it is told the listening addresses, so its
        # loop guard bounces mail to them as any scheduler does.
        return [*(a for name, s in self.socks.items() for a in ("--fd", f"{name}={s.fileno()}")),
                *(a for name, address in self.listening().items() for a in ("--listening", f"{name}={address}")),
                "--token", self.token, "--name", self.name, "--role", self.role]

    def first_config(self) -> Config:
        return share(self.config(), self.of, delivering=self.delivering)

    def event(self, message: dict[str, Any]) -> None:
        if "ask" in message:   # a question (its answer goes back to this worker alone): Pipelines.answer
            task = asyncio.create_task(self._answer(message))
            self._asked.add(task)
            task.add_done_callback(self._asked.discard)
            return
        self.on_event(message)

    async def _answer(self, message: dict[str, Any]) -> None:
        try:
            result = await self.on_ask(message)
        except Exception:  # noqa: BLE001 - the worker hears "no answer" rather than waiting for ever
            log.exception("worker_question_failed", worker=self.name, op=message.get("op"))
            result = None
        self.send({"op": "answer", "ask": message["ask"], "result": result})

    async def died(self) -> None:
        token, self.token = self.token, self._new_token()
        if not self.delivers:
            return  # it never claimed anything
        try:
            released = await self.release(token)
        except Exception:  # noqa: BLE001 - the daemon's next start releases them anyway
            log.exception("delivery_release_failed", worker=self.name)
            return
        if released:
            log.info("delivery_claims_released", recipients=released, why=f"{self.name} exited", worker=self.name)

    def status(self) -> dict[str, Any]:
        rows = super().status()
        for row in rows["workers"]:
            row["role"] = self.role
        return rows


class Pipelines(Component):
    """``daemon.workers`` pipeline processes on the daemon's listening sockets (bound here, once).
    To the daemon it is the "pipelines" component: the listeners, the delivery, and their status."""

    name = "pipelines"

    def __init__(self, config: Callable[[], Config], paths: Paths, metrics: Metrics, *, node: str,
                 release: Callable[[str], Any], release_all: Callable[[], Any], wakes: dict[str, Callable[[], Any]]):
        self.config, self.paths = config, paths
        self.release_all = release_all
        self.wakes = wakes
        # What a worker may ask the parent to do (by "op"), and the answer: Daemon._webhook_post, _forget_keys.
        self.answers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.workers = self._workers(config(), paths, node, release)
        for worker in self.workers:
            worker.on_ask = self._answer
        self._addresses = self._wanted()
        metrics.add_collector(lambda: worker_families(self.workers))

    def _workers(self, config: Config, paths: Paths, node: str, release: Callable[[str], Any]) -> list[PipelineWorker]:
        """daemon.workers pipelines; with daemon.delivery_workers, that many delivery processes after them."""
        n, m = workers_count(config.daemon.workers), delivery_workers_count(config.daemon)
        kw = {"node": node, "on_event": self._event, "release": release, "listening": lambda: dict(self._addresses)}
        if not m:
            return [PipelineWorker(i, n, self.config, paths, **kw) for i in range(1, n + 1)]
        return [*(PipelineWorker(i, n + m, self.config, paths, role="accept", delivering=m, **kw) for i in range(1, n + 1)),
                *(PipelineWorker(i, n + m, self.config, paths, role="deliver", delivering=m, **kw) for i in range(1, m + 1))]

    def _wanted(self) -> dict[str, str]:
        c = self.config()
        wanted = {"submission": c.submission.listen, "submissions": c.submission.listen_tls}
        if c.inbound.enabled:
            wanted["inbound"] = c.inbound.listen
        if c.api.enabled:   # the HTTP API is served by every worker too (gateway/api/server.py)
            wanted["api"] = c.api.listen
        return wanted

    async def start(self) -> None:
        try:
            self._bind()
            # Claims left by a previous run of the daemon (every worker is new): released before any claims.
            try:
                released = await self.release_all()
            except StorageFull:
                # A full disk must not stop the start (operators need the admin socket). Unlike one
                # scheduler, the workers cannot release them later without taking each other's: the
                # next start does.
                log.error("delivery_claims_not_released", why="the disk is full; they are released at the next start")
                released = 0
            if released:
                log.info("delivery_claims_released", recipients=released, why="left claimed by a previous process")
            # Together: each start is an interpreter importing the gateway, seconds on a loaded machine.
            results = await asyncio.gather(*(w.start() for w in self.workers), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                deadline = asyncio.get_running_loop().time() + 5
                await asyncio.gather(*(w.stop(deadline) for w in self.workers), return_exceptions=True)
                raise failed[0]
        except BaseException:
            self._close()
            raise

    def _bind(self) -> None:
        """Each worker's own sockets on the same addresses (SO_REUSEPORT: the kernel spreads new
        connections evenly over them; one shared socket would let the first worker to wake take
        nearly all). A worker's sockets stay open here while it restarts: its connections wait."""
        for name, listen in self._wanted().items():
            for worker in (w for w in self.workers if w.role != "deliver"):
                sock = bind(self._addresses.get(name, listen) if worker is not self.workers[0] else listen, name, reuse_port=True)
                worker.socks[name] = sock
                if worker is self.workers[0]:
                    self._addresses[name] = format_address(sock.getsockname())

    async def stop(self, deadline: float) -> None:
        await asyncio.gather(*(w.stop(deadline) for w in self.workers), return_exceptions=True)
        self._close()

    def _close(self) -> None:
        for worker in self.workers:
            for sock in worker.socks.values():
                sock.close()
            worker.socks = {}

    async def reload(self, config: Config) -> None:
        await asyncio.gather(*(w.reload(config) for w in self.workers))

    async def keys_changed(self) -> None:
        await asyncio.gather(*(w.keys_changed() for w in self.workers))

    def wake(self, *_: Any) -> None:
        """New mail is due (an admin retry, a release, a forward queued, a pipeline's submission): every
        scheduler claims now."""
        for worker in self.workers:
            if worker.delivers:
                worker.send({"op": "wake"})

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("op") == "wake":
            wake = self.wakes.get(message.get("what", ""))
            if wake is not None:
                wake()

    # ------------------------------------------------------------------ the API's keys and questions

    async def forget_key(self, public_id: str | None) -> None:
        """An API key was revoked (here, or through one worker's API): every worker's cache drops it
        (None: every key, a tenant was switched) before this returns (a worker down now reads the
        keys afresh when it starts)."""
        await asyncio.gather(*(w.tell({"op": "forget_key", "key": public_id}) for w in self.workers))

    async def _answer(self, message: dict[str, Any]) -> Any:
        answer = self.answers.get(message.get("op", ""))
        if answer is None:
            return None
        return await answer(message)

    # ------------------------------------------------------------------ reporting

    @property
    def alive(self) -> bool:
        return all(w.alive for w in self.workers)

    def listeners(self) -> list[Listener]:
        up = any(w.alive for w in self.workers if w.role != "deliver")  # a delivery process serves no listener
        return [Listener(name, address, up=up) for name, address in self._addresses.items()]

    def problems(self) -> list[str]:
        return [p for w in self.workers for p in w.problems()]

    def status(self) -> dict[str, Any]:
        rows = [row for w in self.workers for row in w.status()["workers"]]
        for worker, row in zip(self.workers, rows):
            row["token"] = worker.token
        return {"workers": rows}

    async def live_status(self) -> list[dict[str, Any]]:
        """status() with each running worker's own components' status (sessions, deliveries)."""
        rows = self.status()["workers"]
        replies = await asyncio.gather(*(w.ask({"op": "status"}) for w in self.workers))
        for row, reply in zip(rows, replies):
            row["status"] = reply.get("status") if reply else None
        return rows

    async def expositions(self) -> list[str]:
        """Every running worker's /metrics exposition text."""
        replies = await asyncio.gather(*(w.ask({"op": "metrics"}) for w in self.workers))
        return [r["text"] for r in replies if r and "text" in r]
