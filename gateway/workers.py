"""The daemon's child processes, started, watched and restarted from here: the web worker
(``web.process = true``, gateway/webworker.py) and the pipeline workers (``daemon.workers`` > 1,
gateway/pipeline.py, supervised through gateway/pipelines.py). One supervisor (``Child``), two kinds
of child.

    start:   the daemon binds the listening sockets here -> spawn `python -m <module>` with those
             sockets and one end of a control socket -> send the config -> wait for its "ready"
             (or fail the start)
    died:    restarted after a backoff (0.1 s doubling to 10 s; back to 0.1 s once a worker lived 30 s).
             The listening sockets stay open here, so connections that arrive meanwhile wait in
             their backlog and are served by another worker or the next one: a restart refuses
             nothing. A dead pipeline's delivery claims are released (its token is the daemon's pick)
    SIGHUP:  the daemon's new config is sent; reload() returns once every worker applied it
    keys:    a rotated or retired unsubscribe key is told to the workers before the admin call returns
    SIGTERM: SIGTERM to every worker at once, each finishes its sessions, requests and deliveries and
             flushes its writes; SIGKILL if one is still there at the daemon's shutdown deadline

The control socket is a worker's lifeline: when the daemon dies (even by SIGKILL) the worker reads
EOF and stops. Protocol (JSON lines; gateway/webworker.py and gateway/pipeline.py are the other side):

    daemon -> worker   {"op": "config", "id": n, "config": {...}, "paths": {...}}   first, and on SIGHUP
                       {"op": "keys", "id": n}                  the unsubscribe keys changed
                       {"op": "wake"}                           (pipeline) claim due work now; no reply
                       {"op": "metrics", "id": n}               (pipeline) its exposition -> "text"
                       {"op": "status", "id": n}                (pipeline) its components' status -> "status"
                       {"op": "forget_key", "id": n, "key": k}  (pipeline) an API key was revoked
                       {"op": "answer", "ask": n, "result": r}  (pipeline) the answer to its question n
    worker -> daemon   {"op": "ready", "pid": p}  once serving;  {"op": "done", "id": n, ...}  after each
                       {"op": "wake", "what": "processor"}      (pipeline) an MX spool commit (or "poller",
                                                                "webhooks": a change made through its API)
                       {"op": ..., "ask": n, ...}               (pipeline) a question: "webhook_post" (a
                                                                webhook test), "forget_key" (revoked here)
                       {"op": "wake", "what": "delivery"}       (accepting pipeline) mail queued
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

from .config import Config, split_hostport, to_dict
from .errors import StartupError
from .lifecycle import Component, Listener, format_address
from .metrics import Metrics, worker_families
from .paths import Paths

log = structlog.get_logger("workers")

# Seconds a new worker may take to start (an interpreter importing the gateway: ~2 s of CPU, several
# times that on a loaded machine), open the store and serve before the start counts as failed.
START_TIMEOUT = 60.0
# Seconds the daemon waits for a worker to apply a config or key change, or to answer a question.
APPLY_TIMEOUT = 10.0
FIRST_DELAY, MAX_DELAY = 0.1, 10.0
# A worker that lived this long had a real life: the next restart is quick again.
STABLE_AFTER = 30.0
BACKLOG = 1024
# Longest control line (the config as JSON is a few KiB, a worker's exposition some tens).
LINE_LIMIT = 8 << 20


def bind(listen: str, name: str = "web", *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``listen`` (host:port), the listener's errors in one line."""
    host, port = split_hostport(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG, reuse_port=reuse_port)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"{name}: cannot listen on {listen}: {why}") from None


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class Child(Component):
    """One supervised child process: spawned with the sockets ``self.socks`` (bound by the owner),
    restarted when it dies, reloaded, asked, stopped. Subclasses say which module and arguments."""

    module = ""

    def __init__(self, name: str, config: Callable[[], Config], paths: Paths):
        self.name, self.config, self.paths = name, config, paths
        self.socks: dict[str, socket.socket] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.started_at: float | None = None
        self.last_exit: int | None = None
        self._ready = False
        self._stopping = False
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._supervisor: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.serving = asyncio.Event()  # set while a worker serves (tests await a restart with it)

    # ------------------------------------------------------------------ hooks

    def argv(self) -> list[str]:
        """The child's arguments after ``-m module`` (its fds are in ``self.socks``)."""
        return []

    def first_config(self) -> Config:
        return self.config()

    def event(self, message: dict[str, Any]) -> None:
        """A message the worker sent on its own (not a reply)."""

    async def died(self) -> None:
        """After the worker exited (before a restart): clean up what it left."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor")

    async def stop(self, deadline: float) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._end(deadline)

    async def reload(self, config: Config) -> None:
        await self.tell({"op": "config", "config": to_dict(self.first_config(), mask=False)})

    async def keys_changed(self) -> None:
        """Keyring.on_change: the worker reads the unsubscribe keys again before the caller goes on."""
        await self.tell({"op": "keys"})

    # ------------------------------------------------------------------ reporting

    @property
    def alive(self) -> bool:
        return self._ready and self.proc is not None and self.proc.returncode is None

    def problems(self) -> list[str]:
        return [] if self.alive or self._stopping else [f"{self.name}: the worker process is not running (being restarted)"]

    def status(self) -> dict[str, Any]:
        up = self.alive
        return {"workers": [{
            "name": self.name, "pid": self.proc.pid if self.proc is not None and up else None, "up": up,
            "restarts": self.restarts, "started_at": self.started_at,
            "uptime_seconds": round(time.time() - self.started_at, 3) if up and self.started_at else None,
            "last_exit": self.last_exit,
        }]}

    # ------------------------------------------------------------------ talking to it

    async def ask(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Send ``message`` and return the worker's reply once it did it; None when it is down (a
        worker down now gets the current config and keys when it starts again) or did not answer."""
        if not self.alive or self._writer is None:
            return None
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            self._writer.write(_line({**message, "id": req_id}))
            await self._writer.drain()
            return await asyncio.wait_for(fut, APPLY_TIMEOUT)
        except (ConnectionError, TimeoutError) as exc:
            log.error("worker_not_applied", worker=self.name, op=message["op"], error=str(exc) or type(exc).__name__)
            return None
        finally:
            self._pending.pop(req_id, None)

    async def tell(self, message: dict[str, Any]) -> None:
        await self.ask(message)

    def send(self, message: dict[str, Any]) -> None:
        """Send ``message`` without waiting for anything (a wake: cheap, from synchronous callers)."""
        if self.alive and self._writer is not None and not self._writer.is_closing():
            self._writer.write(_line(message))

    # ------------------------------------------------------------------ the child

    async def _spawn(self) -> None:
        """Start a worker and return once it serves; StartupError (nothing left running) when it does not."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [s.fileno() for s in self.socks.values()]
        try:
            proc = await asyncio.create_subprocess_exec(
                # -P: not the current directory first on its import path (``-m`` would put it there),
                # so a gateway package in the directory the daemon was started in is not what runs.
                sys.executable, "-P", "-m", self.module, *self.argv(), "--control-fd", str(theirs.fileno()),
                "--parent-pid", str(os.getpid()), pass_fds=(*fds, theirs.fileno()), stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise StartupError(f"{self.name}: cannot start the worker process: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=LINE_LIMIT)
        self.proc, self._writer, self._ready = proc, writer, False  # stop() ends it from here on
        config = self.config()
        writer.write(_line({"op": "config", "id": 0, "config": to_dict(self.first_config(), mask=False),
                            "paths": {"state_dir": str(self.paths.state_dir), "socket": str(self.paths.socket)}}))
        ready = asyncio.ensure_future(reader.readline())
        exited = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait({ready, exited}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (ready, exited):
                if not fut.done():
                    fut.cancel()
        line = ready.result() if ready in done and not ready.cancelled() else b""
        if not line or json.loads(line).get("op") != "ready":
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            writer.close()
            self.proc, self._writer, self.last_exit = None, None, proc.returncode
            await self.died()
            why = "timed out" if not done else f"exited with {proc.returncode}"
            raise StartupError(f"{self.name}: the worker process did not start ({why}; its log lines say why)")
        self._ready, self.started_at = True, time.time()
        self.serving.set()
        self._reader_task = asyncio.create_task(self._read_replies(reader), name=f"{self.name}-replies")
        log.info("worker_started", worker=self.name, pid=proc.pid, restarts=self.restarts)
        if self.config() is not config:  # reloaded while it started: it has the old one
            await self.reload(self.config())

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            reply = json.loads(line)
            if reply.get("op") != "done":
                self.event(reply)
                continue
            fut = self._pending.pop(reply.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(reply)
        for fut in self._pending.values():  # the worker is gone: nobody waits for it any longer
            if not fut.done():
                fut.set_result(None)
        self._pending.clear()

    async def _supervise(self) -> None:
        delay = FIRST_DELAY
        while True:
            proc = self.proc
            if proc is not None:
                code = await proc.wait()
                lived = time.time() - (self.started_at or time.time())
                self._gone(code)
                await self.died()
                self.restarts += 1
                log.error("worker_died", worker=self.name, pid=proc.pid, returncode=code, lived_seconds=round(lived, 3),
                          restarts=self.restarts, restart_in=delay if lived < STABLE_AFTER else FIRST_DELAY)
                if lived >= STABLE_AFTER:
                    delay = FIRST_DELAY
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            try:
                await self._spawn()
            except StartupError as exc:
                log.error("worker_restart_failed", worker=self.name, error=str(exc), retry_in=delay)

    def _gone(self, code: int | None) -> None:
        self.proc, self._ready, self.last_exit = None, False, code
        self.serving.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._reader_task = None

    async def _end(self, deadline: float) -> None:
        """SIGTERM, then until ``deadline`` (a little past it) for the worker to drain; SIGKILL after."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            left = max(deadline - asyncio.get_running_loop().time(), 0.0) + 1.0
            try:
                await asyncio.wait_for(proc.wait(), left)
            except TimeoutError:
                log.error("worker_killed", worker=self.name, pid=proc.pid, why="still running at the shutdown deadline")
                proc.kill()
                await proc.wait()
        log.info("worker_stopped", worker=self.name, pid=proc.pid, returncode=proc.returncode)
        self._gone(proc.returncode)
        await self.died()


class WebWorker(Child):
    """The public web server in a child process; to the daemon it is the "web" component."""

    module = "gateway.webworker"

    def __init__(self, config: Callable[[], Config], paths: Paths, metrics: Metrics):
        super().__init__("web", config, paths)
        self._address = config().web.listen
        metrics.add_collector(lambda: worker_families([self]))

    def argv(self) -> list[str]:
        return ["--listen-fd", str(self.socks["web"].fileno())]

    async def start(self) -> None:
        sock = bind(self.config().web.listen)
        self.socks = {"web": sock}
        self._address = format_address(sock.getsockname())
        try:
            await super().start()
        except BaseException:
            sock.close()
            self.socks = {}
            raise

    async def stop(self, deadline: float) -> None:
        await super().stop(deadline)
        for sock in self.socks.values():
            sock.close()
        self.socks = {}

    def listeners(self) -> list[Listener]:
        return [Listener("web", self._address, up=self.alive)]
