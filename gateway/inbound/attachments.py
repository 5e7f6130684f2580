"""Attachment files: the bytes of inbound attachments, content-addressed under the state directory.

What flows in: an attachment's decoded bytes (whole, or as chunks so a 25 MB file is never held in
memory at once). What flows out: its SHA-256, which names the file
``<root>/ab/cd/<sha256>`` (``root`` is ``<state>/attachments``), and the bytes again on request.

What it promises:

- **Durable before it is named.** ``put`` writes a temporary file in ``<root>/tmp``, fsyncs it, renames it
  into place and fsyncs the directory; only then does it return the name the processor records in
  ``store.inbound.finish``. A crash in between leaves a stray temporary file (``remove_stale_temporaries``,
  for the sweeper), never a named file with partial content.
- **Idempotent.** The same bytes always have the same name; putting them again writes nothing new, so
  a message processed twice (crash between files and ``finish``) costs no space.
- **Private.** Files 0600, directories 0700: attachments are customers' mail.

Removing a file is the retention sweeper's decision (a file may be shared by several messages:
it counts references in the store first); this class only does what it is told.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

_NAME = re.compile(r"^[0-9a-f]{64}$")
# A temporary file this old belongs to a put that died; a live put finishes in well under this.
STALE_TEMP = 3600.0


class AttachmentFiles:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._tmp = self.root / "tmp"

    def path(self, sha256: str) -> Path:
        """Where the file named ``sha256`` lives; ``ValueError`` for anything but 64 lower-case hex digits
        (a name from a URL or a row must never reach outside ``root``)."""
        if not isinstance(sha256, str) or not _NAME.match(sha256):
            raise ValueError(f"not an attachment name: {sha256!r:.80}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes | Iterable[bytes]) -> str:
        """Store ``data`` (bytes, or an iterable of byte chunks such as ``Part.chunks()``); returns its
        SHA-256 once the file is on disk."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            sha256 = hashlib.sha256(data).hexdigest()
            if self.path(sha256).exists():
                return sha256
            data = (data,)
        _mkdir(self._tmp)
        digest = hashlib.sha256()
        fd, temp = tempfile.mkstemp(dir=self._tmp, prefix="put-")  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in data:
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            sha256 = digest.hexdigest()
            target = self.path(sha256)
            if target.exists():
                os.unlink(temp)
                return sha256
            created = _mkdir(target.parent)
            os.replace(temp, target)
        except BaseException:
            _unlink(temp)
            raise
        # The new name, and any fan-out directory made for it, must survive a power cut too.
        for d in {target.parent, *(c.parent for c in created)}:
            _fsync_dir(d)
        return sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def open(self, sha256: str) -> BinaryIO:
        """The file for reading (``FileNotFoundError`` when it is not there)."""
        return open(self.path(sha256), "rb")

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def remove(self, sha256: str) -> bool:
        """Delete the file; False when it was not there. Empty fan-out directories are left: there
        are at most 65,536 of them and a later put reuses them."""
        try:
            os.unlink(self.path(sha256))
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
