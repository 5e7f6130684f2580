"""A pipeline worker: submission, the inbound MX and a delivery scheduler in a child process of the
daemon (``daemon.workers`` > 1), so mail uses every core; or one of the two halves (``--role``: accept
or deliver, gateway/pipelines.py says why). Started by gateway/pipelines.py, never by hand:

    python -m gateway.pipeline --fd submission=N --fd submissions=M [--fd inbound=K] --token T
                               --name pipeline-I --control-fd C --parent-pid P [--role both|accept]
    python -m gateway.pipeline --listening submission=HOST:PORT ... --token T --name delivery-I
                               --control-fd C --parent-pid P --role deliver

An accepting pipeline sends a "wake delivery" line to the daemon after its queued messages (gathered:
``wakes.Coalesced``); a delivery process has no sockets and is told the listening addresses, which its loop
guard refuses as every scheduler does.

What flows in: the listening sockets the daemon bound (every worker accepts on the same ones; the
kernel gives each connection to one of them), the daemon's config over the control socket (already
divided among the workers: gateway/pipelines.py ``share``), SMTP sessions, due recipients claimed under
token T. What flows out: queued messages, spooled inbound mail and delivery outcomes, committed by this
process's own writer on the daemon's store, opened as a secondary (gateway/store/db.py, taking turns
at writing with the other processes: gateway/store/turns.py); a "wake processor" line to the daemon
after each MX spool (the processor runs there). Everything else (admin socket, API, web pages, the
jobs that run once) is the daemon's.

It is the daemon's own component graph (gateway/daemon.py, role "pipeline"), so a message takes the
same path as in one process: persist, then 250. SIGTERM: stop accepting, finish the sessions and
deliveries under way (until daemon.shutdown_timeout), release the claims left, flush the writer, exit
0. It dies with the daemon (the control socket's EOF, PR_SET_PDEATHSIG); its claims are released by
the daemon when it dies. SIGHUP and SIGINT are the daemon's to act on.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import generate_latest

from . import allocator, logs
from .config import parse_config
from .daemon import Daemon
from .errors import ConfigError
from .paths import resolve_paths
from .systemd import Notifier
from .wakes import Coalesced
from .webworker import detach, run_child
from .workers import APPLY_TIMEOUT, LINE_LIMIT

log = structlog.get_logger("pipeline")

# Seconds an accepting pipeline gathers its queued messages' wakes into one line to the daemon, which
# wakes the delivery processes: one line per message would be thousands a second to read and forward
# for nothing (a scheduler already claiming finds them anyway); a few ms is nothing to end-to-end time.
WAKE_GATHER = 0.002


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


class Pipeline:
    def __init__(self, sockets: dict[str, socket.socket], control: socket.socket, *, token: str, name: str,
                 role: str = "both", listening: dict[str, str] | None = None):
        self.sockets, self.control, self.token, self.name = sockets, control, token, name
        self.role, self.listening = role, listening or {}
        self.daemon: Daemon | None = None
        self._stop = asyncio.Event()
        self._asks: dict[int, asyncio.Future] = {}   # questions to the parent by number (ask_parent)
        self._ask_ids = itertools.count(1)

    async def run(self) -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._stop.set)
        reader, writer = await asyncio.open_unix_connection(sock=self.control, limit=LINE_LIMIT)
        first = json.loads(await reader.readline() or b"{}")
        if first.get("op") != "config":
            return 1  # the daemon went away before it told us anything
        config = parse_config(first["config"])
        logs.configure(config.log)
        structlog.contextvars.bind_contextvars(process=self.name)  # its lines in the daemon's log say whose
        sys.setswitchinterval(config.daemon.gil_switch_interval)
        paths = resolve_paths(config, first["paths"]["state_dir"])
        daemon = self.daemon = Daemon(config, paths, notifier=Notifier({}), role="pipeline")
        daemon.token, daemon.sockets = self.token, self.sockets
        daemon.tell_parent = lambda message: writer.is_closing() or writer.write(_line(message))
        daemon.ask_parent = lambda message, timeout=APPLY_TIMEOUT: self._ask(writer, message, timeout)
        self._assign(daemon)
        await daemon.start()
        allocator.settle()   # as the daemon's own run does (allocator.py)
        try:
            writer.write(_line({"op": "ready", "pid": os.getpid(), "token": self.token}))
            await writer.drain()
            control = asyncio.create_task(self._control(reader, writer))
            await self._stop.wait()
            control.cancel()
            await asyncio.gather(control, return_exceptions=True)
        finally:
            await daemon.stop()
            writer.close()
        return 0

    def _assign(self, daemon: Daemon) -> None:
        """This worker's role: both, accept (delivery is the delivery processes', woken through the
        daemon) or deliver (no listeners: it knows their addresses for its loop guard)."""
        if self.role == "accept":
            daemon.serves = frozenset({"accept"})
            daemon.wake_elsewhere = Coalesced(lambda: daemon.tell_parent({"op": "wake", "what": "delivery"}), WAKE_GATHER)
        elif self.role == "deliver":
            daemon.serves = frozenset({"deliver"})
            daemon.listening = self.listening

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The daemon's requests, in order; EOF (the daemon is gone) stops the worker."""
        daemon = self.daemon
        assert daemon is not None
        try:
            while line := await reader.readline():
                message = json.loads(line)
                op, reply = message.get("op"), {}
                if op == "wake":
                    daemon.scheduler.wake()
                elif op == "config":
                    try:
                        await daemon.apply(parse_config(message["config"]))
                    except ConfigError as exc:  # the daemon checked it: only a version skew gets here
                        log.error("pipeline_config_refused", problems=exc.problems)
                elif op == "keys":
                    daemon.keyring.invalidate()
                elif op == "forget_key" and daemon.api is not None:
                    daemon.api.keys.forget(message.get("key"))
                elif op == "answer":
                    self._answered(message)
                    continue
                elif op == "metrics":
                    reply = {"text": generate_latest(daemon.metrics.registry).decode()}
                elif op == "status":
                    reply = {"status": daemon.status()}
                if "id" in message:
                    writer.write(_line({"op": "done", "id": message["id"], **reply}))
                    await writer.drain()
        except ConnectionError:
            pass
        for fut in self._asks.values():   # the parent is gone: nobody answers
            if not fut.done():
                fut.set_result(None)
        if not self._stop.is_set():
            log.info("pipeline_parent_gone")
            self._stop.set()

    async def _ask(self, writer: asyncio.StreamWriter, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Ask the parent (Pipelines.answers); its answer, or None when it is gone or silent."""
        if writer.is_closing():
            return None
        ask = next(self._ask_ids)
        fut = self._asks[ask] = asyncio.get_running_loop().create_future()
        try:
            writer.write(_line({**message, "ask": ask}))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self._asks.pop(ask, None)

    def _answered(self, message: dict[str, Any]) -> None:
        fut = self._asks.get(message.get("ask"))
        if fut is not None and not fut.done():
            fut.set_result(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.pipeline", description="A pipeline worker (started by the daemon).")
    parser.add_argument("--fd", action="append", default=[], metavar="NAME=FD")
    parser.add_argument("--token", required=True)
    parser.add_argument("--name", default="pipeline")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--role", choices=("both", "accept", "deliver"), default="both")
    parser.add_argument("--listening", action="append", default=[], metavar="NAME=HOST:PORT")
    args = parser.parse_args(argv)
    # Ctrl-C reaches the whole process group and a stray SIGHUP the whole service: the daemon
    # decides (it stops the workers, and sends the reloaded config).
    detach(args.parent_pid)
    allocator.tune()
    sockets = {}
    for item in args.fd:
        name, _, fd = item.partition("=")
        sockets[name] = socket.socket(fileno=int(fd))
    control = socket.socket(fileno=args.control_fd)
    listening = dict(item.partition("=")[::2] for item in args.listening)
    return run_child(args.name, "pipeline", lambda: Pipeline(sockets, control, token=args.token, name=args.name,
                                                             role=args.role, listening=listening).run())


if __name__ == "__main__":
    sys.exit(main())
