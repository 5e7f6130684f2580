"""Attachment files: the bytes of inbound attachments, content-addressed under the state directory.

What flows in: an attachment's decoded bytes (whole, or as chunks so a 25 MB file is never held in
memory at once). What flows out: its SHA-256, which names the file
``<root>/ab/cd/<sha256>`` (``root`` is ``<state>/attachments``), and the bytes again on request.

What it promises:

- **Durable before it is recorded.** ``put`` writes a temporary file in ``<root>/tmp``, renames it into
  place, fsyncs the file and its directory, and only then returns the name the processor records in
  ``store.inbound.finish``. ``batch()`` does the same for many files with the fsyncs issued together
  at the end (one wait for the disk instead of two per file); ``Syncs`` issues the fsyncs of
  several messages' batches together, as the store group-commits their rows. A crash before the fsync can leave a
  short file under a name nobody recorded yet; the next put of the same bytes finds its size wrong
  and replaces it. A stray temporary file is removed by ``remove_stale_temporaries`` (the sweeper).
- **Idempotent.** The same bytes always have the same name; putting them again writes nothing new, so
  a message processed twice (crash between files and ``finish``) costs no space.
- **Private.** Files 0600, directories 0700: attachments are customers' mail.

Removing a file is the retention sweeper's decision (a file may be shared by several messages:
it counts references in the store first); this class only does what it is told.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import re
import secrets
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

_NAME = re.compile(r"[0-9a-f]{64}")
# A temporary file this old belongs to a put that died; a live put finishes in well under this.
STALE_TEMP = 3600.0
FSYNC_THREADS = 16  # fsyncs of one batch in flight at once
MAX_KNOWN_DIRS = 70_000  # directories remembered as existing (65,536 fan-out leaves, their parents)


class AttachmentFiles:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._root_s, self._tmp_s = str(self.root), str(self._tmp)
        # Directories seen to exist (fan-out levels, tmp): not asked of the disk again. Never
        # removed by this class; one removed behind its back is made again (_create's retry).
        self._dirs: set[str] = set()
        # Temporary names: this object's token and a counter (O_EXCL still refuses a clash).
        self._token = f"put-{os.getpid()}-{secrets.token_hex(4)}-"
        self._names = itertools.count()

    def path(self, sha256: str) -> Path:
        """Where the file named ``sha256`` lives; ``ValueError`` for anything but 64 lower-case hex digits
        (a name from a URL or a row must never reach outside ``root``)."""
        if not isinstance(sha256, str) or not _NAME.fullmatch(sha256):
            raise ValueError(f"not an attachment name: {sha256!r:.80}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes | Iterable[bytes]) -> str:
        """Store ``data`` (bytes, or an iterable of byte chunks such as ``Part.chunks()``); returns its
        SHA-256 once the file is on disk (one fsync of the file and one of its directory)."""
        pending: set[str] = set()
        sha256 = self._write(data, pending)
        _fsync_all(pending)
        return sha256

    def batch(self) -> Batch:
        """Many puts, one wait for the disk: ``with files.batch() as b: b.put(...)``; every file written
        in the block is fsynced (with its directories) when the block ends. Use it for the attachments
        of a batch of messages before their ``finish``: fsyncs issued together cost about one."""
        return Batch(self)

    def _write(self, data: bytes | Iterable[bytes], pending: set[str]) -> str:
        # Paths as str and os calls, not pathlib (its objects cost more than the syscalls here);
        # directories go into ``pending`` with a trailing "/" (_fsync_all syncs them after the files).
        if isinstance(data, (bytes, bytearray, memoryview)):
            sha256 = hashlib.sha256(data).hexdigest()
            target = self._target(sha256)
            if self._reused(target, len(data)):
                pending.add(target)  # another put may not have synced it yet: cheap if it has
                return sha256
            data = (data,)
        digest = hashlib.sha256()
        size = 0
        fd, temp = self._create()
        try:
            try:
                for chunk in data:
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    size += len(chunk)
            finally:
                os.close(fd)
            sha256 = digest.hexdigest()
            target = self._target(sha256)
            if self._reused(target, size):
                os.unlink(temp)
                pending.add(target)
                return sha256
            parent = target[:target.rindex("/")]
            made = self._mkdirs(parent)
            try:
                os.replace(temp, target)
            except FileNotFoundError:   # a fan-out directory removed since it was seen: made again
                self._dirs.discard(parent)
                made = self._mkdirs(parent)
                os.replace(temp, target)
        except BaseException:
            _unlink(temp)
            raise
        # The content, the new name and any fan-out directory made for it must survive a power cut.
        pending.add(target)
        pending.add(parent + "/")
        pending.update(d[:d.rindex("/")] + "/" for d in made)
        return sha256

    def _target(self, sha256: str) -> str:
        return f"{self._root_s}/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def _create(self) -> tuple[int, str]:
        """A new temporary file (0600, never an existing name), open for writing."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        self._mkdirs(self._tmp_s)
        for attempt in range(100):
            temp = f"{self._tmp_s}/{self._token}{next(self._names)}"
            try:
                return os.open(temp, flags, 0o600), temp
            except FileExistsError:
                continue
            except FileNotFoundError:
                if attempt:
                    raise
                self._dirs.clear()   # the tmp directory went away (removed by hand): made again
                self._mkdirs(self._tmp_s)
        raise FileExistsError(f"no free temporary name in {self._tmp_s}")

    def _mkdirs(self, path: str) -> list[str]:
        """``path`` and its missing parents under the root made 0700; returns those it made."""
        if path in self._dirs:
            return []
        made = [str(d) for d in _mkdir(Path(path))]
        self._dirs.add(path)
        if len(self._dirs) > MAX_KNOWN_DIRS:
            self._dirs.clear()
        return made

    @staticmethod
    def _reused(path: str, size: int) -> bool:
        """Whether the file is already there, whole; if so its mtime is brought to now, so a sweep that
        counted no reference to it a moment ago leaves it alone (``remove``'s ``unused_since``). A file
        of another size under this name was cut short (a crash before its fsync): it is replaced."""
        try:
            if os.stat(path).st_size != size:
                return False
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def open(self, sha256: str) -> BinaryIO:
        """The file for reading (``FileNotFoundError`` when it is not there)."""
        return open(self.path(sha256), "rb")

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def remove(self, sha256: str, *, unused_since: float | None = None) -> bool:
        """Delete the file; False when it was not there, or (with ``unused_since``) when a put wrote
        or reused it after that time. The sweeper passes the time it began counting references: a
        message being processed right now may have put the same bytes and not be recorded yet.
        Empty fan-out directories are left: there are at most 65,536 and later puts reuse them."""
        path = self.path(sha256)
        try:
            if unused_since is not None and path.stat().st_mtime > unused_since:
                return False
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def remove_stale_temporaries(self, now: float | None = None) -> int:
        """Delete temporary files left by puts that died (older than ``STALE_TEMP``); returns how many."""
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and now - entry.stat().st_mtime > STALE_TEMP:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


class Batch:
    """Puts whose fsyncs wait for the end of the block (``AttachmentFiles.batch``)."""

    def __init__(self, files: AttachmentFiles):
        self.files = files
        self._pending: set[str] = set()

    def put(self, data: bytes | Iterable[bytes]) -> str:
        """As ``AttachmentFiles.put``, but on disk only once the block has ended."""
        return self.files._write(data, self._pending)

    def add(self, paths: set[str]) -> None:
        """Paths written elsewhere (a parser process, gateway/inbound/pool.py) to fsync with this batch's."""
        self._pending |= paths

    def take(self) -> set[str]:
        """The paths still to fsync, handed over (to ``Syncs.sync``): the block's end then syncs nothing."""
        pending, self._pending = self._pending, set()
        return pending

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc: object) -> None:
        pending, self._pending = self._pending, set()
        _fsync_all(pending)


class Syncs:
    """fsyncs of many callers issued together, as the store's writer group-commits: ``await
    syncs.sync(paths)`` returns once those paths (and whatever else waited with them) are on disk.
    While one group is being synced in a thread, the paths of the next callers gather for the
    next; the processor's messages thus wait for one round of fsyncs each, not for their own
    fsyncs one file after another (scripts/bench_processing.py). Event-loop side only (one loop)."""

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._waiters: list[asyncio.Future] = []
        self._task: asyncio.Task | None = None
        # The fsync threads live as long as this object: a pool made per round cost 3.1 ms of CPU
        # and 5.5 ms of wall time for 8 paths, against 0.7 and 1.4 ms kept (measured here).
        self._pool: ThreadPoolExecutor | None = None
        self._closing = False
        self.rounds = 0   # groups synced (tests see the coalescing)

    def close(self) -> None:
        """Let the fsync threads go (a round in progress finishes first); a later sync starts new ones."""
        if self._task is not None:
            self._closing = True   # the round in progress still needs the threads: _flush lets them go
        elif self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    async def sync(self, paths: set[str]) -> None:
        if not paths:
            return
        fut = asyncio.get_running_loop().create_future()
        self._paths |= paths
        self._waiters.append(fut)
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name="attachment-fsyncs")
        # Shielded: a caller cancelled (shutdown) leaves the group to finish for the others.
        await asyncio.shield(fut)

    async def _flush(self) -> None:
        try:
            while self._waiters:
                paths, waiters = self._paths, self._waiters
                self._paths, self._waiters = set(), []
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=FSYNC_THREADS + 1, thread_name_prefix="fsync")
                try:
                    # One thread runs the round and hands the paths to the others (FSYNC_THREADS + 1:
                    # the round's own thread must not take a place its fsyncs wait for).
                    await asyncio.get_running_loop().run_in_executor(self._pool, _fsync_all, paths, self._pool)
                except BaseException as exc:  # noqa: BLE001 - every waiter of the group learns it
                    for fut in waiters:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else OSError(f"fsync interrupted: {exc!r}"))
                    if not isinstance(exc, Exception):
                        raise
                else:
                    self.rounds += 1
                    for fut in waiters:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._task = None
            if self._closing and self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None
            self._closing = False
            for fut in self._waiters:   # cancelled with callers still waiting: none is left hanging
                if not fut.done():
                    fut.set_exception(OSError("fsync group cancelled"))
            self._waiters, self._paths = [], set()


def _fsync_all(paths: set[str], pool: ThreadPoolExecutor | None = None) -> None:
    """fsync every path: files first, then directories (a name is worth keeping only once its content
    is on disk); a directory is named with a trailing "/" (``_write``), else found by a stat.
    Issued from several threads at once: the filesystem commits concurrent fsyncs
    together (measured here: 100 files in 230 ms one after the other, 56 ms from 16 threads)."""
    dirs = {p for p in paths if p.endswith("/") or os.path.isdir(p)}
    for group in (sorted(paths - dirs), sorted(dirs)):
        if len(group) <= 1:
            for path in group:
                _fsync(path)
        elif pool is not None:   # a long-lived pool (Syncs): no threads started per round
            for done in [pool.submit(_fsync, path) for path in group]:
                done.result()
        else:
            with ThreadPoolExecutor(max_workers=min(FSYNC_THREADS, len(group)), thread_name_prefix="fsync") as own:
                for done in [own.submit(_fsync, path) for path in group]:
                    done.result()


def _fsync(path: str) -> None:
    # O_RDONLY opens a directory as well as a file on Linux; fsync of either works.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: Path) -> list[Path]:
    """Make ``path`` and its missing parents 0700 (mkdir's mode is masked by the umask, so each is
    chmodded); returns the directories it made."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)
        made.append(d)
    return made


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
