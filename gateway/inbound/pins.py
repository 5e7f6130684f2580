"""Pins: the attachment files the processor is writing, which the sweeper must not remove.

Attachment files are content-addressed and shared: a file stays while any inbound row references
it. The processor writes a message's files first and references them in the write that finishes
the row; the sweeper deletes old rows and removes the files no row references any more. Between the
two a file exists that no row references yet, and the same bytes may arrive again while an older
row holding them is swept. So:

    processor:  pin(shas) -> put files -> finish (commit) -> unpin(shas)
    sweeper:    begin() -> delete rows and find unreferenced files (one write) -> removable(sha)? remove -> end()

A file is removable when nobody pins it and nobody unpinned it since ``begin``: an unpin after
``begin`` may follow a commit the sweeper's write did not see. Everything here runs on the event
loop (no locks); ``touched`` only grows while a sweep runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


class Pins:
    def __init__(self) -> None:
        self._pinned: Counter[str] = Counter()
        self._sweeping = 0
        self._touched: set[str] = set()

    def pin(self, shas: Iterable[str]) -> None:
        for s in shas:
            self._pinned[s] += 1

    def unpin(self, shas: Iterable[str]) -> None:
        for s in shas:
            self._pinned[s] -= 1
            if self._pinned[s] <= 0:
                del self._pinned[s]
            if self._sweeping:
                self._touched.add(s)

    def begin(self) -> None:
        self._sweeping += 1

    def end(self) -> None:
        self._sweeping -= 1
        if not self._sweeping:
            self._touched.clear()

    def removable(self, sha: str) -> bool:
        return sha not in self._pinned and sha not in self._touched
