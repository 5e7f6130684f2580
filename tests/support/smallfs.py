"""A small real filesystem that tests can fill to the last byte: a tmpfs of a few MiB.

    with small_filesystem(tmp_path / "fs", size_mb=8) as fs:    # pytest.skip if it cannot be made
        filler = fill(fs)                                        # until ENOSPC
        filler.unlink()                                          # room again

tmpfs needs the mount capability (the tests run as root in CI). A real filesystem is what makes the
test honest: SQLite, the WAL, the lock file and the admin socket all meet the same ENOSPC a full
/var/lib would give them. Without mount rights there is no other way to make one without FUSE or a
loop device (which need the same rights), so the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


@contextlib.contextmanager
def small_filesystem(path: Path, *, size_mb: int = 8) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size_mb} MiB tmpfs (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: a daemon killed by the test may still hold a file open for a moment.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(fs: Path, name: str = "filler") -> Path:
    """Write a file until the filesystem refuses (ENOSPC); returns its path."""
    filler = fs / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    finally:
        os.close(fd)
    return filler


def free_bytes(fs: Path) -> int:
    st = os.statvfs(fs)
    return st.f_bavail * st.f_frsize


__all__ = ["small_filesystem", "fill", "free_bytes"]
