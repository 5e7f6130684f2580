"""The web worker: the public web server (web.listen) in a child process of the daemon, so the pages
never wait for submission's event loop or GIL. Started by gateway/workers.py, never by hand:

    python -m gateway.webworker --listen-fd N --control-fd M --parent-pid P

What flows in: the listening socket the daemon bound (fd N), the daemon's config over the control
socket (fd M; the protocol is in gateway/workers.py), HTTP requests. What flows out: the same pages
as inside the daemon (gateway/unsubscribe/web.py's /u/..., gateway/inbound/delivery.py's
/inbound/attachments/...), and the writes they make (an unsubscribe, a re-subscribe), committed by
this process's own writer on the daemon's store, opened as a secondary (gateway/store/db.py).
/health and /metrics ask the daemon over its admin socket (``daemon.health``, ``daemon.metrics``):
only the daemon knows its listeners, queue and store; /metrics adds this process's own counters.

What it promises: a 200 to an unsubscribe POST means the suppression is committed (persist, then
reply, as in the daemon). SIGTERM: stop accepting, finish the requests under way (until
daemon.shutdown_timeout), flush the writer, exit 0. It dies with the daemon: the control socket
reads EOF (and PR_SET_PDEATHSIG sends SIGTERM). SIGHUP and SIGINT are the daemon's to act on.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import socket
import sys
from pathlib import Path
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from . import logs
from .admin.client import AdminError, request_line, result_of
from .config import Config, parse_config
from .errors import ConfigError, GatewayError
from .inbound.attachments import AttachmentFiles
from .inbound.delivery import AppDelivery
from .lifecycle import Component, loop_factory
from .metrics import Metrics, merged_exposition, store_families
from .store import Store
from .unsubscribe.links import Keyring
from .unsubscribe.web import Unsubscriber
from .web import WebServer
from .workers import LINE_LIMIT

log = structlog.get_logger("webworker")

# Seconds /health and /metrics wait for the daemon's answer on the admin socket.
DAEMON_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


class DaemonLink:
    """Calls to the daemon's admin socket from the event loop: one connection, one call at a time,
    connected again when it dropped (the daemon restarted its admin server, or a call timed out)."""

    def __init__(self, path: Path, timeout: float = DAEMON_TIMEOUT):
        self.path, self.timeout = path, timeout
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._ids = 0

    async def call(self, method: str, **params: Any) -> Any:
        async with self._lock:
            for attempt in (1, 2):
                try:
                    async with asyncio.timeout(self.timeout):
                        if self._stream is None:
                            self._stream = await asyncio.open_unix_connection(str(self.path), limit=64 << 20)
                        reader, writer = self._stream
                        self._ids += 1
                        writer.write(request_line(self._ids, method, params))
                        await writer.drain()
                        raw = await reader.readline()
                    if raw or attempt == 2:
                        return result_of(raw)
                except (OSError, TimeoutError):
                    if attempt == 2:
                        raise
                self.close()  # a connection the daemon closed: one fresh try
            raise AssertionError("unreachable")

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None


class Worker:
    def __init__(self, sock: socket.socket, control: socket.socket):
        self.sock, self.control = sock, control
        self.config: Config | None = None
        self.store: Store | None = None
        self.components: list[Component] = []
        self.keyring: Keyring | None = None
        self.metrics = Metrics()
        self._stop = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        reader, writer = await asyncio.open_unix_connection(sock=self.control, limit=LINE_LIMIT)
        first = json.loads(await reader.readline() or b"{}")
        if first.get("op") != "config":
            return 1  # the daemon went away before it told us anything
        self.config = parse_config(first["config"])
        logs.configure(self.config.log)
        structlog.contextvars.bind_contextvars(process="web-worker")  # its lines in the daemon's log say whose
        sys.setswitchinterval(self.config.daemon.gil_switch_interval)
        state, link = Path(first["paths"]["state_dir"]), DaemonLink(Path(first["paths"]["socket"]))
        self.store = await Store.open(state / "gateway.db", self.config.store, secondary=True)
        try:
            await self._serve(state, link, writer)
            control = asyncio.create_task(self._control(reader, writer))
            await self._stop.wait()
            control.cancel()
        finally:
            await self._close()
            link.close()
            writer.close()
        return 0

    async def _serve(self, state: Path, link: DaemonLink, writer: asyncio.StreamWriter) -> None:
        store, config = self.store, lambda: self.config
        assert store is not None
        self.keyring = Keyring(store)
        self.metrics.add_collector(lambda: store_families(store.db))
        unsubscriber = Unsubscriber(store, self.keyring, self.metrics, config)
        downloads = AppDelivery(store, self.keyring, config, AttachmentFiles(state / "attachments"), self.metrics)

        async def health() -> tuple[bool, dict[str, Any]]:
            try:
                reply = await link.call("daemon.health")
            except (OSError, TimeoutError, AdminError) as exc:
                return False, {"problems": [f"daemon: no answer on the admin socket ({str(exc) or type(exc).__name__})"]}
            own = store.problems()
            detail = {k: v for k, v in reply.items() if k != "ok"}
            detail["problems"] = [*detail.get("problems", []), *(f"web worker: {p}" for p in own)]
            return bool(reply["ok"]) and not own, detail

        async def exposition() -> bytes:
            try:
                text = await link.call("daemon.metrics")
            except (OSError, TimeoutError, AdminError) as exc:
                log.warning("daemon_metrics_unavailable", error=str(exc) or type(exc).__name__)
                text = ""  # this process's figures still answer
            # Parsing and summing the daemon's text takes 20-120 ms of CPU: in a thread, the loop
            # keeps answering unsubscribes between GIL switches instead of stalling for the scrape.
            return await asyncio.to_thread(merged_exposition, text, self.metrics.registry)

        server = WebServer(self.config.web.listen, self.metrics, health, [*unsubscriber.web_routes(), *downloads.web_routes()],
                           sock=self.sock, exposition=exposition)
        for component in (unsubscriber, downloads, server):
            await component.start()
            self.components.append(component)
        writer.write(json.dumps({"op": "ready", "pid": os.getpid()}).encode() + b"\n")
        await writer.drain()

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The daemon's requests, in order; EOF (the daemon is gone) stops the worker."""
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message.get("op") == "config":
                    await self._reload(message["config"])
                elif message.get("op") == "keys" and self.keyring is not None:
                    self.keyring.invalidate()
                writer.write(json.dumps({"op": "done", "id": message.get("id")}).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        if not self._stop.is_set():
            log.info("web_worker_parent_gone")
            self._stop.set()

    async def _reload(self, data: dict[str, Any]) -> None:
        try:
            new = parse_config(data)
        except ConfigError as exc:  # the daemon checked it: only a version skew gets here
            log.error("web_worker_config_refused", problems=exc.problems)
            return
        self.config = new
        logs.configure(new.log)
        if self.store is not None:
            self.store.db.space.min_free = new.store.min_free_bytes
        for component in self.components:
            try:
                await component.reload(new)
            except Exception:  # noqa: BLE001 - one component failing must not stop the others
                log.exception("component_reload_failed", component=component.name)

    async def _close(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.config.daemon.shutdown_timeout if self.config else 5.0
        deadline = loop.time() + timeout
        for component in reversed(self.components):
            try:
                await asyncio.wait_for(component.stop(deadline), max(deadline - loop.time(), 0.0) + 1.0)
            except TimeoutError:
                log.error("component_stop_timed_out", component=component.name)
        if self.store is not None:
            await self.store.close()
            self.store = None


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM when the daemon dies (Linux); the control socket's EOF covers what this misses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.webworker", description="The daemon's web worker (started by the daemon).")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group and a stray SIGHUP the whole service: the daemon
    # decides (it stops the worker last, and sends the reloaded config).
    detach(args.parent_pid)
    sock = socket.socket(fileno=args.listen_fd)
    control = socket.socket(fileno=args.control_fd)
    return run_child("web worker", "web_worker", lambda: Worker(sock, control).run())


def detach(parent_pid: int) -> None:
    """A child's start: Ctrl-C and a stray SIGHUP are the daemon's to act on; die with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    die_with_parent(parent_pid)


def run_child(name: str, event: str, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a child process's ``main()`` on the daemon's loop; its exit status (1: it failed, logged
    as ``<event>_failed`` with one line on stderr, or ``<event>_crashed``)."""
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(main())
    except GatewayError as exc:
        log.error(f"{event}_failed", error=str(exc))
        print(f"gateway {name}: {exc}", file=sys.stderr)
        return 1
    except Exception:
        log.exception(f"{event}_crashed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
