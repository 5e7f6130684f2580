"""Pins: the attachment files the processor is writing, which the sweeper must not remove.

Attachment files are content-addressed and shared: a file stays while any inbound row references
it. The processor writes a message's files first and references them in the write that finishes
the row; the sweeper deletes old rows and removes the files no row references any more. Between the
two a file exists that no row references yet, and the same bytes may arrive again while an older
row holding them is swept. So:

    processor (worker thread):  with putting(): sha = put(bytes); pin([sha])
                                ... finish (commit) ... unpin(shas)
    sweeper:                    begin() -> delete rows, list unreferenced files (one write)
                                -> with removing(): removable(sha)? remove -> end()

``putting`` is shared and ``removing`` exclusive (writers wait for nothing but a removal batch, a
removal waits for the puts in progress and new puts wait behind it), so no file is removed between
being written and being pinned. A file is removable when nobody pins it and nobody unpinned it
since ``begin``: an unpin after ``begin`` may follow a commit the sweeper's write did not see.
``touched`` only grows while a sweep runs.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


class Pins:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._putting = 0
        self._removing = False
        self._waiting = 0
        self._pinned: Counter[str] = Counter()
        self._sweeping = 0
        self._touched: set[str] = set()

    @contextmanager
    def putting(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._removing and not self._waiting)
            self._putting += 1
        try:
            yield
        finally:
            with self._cond:
                self._putting -= 1
                self._cond.notify_all()

    @contextmanager
    def removing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._removing and not self._putting)
            self._waiting -= 1
            self._removing = True
        try:
            yield
        finally:
            with self._cond:
                self._removing = False
                self._cond.notify_all()

    def pin(self, shas: Iterable[str]) -> None:
        with self._cond:
            for s in shas:
                self._pinned[s] += 1

    def unpin(self, shas: Iterable[str]) -> None:
        with self._cond:
            for s in shas:
                self._pinned[s] -= 1
                if self._pinned[s] <= 0:
                    del self._pinned[s]
                if self._sweeping:
                    self._touched.add(s)

    def begin(self) -> None:
        with self._cond:
            self._sweeping += 1

    def end(self) -> None:
        with self._cond:
            self._sweeping -= 1
            if not self._sweeping:
                self._touched.clear()

    def removable(self, sha: str) -> bool:
        with self._cond:
            return sha not in self._pinned and sha not in self._touched

    @property
    def pinned(self) -> int:
        return len(self._pinned)
