"""The DATA phase: receiving a message under the daemon's in-flight memory budget.

aiosmtpd reads the whole message before it calls ``handle_DATA`` (one bytearray per line, then a
join), so a budget checked in the handler comes too late: twenty clients sending 24 MB at once
have all put their bytes in memory by then. The listener therefore reads DATA itself, here:

    DATA        reserve COPIES x (SIZE= of MAIL FROM, or a first step) from the budget;
                nothing left: 452 4.3.1 at once, no 354, the client sends nothing and retries
    each line   dot-unstuffed into one bytearray; the reservation grows in steps with the message;
                the budget runs out mid-message: the rest is read and dropped, 452 4.3.1 after the dot
    final dot   the buffer goes to ``handle_DATA`` as ``envelope.original_content`` (no bytes copy,
                no decoded str copy)
    always      the reservation is given back when DATA ends: committed, refused, or connection lost

What a message costs in memory (measured with VmHWM, one 24 MB message: RSS +24 MB while it
arrives, +0 for the preparation, +46 MB for a moment during the commit): the received buffer, which
becomes the queued message in place (prepare.prepare_in_place), and, while the store writes it, two
more copies inside SQLite (the bound value and the record). The store has one writer and writes
one message at a time, so that third copy exists for one message only. Charging COPIES = 2 per
message therefore bounds the listener at the budget plus one message of the largest size.
(The store's blob handle into a zeroblob would spare SQLite's copies too if ``body`` were the last
column of ``messages``; it is not, so that needs a migration.)
"""

from __future__ import annotations

import asyncio
import enum

from ..budget import ByteBudget
from ..errors import SMTPError

COPIES = 2                 # the message + SQLite's copies while it is committed, one at a time (docstring)
STEP = 1 << 20             # the reservation grows by at least this much at a time (fewer budget calls)
FIRST = 64 * 1024          # first reservation when the client declared no SIZE=


class Outcome(enum.Enum):
    RECEIVED = "received"
    TOO_LONG = "too_long"        # a line over the line-length limit
    TOO_MUCH = "too_much"        # over the message size limit
    NO_MEMORY = "no_memory"      # the budget ran out while the message arrived


def refusal(outcome: Outcome) -> SMTPError:
    """The reply for a DATA that was not received whole (RFC 3463 codes)."""
    if outcome is Outcome.TOO_LONG:
        return SMTPError(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6)", "DATA line over the length limit")
    if outcome is Outcome.TOO_MUCH:
        return SMTPError(552, "5.3.4", "Message size exceeds fixed maximum message size", "DATA over the size limit")
    # 4.3.1 "mail system full": a temporary refusal, the client keeps the message and retries.
    return SMTPError(452, "4.3.1", "Insufficient system resources, try again later", "in-flight memory budget spent")


class Reservation:
    """One message's share of the budget: grown as the message arrives, released exactly once."""

    def __init__(self, budget: ByteBudget):
        self.budget = budget
        self.held = 0

    def cover(self, nbytes: int) -> bool:
        """Hold at least COPIES x ``nbytes``; False (and nothing held) when the budget has no room."""
        need = COPIES * nbytes
        if need <= self.held:
            return True
        more = max(need - self.held, STEP) if self.held else need
        if self.budget.try_acquire(more):
            self.held += more
            return True
        if self.held and self.budget.in_use == self.held:
            # We are the only message in flight: the budget lets one message through whatever its
            # size (budget.py), so growing alone must not fail either.
            self.budget.release(self.held)
            self.held = 0
            if self.budget.try_acquire(need):
                self.held = need
                return True
        self.release()
        return False

    def release(self) -> None:
        if self.held:
            self.budget.release(self.held)
            self.held = 0


def first_size(declared: int | None, size_limit: int) -> int:
    """What to reserve at DATA: the declared size (capped at the limit), else a small first step."""
    if declared:
        return min(declared, size_limit) if size_limit else declared
    return FIRST


async def receive(reader: asyncio.StreamReader, reservation: Reservation, *, size_limit: int,
                  line_limit: int) -> tuple[Outcome, bytearray]:
    """Read DATA lines up to the final dot into one bytearray (dot-unstuffed, RFC 5321 4.5.2).

    Whatever goes wrong, the whole message is still read to its final dot, so the reply that
    follows is the answer to this DATA and the session stays in step with the client (RFC 5321
    4.2.5); from the moment it goes wrong nothing more is kept and the reservation is released.
    """
    buf = bytearray()
    outcome = Outcome.RECEIVED
    received = 0
    partial = False         # the previous piece was the head of an overlong line (no CRLF yet)
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            line = await reader.read(exc.consumed)   # a piece of an overlong line (no CRLF): drain it
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("connection closed during DATA") from exc
        if not partial and line == b".\r\n":
            break
        was_partial, partial = partial, not line.endswith(b"\r\n")
        received += len(line)
        if outcome is not Outcome.RECEIVED:
            continue
        if partial or was_partial or len(line) > line_limit:
            outcome = Outcome.TOO_LONG
        elif size_limit and received > size_limit:
            outcome = Outcome.TOO_MUCH
        elif not reservation.cover(received):
            outcome = Outcome.NO_MEMORY
        else:
            if line[:1] == b".":
                buf += memoryview(line)[1:]
            else:
                buf += line
            continue
        buf = bytearray()        # drop what was kept: nothing of this message is used now
        reservation.release()
    return outcome, buf
