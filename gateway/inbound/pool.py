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

One message per process at a time (each process is a single-worker executor), so a process that
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
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from ..errors import GatewayError
from .analysis import Route, Work, analyse
from .attachments import AttachmentFiles
from .pins import Pins

# Imported once in the fork server, so a new pool process starts without importing anything.
PRELOAD = ["__main__", "gateway.inbound.pool", "gateway.inbound.mime", "gateway.inbound.reply", "gateway.inbound.classify"]


class ParserDied(GatewayError):
    """The pool process parsing a message ended without an answer (killed, crashed, out of memory)."""


def pool_size(configured: int) -> int:
    """processor.processes as a count: 0 means one per CPU this process may run on."""
    return configured if configured > 0 else max(1, len(os.sched_getaffinity(0)))


class ParserPool:
    """Thread-safe: the processor's worker threads call ``analyse``, each waiting for a free process."""

    def __init__(self, size: int, attachments: Path):
        self.size = size
        self._root = str(attachments)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._free: queue.SimpleQueue[ProcessPoolExecutor | None] = queue.SimpleQueue()
        self._all = [self._new() for _ in range(size)]   # each starts its process when first used
        for executor in self._all:
            self._free.put(executor)
        self._closed = False
        self.deaths = 0

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, mp_context=self._context, initializer=_start, initargs=(self._root,))

    def analyse(self, raw: bytes | bytearray, row: dict[str, Any], route: Route, verdict: Any, *, pins: Pins,
                parse: Callable[..., Any], limits: Any, stripped_reply: Callable[[str, str], str] | None) -> tuple[Work, set[str]]:
        """``analysis.analyse`` in a pool process (on a worker thread of the daemon): the Work, its
        files pinned, and the paths still to fsync. ``ParserDied`` when the process ended meanwhile."""
        executor = self._free.get()
        if executor is None or self._closed:
            self._free.put(None)   # closed: the next caller learns it too
            raise ParserDied("the parser pool is stopping")
        try:
            # No removal between the process's writes and the pins (pins.py): held across the call.
            with pins.putting():
                work, pending = executor.submit(_analyse, bytes(raw), row, route, verdict, parse, limits, stripped_reply).result()
                pins.pin(work.shas)
        except BrokenProcessPool as exc:
            self.deaths += 1
            executor.shutdown(wait=False)
            dead, executor = executor, self._new()
            self._all = [e for e in self._all if e is not dead] + [executor]
            raise ParserDied("the parser's process ended while it had this message (killed, crashed or out of memory)") from exc
        finally:
            self._free.put(executor)
        return restore(work, raw), pending

    def warm(self) -> None:
        """Start every process now (a worker thread's call: it waits for them), not at the first messages."""
        executors = [self._free.get() for _ in range(self.size)]
        try:
            for future in [e.submit(os.getpid) for e in executors if e is not None]:
                future.result()
        finally:
            for e in executors:
                self._free.put(e)

    def close(self) -> None:
        """Stop the processes (a message in one is dropped there: its row is still spooled)."""
        self._closed = True
        self._free.put(None)
        for executor in self._all:
            executor.shutdown(wait=False, cancel_futures=True)
        self._all.clear()


# ---------------------------------------------------------------------- in the pool process

class _Process:
    """What a pool process keeps between messages: its attachment files (and the directories they
    know to exist). Set once by the executor's initializer: a process's own state, not shared."""
    files: AttachmentFiles | None = None


def _start(root: str) -> None:
    _Process.files = AttachmentFiles(Path(root))


def _analyse(raw: bytes, row: dict[str, Any], route: Route, verdict: Any, parse: Callable[..., Any], limits: Any,
             stripped_reply: Callable[[str, str], str] | None) -> tuple[Work, set[str]]:
    assert _Process.files is not None
    batch = _Process.files.batch()
    # The pins are the daemon's (held there); this process's own only count for nothing.
    work = analyse(raw, row, route, verdict, parse=parse, limits=limits, stripped_reply=stripped_reply, files=batch,
                   pins=Pins())
    return portable(work, len(raw)), batch.take()


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
