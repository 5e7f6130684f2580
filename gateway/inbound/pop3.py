"""One POP3 session with a polled mailbox: stdlib poplib, each call on a worker thread.

poplib blocks, so every step runs through ``asyncio.to_thread`` with the socket's own timeout
(``command_timeout``) bounding each read; a session is short (connect, list, fetch, delete, QUIT)
and the poller opens one per poll. Deletions take effect at QUIT (RFC 1939 6): a session that breaks
before it deletes nothing, and the UIDL checkpoint plus the spool's deduplication make the next
session skip what was stored. Exceptions are translated here into ``MailboxError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import poplib
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

from .mailbox import Incoming, MailboxAuthError, MailboxError, describe, describe_tls

T = TypeVar("T")
# poplib's own line bound is 2048 (its module-wide _MAXLINE); message lines longer than that are
# common in the wild (RFC 5322 allows 998, base64 without line breaks is one line of megabytes).
# A session reads lines up to its own ``max_line``: the largest message the poller takes, since a
# line cannot be longer than its message (a bound any lower makes such a message fail RETR at every
# retry, and the mailbox stuck behind it).
DEFAULT_MAX_LINE = 1 << 20


class Pop3Session:
    def __init__(self, incoming: Incoming, ctx: ssl.SSLContext, *, connect_timeout: float, command_timeout: float,
                 max_line: int = DEFAULT_MAX_LINE):
        self.max_line = max_line
        self.incoming = incoming
        self.ctx = ctx
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.conn: poplib.POP3 | None = None
        self._closed = False
        self.tls = ""
        self.steps: list[dict[str, Any]] = []   # what open() got through, for `connector test`

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """On the worker thread: a session closed meanwhile (the task was cancelled while this call
        ran) closes whatever socket the call left, a TLS one made by STLS included."""
        try:
            return fn(*args)
        finally:
            if self._closed:
                self._drop()

    async def _run(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(self._call, fn, *args)
        except poplib.error_proto as exc:
            raise MailboxError(step, f"{step}: server said {describe_reply(exc)}") from exc
        except (OSError, ssl.SSLError, EOFError, ValueError) as exc:
            raise MailboxError(step, f"{step}: {describe(exc)}") from exc

    async def open(self) -> list[dict[str, Any]]:
        inc = self.incoming
        steps = self.steps

        def connect() -> None:
            made: list[socket.socket] = []
            base = poplib.POP3_SSL if inc.tls == "implicit" else poplib.POP3
            max_line = self.max_line

            class Recorded(base):
                # poplib leaves the socket open when the greeting fails inside its constructor.
                def _create_socket(self, timeout: float) -> socket.socket:
                    made.append(super()._create_socket(timeout))
                    return made[-1]

                def _getline(self) -> tuple[bytes, int]:
                    # poplib's reader with this session's bound instead of the module's 2048.
                    line = self.file.readline(max_line + 1)
                    if len(line) > max_line:
                        raise poplib.error_proto("line too long")
                    if not line:
                        raise poplib.error_proto("-ERR EOF")
                    ending = 2 if line.endswith(b"\r\n") else 1 if line.endswith(b"\n") else 0
                    return line[:len(line) - ending], len(line)

            try:
                kwargs = {"context": self.ctx} if inc.tls == "implicit" else {}
                self.conn = Recorded(inc.host, inc.port, timeout=self.connect_timeout, **kwargs)
            except BaseException:
                for sock in made:
                    sock.close()
                raise
            self.conn.sock.settimeout(self.command_timeout)

        await self._run("connect", connect)
        steps.append({"step": "connect", "ok": True, "detail": f"connected to {inc.host}:{inc.port}"})
        if inc.tls == "starttls":
            caps = await self._run("tls", self.conn.capa)
            if "STLS" not in caps:
                raise MailboxError("tls", "tls: the server does not offer STLS")
            await self._run("tls", self.conn.stls, self.ctx)
        if inc.tls != "none":
            self.tls = describe_tls(self.conn.sock)
            steps.append({"step": "tls", "ok": True, "detail": self.tls + ("" if inc.verify_tls else " (certificate not checked)")})
        else:
            steps.append({"step": "tls", "ok": True, "detail": "none (plaintext allowed for this connector)"})
        await self._run("login", self.conn.user, inc.username)
        try:
            await asyncio.to_thread(self._call, self.conn.pass_, inc.password)
        except poplib.error_proto as exc:
            raise MailboxAuthError("login", f"login refused for {inc.username}: {describe_reply(exc)}") from exc
        except (OSError, EOFError) as exc:
            raise MailboxError("login", f"login: {describe(exc)}") from exc
        steps.append({"step": "login", "ok": True, "detail": f"logged in as {inc.username}"})
        return steps

    async def listing(self) -> list[tuple[int, str, int]]:
        """(message number, UIDL, size) of every message in the mailbox."""
        def run() -> list[tuple[int, str, int]]:
            sizes = {}
            for line in self.conn.list()[1]:
                num, _, size = line.decode("ascii", "replace").partition(" ")
                sizes[int(num)] = int(size.split()[0])
            out = []
            for line in self.conn.uidl()[1]:
                num, _, uidl = line.decode("ascii", "replace").partition(" ")
                out.append((int(num), uidl.strip(), sizes.get(int(num), 0)))
            return out

        return await self._run("list", run)

    async def retrieve(self, number: int) -> bytes:
        def run() -> bytes:
            _, lines, _ = self.conn.retr(number)
            return b"\r\n".join(lines) + b"\r\n"

        return await self._run("fetch", run)

    async def delete(self, numbers: list[int]) -> None:
        def run() -> None:
            for n in numbers:
                self.conn.dele(n)

        await self._run("delete", run)

    async def stat(self) -> tuple[int, int]:
        return await self._run("mailbox", self.conn.stat)

    async def quit(self) -> None:
        """QUIT: the server commits the deletions now (RFC 1939 6)."""
        if self.conn is None:
            return
        try:
            await self._run("delete", self.conn.quit)
        finally:
            await self.close()

    async def close(self) -> None:
        """Drop the session without QUIT (nothing marked for deletion is deleted). A call still
        running on the worker thread finds the session closed and closes what it made."""
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        conn = self.conn
        if conn is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            if conn.sock is not None:
                conn.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, AttributeError):
            conn.close()


def describe_reply(exc: poplib.error_proto) -> str:
    arg = exc.args[0] if exc.args else b""
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return " ".join(text.split())[:200]
