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

    One line is awaited at a time, but the complete lines already buffered behind it are taken in
    one piece (``_buffered``) and checked and unstuffed with bytes operations: a 4 KB message is
    one or two pieces instead of fifty ``readuntil`` calls (a sixth of the MX's loop time). A piece
    with anything wrong in it is gone through line by line, so the outcome is the one the first
    offending line gives. Nothing past the final dot is taken: what the client pipelined after it
    stays in the reader for the command loop.
    """
    state = _Receiving(reservation, size_limit=size_limit, line_limit=line_limit)
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
        state.line(line, partial or was_partial)
        if partial:
            continue
        size, final = _buffered(reader._buffer)  # noqa: SLF001 - read only; taken below through readexactly
        if size or final:
            block = await reader.readexactly(size + 3 if final else size)   # buffered: returns at once
            if size:
                state.block(block[:size] if final else block)
            if final:
                break
    return state.outcome, state.buf


def _buffered(buffer: bytearray) -> tuple[int, bool]:
    """(bytes of the complete lines at the start of ``buffer``, whether the final dot line follows
    them). ``buffer`` starts at a line start; a CRLF never overlaps another, so every one found is a
    line end."""
    if buffer[:3] == b".\r\n":
        return 0, True
    end = buffer.find(b"\r\n.\r\n")
    if end >= 0:
        return end + 2, True
    last = buffer.rfind(b"\r\n")
    return (last + 2 if last >= 0 else 0), False


class _Receiving:
    """The message being received: its unstuffed bytes, how many were sent, and the outcome so far."""

    def __init__(self, reservation: Reservation, *, size_limit: int, line_limit: int):
        self.reservation = reservation
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.buf = bytearray()
        self.outcome = Outcome.RECEIVED
        self.received = 0

    def line(self, line: bytes | memoryview, overlong: bool) -> None:
        """One line (or a piece of an overlong one, ``overlong``), with its CRLF when it has one."""
        self.received += len(line)
        if self.outcome is not Outcome.RECEIVED:
            return
        if overlong or len(line) > self.line_limit:
            self._fail(Outcome.TOO_LONG)
        elif self.size_limit and self.received > self.size_limit:
            self._fail(Outcome.TOO_MUCH)
        elif not self.reservation.cover(self.received):
            self._fail(Outcome.NO_MEMORY)
        elif line[:1] == b".":
            self.buf += line[1:]
        else:
            self.buf += line

    def block(self, block: bytes) -> None:
        """Complete lines (each ending with CRLF, none the final dot), checked together when they
        pass, else one by one (``line``)."""
        if self.outcome is not Outcome.RECEIVED:
            self.received += len(block)
            return
        lines = block.split(b"\r\n")
        lines.pop()   # the empty remainder after the last CRLF
        received = self.received + len(block)
        if (max(map(len, lines)) + 2 <= self.line_limit and not (self.size_limit and received > self.size_limit)
                and self.reservation.cover(received)):
            self.received = received
            if lines[0][:1] == b"." or b"\r\n." in block:
                self.buf += b"\r\n".join(line[1:] if line[:1] == b"." else line for line in lines) + b"\r\n"
            else:
                self.buf += block
            return
        for line in lines:
            self.line(line + b"\r\n", False)

    def _fail(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.buf = bytearray()        # drop what was kept: nothing of this message is used now
        self.reservation.release()
