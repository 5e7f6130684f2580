"""Plays one dialog against an endpoint over loopback and records what the server answered.

Replies are read only where the dialog knows how many to expect (``Send.exact``); whatever else the
server says is read at the next wait or at the end, where ``Finish`` sends QUIT and waits for the
close. A dialog that outlives its timeout, or a server that leaves an expected reply or the close
unanswered, is a hang.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import re
import ssl
from dataclasses import dataclass, field

from gateway.submission import client_tls_context as _new_client_context
from tests.fuzz.grammar import Close, Dialog, Finish, Login, Send, StartTLS
from tests.fuzz.targets import Endpoint

REPLY_TIMEOUT = 10.0  # generous: a loaded 2-core machine is slow, a hang is forever
LOGIN_TIMEOUT = 30.0  # the daemon target hashes with argon2 off the loop: slow on a loaded machine, not a hang
DIALOG_TIMEOUT = 30.0
@functools.lru_cache(maxsize=1)
def client_context() -> ssl.SSLContext:
    """One client context for every dialog: building one loads the system CA store (50 ms, most of a dialog)."""
    return _new_client_context()


REPLY = re.compile(rb"^(\d{3})([ -]?)(.*)$", re.S)


@dataclass
class Outcome:
    replies: list[bytes] = field(default_factory=list)      # last line of every reply, as received
    lines: int = 0
    hang: str = ""                                          # what was left unanswered
    closed_early: bool = False                              # the server (or TLS) closed before Finish
    verdicts: list[tuple[str, bytes]] = field(default_factory=list)   # (why it must be refused, the final reply)
    error: str = ""                                         # client-side exception (not a finding by itself)


class _Reader:
    def __init__(self, reader: asyncio.StreamReader, outcome: Outcome):
        self.reader = reader
        self.outcome = outcome
        self.eof = False
        self.garbled: list[bytes] = []

    async def replies(self, n: int, timeout: float) -> list[bytes] | None:
        """The next ``n`` replies (their last lines); None when they did not come in time."""
        got: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while len(got) < n and not self.eof:
                    line = await self.reader.readline()
                    if not line:
                        self.eof = True
                        break
                    self.outcome.lines += 1
                    line = line.rstrip(b"\r\n")
                    m = REPLY.match(line)
                    if not m or m.group(2) == b"-":
                        if not m:
                            self.garbled.append(line)
                        continue
                    got.append(line)
                    self.outcome.replies.append(line)
        except TimeoutError:
            return None
        return got

    async def until_eof(self, timeout: float) -> bool:
        while not self.eof:
            got = await self.replies(1, timeout)
            if got is None:
                return False
        return True


async def _open(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = client_context() if ep.tls == "implicit" else None
    return await asyncio.open_connection(ep.host, ep.port, ssl=ctx, limit=1 << 20)


def _close(writer: asyncio.StreamWriter, abort: bool) -> None:
    if abort:
        writer.transport.abort()
    else:
        writer.close()


async def play(ep: Endpoint, dialog: Dialog, *, dialog_timeout: float = DIALOG_TIMEOUT) -> Outcome:
    outcome = Outcome()
    writer = None
    try:
        async with asyncio.timeout(dialog_timeout):
            reader, writer = await _open(ep)
            r = _Reader(reader, outcome)
            if await r.replies(1, REPLY_TIMEOUT) is None:
                outcome.hang = "banner"
                return outcome
            synced = True
            for step in dialog.steps:
                if r.eof:
                    outcome.closed_early = True
                    break
                if isinstance(step, Send):
                    writer.write(step.data)
                    await writer.drain()
                    if step.kind == "message" and not synced:
                        continue
                    want = step.replies if step.exact and synced else 0
                    if step.kind == "data" and synced and step.exact:
                        got = await r.replies(want, REPLY_TIMEOUT)
                        if got is None:
                            outcome.hang = f"no reply to {step.data[:40]!r}"
                            return outcome
                        if len(got) < want or not got[-1].startswith(b"354"):
                            synced = False
                        continue
                    if want:
                        got = await r.replies(want, REPLY_TIMEOUT)
                        if got is None:
                            outcome.hang = f"no reply to {step.data[:40]!r}"
                            return outcome
                        if len(got) < want:
                            synced = False
                        elif step.kind == "message" and step.refuse:
                            outcome.verdicts.append((step.refuse, got[-1]))
                    elif not step.exact:
                        synced = False
                elif isinstance(step, StartTLS):
                    writer.write(b"STARTTLS\r\n")
                    await writer.drain()
                    got = await r.replies(1, REPLY_TIMEOUT)
                    if not got or not got[-1].startswith(b"220"):
                        outcome.hang = "" if got else "no reply to STARTTLS"
                        outcome.error = f"STARTTLS refused: {got}"
                        return outcome
                    await writer.start_tls(client_context())
                elif isinstance(step, Login):
                    blob = base64.b64encode(b"\0" + ep.credentials[0].encode() + b"\0" + ep.credentials[1].encode())
                    writer.write(b"EHLO fuzz.example\r\nAUTH PLAIN " + blob + b"\r\n")
                    await writer.drain()
                    got = await r.replies(2, LOGIN_TIMEOUT)
                    if got is None or len(got) < 2 or not got[1].startswith(b"235"):
                        outcome.hang = "" if got is not None else "no reply to AUTH"
                        outcome.error = f"login failed: {got}"
                        return outcome
                elif isinstance(step, Close):
                    _close(writer, step.abort)
                    return outcome
                elif isinstance(step, Finish):
                    writer.write(step.prefix + b"QUIT\r\n")
                    await writer.drain()
                    if not await r.until_eof(REPLY_TIMEOUT):
                        outcome.hang = "no close after QUIT"
                    return outcome
    except TimeoutError:
        outcome.hang = outcome.hang or f"dialog over {dialog_timeout}s"
    except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError) as exc:
        outcome.closed_early = True
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None and not writer.is_closing():
            writer.transport.abort()
    return outcome
