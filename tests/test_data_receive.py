"""data.receive: DATA read to its final dot, whether the bytes arrive all at once (the complete lines
buffered behind the first are taken in one piece) or a few at a time (line by line): the same
message, the same outcome, and nothing after the final dot taken from the reader."""

from __future__ import annotations

import asyncio

import pytest

from gateway.budget import ByteBudget
from gateway.submission import data

LIMIT = 1001          # the MX's reader and line limit: 1000 octets with CRLF, + a stuffed dot
NEXT = b"MAIL FROM:<next@example.org>\r\n"   # pipelined behind the final dot


def unstuffed(wire: bytes) -> bytes:
    """The message a wire DATA stream (up to its final dot) carries: RFC 5321 4.5.2 by the book."""
    out = []
    for line in wire.split(b"\r\n")[:-1]:
        if line == b".":
            break
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
    return b"".join(out)


async def receive(wire: bytes, step: int | None, *, size_limit: int = 0, budget: int = 1 << 30) -> tuple[data.Outcome, bytes, bytes]:
    """(outcome, message, what is left in the reader) with ``wire`` fed at once (step None) or
    ``step`` bytes at a time as the reader asks for more."""
    reader = asyncio.StreamReader(limit=LIMIT)
    reservation = data.Reservation(ByteBudget(budget))
    if step is None:
        reader.feed_data(wire)
        reader.feed_eof()
        outcome, buf = await data.receive(reader, reservation, size_limit=size_limit, line_limit=LIMIT)
    else:
        async def feed() -> None:
            for i in range(0, len(wire), step):
                reader.feed_data(wire[i:i + step])
                await asyncio.sleep(0)   # the receiver runs between pieces: it sees them one by one
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        outcome, buf = await data.receive(reader, reservation, size_limit=size_limit, line_limit=LIMIT)
        await feeder
    reservation.release()
    return outcome, bytes(buf), await reader.read()


MESSAGES = {
    "plain": b"From: a@example.org\r\nSubject: x\r\n\r\n" + b"a line of text\r\n" * 60,
    "stuffed": b"..starts the body\r\nFrom: a@example.org\r\n\r\n..\r\n...two\r\nmid.dle.\r\n.\tx\r\n",
    "first line stuffed": b"..\r\n",
    "one line": b"Subject: x\r\n",
    "empty": b"",
    "dot not at a line start": b"a\r\n.a\r\nb.\r\n\r\n",
    "exactly the limit": b"x" * 999 + b"\r\n" + b".." + b"y" * 997 + b"\r\n",
    "bare LF and CR kept for the checks": b"a\nb\r\nc\rd\r\n",
}


@pytest.mark.parametrize("name", MESSAGES)
@pytest.mark.parametrize("step", [None, 1, 3, 64, 4096])
async def test_the_message_is_unstuffed_and_what_follows_the_dot_stays(name, step):
    wire = MESSAGES[name] + b".\r\n" + NEXT
    outcome, message, left = await receive(wire, step)
    assert outcome is data.Outcome.RECEIVED
    assert message == unstuffed(wire)
    assert left == NEXT


@pytest.mark.parametrize("step", [None, 5, 700])
async def test_a_line_over_the_limit_is_too_long_and_the_message_is_still_read_to_its_dot(step):
    wire = b"Subject: x\r\n\r\n" + b"ok\r\n" * 10 + b"z" * LIMIT + b"\r\n" + b"ok\r\n" * 10 + b".\r\n" + NEXT
    outcome, message, left = await receive(wire, step)
    assert (outcome, message, left) == (data.Outcome.TOO_LONG, b"", NEXT)


@pytest.mark.parametrize("step", [None, 7])
async def test_over_the_size_limit_is_too_much(step):
    wire = b"Subject: x\r\n\r\n" + b"0123456789\r\n" * 100 + b".\r\n" + NEXT
    outcome, message, left = await receive(wire, step, size_limit=1000)
    assert (outcome, message, left) == (data.Outcome.TOO_MUCH, b"", NEXT)


async def test_the_first_offending_line_decides_within_one_piece():
    """Over the size limit before the overlong line comes: TOO_MUCH, as line by line."""
    wire = b"Subject: x\r\n" + b"0123456789\r\n" * 100 + b"z" * 2000 + b"\r\n.\r\n" + NEXT
    assert (await receive(wire, None, size_limit=500))[0] is data.Outcome.TOO_MUCH
    assert (await receive(wire, 1, size_limit=500))[0] is data.Outcome.TOO_MUCH


async def test_a_hangup_before_the_dot_is_a_connection_error():
    with pytest.raises(ConnectionResetError):
        await receive(b"Subject: x\r\n\r\nbody\r\n", None)
