"""The parser pool: the CPU part of processing (analysis.analyse: header, classification, MIME,
reply stripping, attachment files) in processes of its own, so inbound processing uses every core
while the processor keeps the one writer of each row and the reply order (order.py).

    processor worker thread: raw  -- raw, row, route, verdict, limits -->  pool process:
                                                                            analyse(), files written
                             pins <-- Work (bodies, classification, attachment rows, paths to fsync) --
    processor (event loop):  fsyncs (Syncs), thread, hooks, finish: as for a message parsed in a thread

What crosses to a process: the message's bytes and small values; what comes back: what ``analyse``
made of it without the attachments' bytes (they are in their files) and without views of the
message (``portable``). The files are content-addressed, so the process writes them as the thread
would; their fsyncs are left to the daemon's ``Syncs`` (one round for the messages in flight). The
sweeper must not remove a file between its write and its row's commit: the daemon's worker thread
holds ``pins.putting()`` while the process writes, and pins what it wrote before letting go
(pins.py). The store is read and written by the daemon alone: a pool process touches nothing but
its arguments and the attachment directory.

One message per process at a time (a request and its answer on the process's own pipe), so a process that
dies (killed, out of memory, a crash in a C library) names the one message it had: the pool
replaces the process and raises ``ParserDied`` for that message alone; the processor leaves its row
spooled, tries it again, and holds it with the reason once it has killed the parser
``processor.MAX_DEATHS`` times. Memory: at most ``size`` messages are in the processes, each no
larger than ``processor.process_max_bytes``; a larger message is parsed in a thread of the daemon
(its attachments streamed to their files from the daemon's one copy).

Processes start from a fork server (``forkserver``: the daemon has threads, and forking a
threaded process is unsafe) that has this module, the parser and the main module imported, when
the first message needs one.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..errors import GatewayError
from .analysis import Route, Work, analyse
from .attachments import AttachmentFiles
from .pins import Pins

# Imported once in the fork server, so a new pool process starts without importing anything.
PRELOAD = ["__main__", "gateway.inbound.pool", "gateway.inbound.mime", "gateway.inbound.reply", "gateway.inbound.classify"]
STOP_WAIT = 2.0   # seconds a process gets to exit at close before it is killed


class ParserDied(GatewayError):
    """The pool process parsing a message ended without an answer (killed, crashed, out of memory)."""


class ParserFailed(GatewayError):
    """The parse raised in the pool process (its exception did not pickle: this carries its text)."""


def pool_size(configured: int) -> int:
    """processor.processes as a count: 0 means one per CPU this process may run on."""
    return configured if configured > 0 else max(1, len(os.sched_getaffinity(0)))


class _Worker:
    """One pool process and the daemon's end of its pipe: a request, then its answer, in turn."""

    def __init__(self, context: Any, root: str):
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, root), name="gateway-parser", daemon=True)
        self.process.start()
        theirs.close()

    def ask(self, request: tuple) -> tuple:
        self.conn.send(request)
        return self.conn.recv()

    def stop(self) -> None:
        try:
            self.conn.close()   # its recv() ends: it exits
        finally:
            self.process.join(STOP_WAIT)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


class ParserPool:
    """Thread-safe: the processor's worker threads call ``analyse``, each waiting for a free process."""

    def __init__(self, size: int, attachments: Path):
        self.size = size
        self._root = str(attachments)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        # A slot per process; a process is started when its slot is first used (or by warm()).
        self._free: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        self._slots = 0
        self._lock = threading.Lock()   # the slot count and the live list
        self._live: list[_Worker] = []
        self._closed = False
        self.deaths = 0

    def _take(self) -> _Worker:
        while True:
            try:
                worker = self._free.get_nowait()
            except queue.Empty:
                with self._lock:
                    fresh = self._slots < self.size and not self._closed
                    if fresh:
                        self._slots += 1
                worker = self._start() if fresh else self._free.get()
            if worker is None or self._closed:
                self._free.put(None)   # closed: the next caller learns it too
                raise ParserDied("the parser pool is stopping")
            return worker

    def _start(self) -> _Worker:
        worker = _Worker(self._context, self._root)
        with self._lock:
            self._live.append(worker)
        return worker

    def analyse(self, raw: bytes | bytearray, row: dict[str, Any], route: Route, verdict: Any, *, pins: Pins,
                parse: Callable[..., Any], limits: Any, stripped_reply: Callable[[str, str], str] | None) -> tuple[Work, set[str]]:
        """``analysis.analyse`` in a pool process (on a worker thread of the daemon): the Work, its
        files pinned, and the paths still to fsync. ``ParserDied`` when the process ended meanwhile."""
        worker = self._take()
        try:
            # No removal between the process's writes and the pins (pins.py): held across the call.
            with pins.putting():
                answer = worker.ask((raw, row, route, verdict, parse, limits, stripped_reply))
                if answer[0] == "ok":
                    pins.pin(answer[1].shas)
        except (EOFError, OSError) as exc:
            if self._closed:
                raise ParserDied("the parser pool is stopping") from exc
            self.deaths += 1
            dead, worker = worker, self._start()
            with self._lock:
                self._live.remove(dead)
            dead.stop()
            raise ParserDied("the parser's process ended while it had this message (killed, crashed or out of memory)") from exc
        finally:
            self._free.put(worker)
        if answer[0] != "ok":
            raise answer[1]
        return restore(answer[1], raw), answer[2]

    def warm(self) -> None:
        """Start every process now (a worker thread's call), not when the first messages need them."""
        workers = [self._take() for _ in range(self.size)]
        for w in workers:
            self._free.put(w)

    def close(self) -> None:
        """Stop the processes (a message in one is dropped there: its row is still spooled). Blocks
        up to STOP_WAIT per process: call it from a thread."""
        self._closed = True
        self._free.put(None)
        with self._lock:
            live, self._live = self._live, []
        for worker in live:
            worker.stop()


# ---------------------------------------------------------------------- in the pool process

def _serve(conn: Connection, root: str) -> None:
    """A pool process: messages in, what they are out, until the daemon closes the pipe."""
    files = AttachmentFiles(Path(root))   # kept between messages: the directories it knows exist
    while True:
        try:
            raw, row, route, verdict, parse, limits, stripped_reply = conn.recv()
        except (EOFError, OSError):
            return
        try:
            batch = files.batch()
            # The pins are the daemon's (held there while this runs); this process's own count for nothing.
            work = analyse(raw, row, route, verdict, parse=parse, limits=limits, stripped_reply=stripped_reply, files=batch,
                           pins=Pins())
            answer: tuple = ("ok", portable(work, len(raw)), batch.take())
        except Exception as exc:  # noqa: BLE001 - the daemon holds the message with it
            answer = ("error", exc)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return   # the daemon closed the pipe (stopping)
        except Exception as exc:  # noqa: BLE001 - the answer did not pickle: its text then
            what = answer[1] if answer[0] == "error" else exc
            conn.send(("error", ParserFailed("".join(traceback.format_exception_only(type(what), what)).strip()[:500])))


def portable(work: Work, size: int) -> Work:
    """``work`` without views of the message (they do not pickle, and would send it all back): the
    stored copy's pieces that are the message's tail become their offset; the parsed attachments
    lose their bytes (written to their files: ``Work.attachments`` names them)."""
    if work.raw is not None:
        work.raw = [size - len(piece) if isinstance(piece, memoryview) else piece for piece in work.raw]  # type: ignore[misc]
    parts = [dataclasses.replace(p, payload=None, decoded=None) for p in work.parsed.attachments]
    work.parsed = dataclasses.replace(work.parsed, attachments=parts)
    return work


def restore(work: Work, raw: bytes | bytearray) -> Work:
    """``portable`` undone against the daemon's own copy of the message."""
    if work.raw is not None:
        view = memoryview(raw)
        work.raw = [view[piece:] if isinstance(piece, int) else piece for piece in work.raw]
    return work
