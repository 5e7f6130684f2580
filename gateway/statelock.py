"""One daemon per state directory: an exclusive flock on <state>/gateway.lock holding its pid."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from .errors import StartupError


class StateLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> "StateLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StartupError(f"cannot open lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StartupError(
                f"another gateway (pid {holder}) is already running on state directory {self.path.parent}"
            ) from None
        pid = f"{os.getpid()}\n".encode()
        try:
            # Written over the old pid, then cut to length: no block is freed and asked for again,
            # which a full disk would refuse.
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                os.close(fd)
                raise StartupError(f"cannot write lock file {self.path}: {exc.strerror}") from None
            # The flock is the lock; the pid in it is only for the message above. A full disk must
            # not keep the daemon from starting.
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
