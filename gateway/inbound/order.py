"""Replies whose parent is still being processed (several messages in flight: processor.concurrency).

Rows are taken in spool order and analysed side by side. A message that names an earlier row still
in flight (its In-Reply-To or References, or its own Message-ID: a second copy) waits for that
row's finish before its thread lookup, so it finds the record the earlier row writes, as a serial
processor would: a customer's two quick mails, the second answering the first, are one
conversation, and the answer's ``received`` event (and webhook) comes after its parent's.

A row's name is known at once when the spool kept its Message-ID header (the MX and the poller do:
``header_message_id``), else once it is parsed; only then does a later row wait on it. Only earlier
rows (smaller row ids: the spool's order) that hold their memory budget (registered after it is
taken) are waited for, so there is no cycle: the earliest row in flight waits for nothing. Messages
of one thread that do not name each other (two answers to the same outbound message) are not
ordered: each is threaded from the store alone. Event-loop side only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable

# Names of rows that ended, remembered for the rows analysed meanwhile (``since``): more than the
# rows that can be in flight at once (processor.concurrency) by far.
ENDED_KEPT = 4096


class _Flight:
    __slots__ = ("named", "names", "done")

    def __init__(self, hint: str) -> None:
        self.named = asyncio.Event()    # names holds what the row is recorded under
        self.names = {hint} if hint else set()
        if hint:
            self.named.set()
        self.done = asyncio.Event()     # finished, held or given up: nothing more to wait for


class ParentOrder:
    def __init__(self) -> None:
        self._flights: dict[int, _Flight] = {}
        self.ended = 0                                          # rows ended so far: a mark for ``since``
        self._ended_names: OrderedDict[str, int] = OrderedDict()  # name -> the mark its row ended at

    def begin(self, row_id: int, header_message_id: str = "") -> None:
        self._flights[row_id] = _Flight(header_message_id)

    def named(self, row_id: int, record_id: str) -> None:
        """The row is recorded under ``record_id`` (known once it is parsed)."""
        flight = self._flights.get(row_id)
        if flight is not None:
            flight.names.add(record_id)
            flight.named.set()

    def end(self, row_id: int) -> None:
        """The row is done with, whatever happened to it: whoever waits for it goes on."""
        flight = self._flights.pop(row_id, None)
        if flight is not None:
            self.ended += 1
            for name in flight.names:
                self._ended_names[name] = self.ended
                self._ended_names.move_to_end(name)
            while len(self._ended_names) > ENDED_KEPT:
                self._ended_names.popitem(last=False)
            flight.named.set()
            flight.done.set()

    async def parents(self, row_id: int, message_ids: Iterable[str], since: int | None = None) -> bool:
        """Wait for the earlier rows in flight recorded under one of ``message_ids``; True when any
        was waited for, or (``since``: the ``ended`` mark when the caller looked them up) one of them
        ended after that look: what was looked up before is then out of date."""
        wanted = set(message_ids)
        waited = since is not None and any(self._ended_names.get(m, 0) > since for m in wanted)
        for other, flight in list(self._flights.items()):
            if other >= row_id:
                continue
            await flight.named.wait()
            if not flight.names.isdisjoint(wanted) and not flight.done.is_set():
                await flight.done.wait()
                waited = True
        return waited

    def __len__(self) -> int:
        return len(self._flights)
