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
# poplib's own line bound is 2048; a real server's UIDL or LIST line is far shorter, and message lines
# longer than that are legal in the wild (RFC 5322 allows 998, broken mailers send more).
poplib._MAXLINE = 1 << 20


class Pop3Session:
    def __init__(self, incoming: Incoming, ctx: ssl.SSLContext, *, connect_timeout: float, command_timeout: float):
        self.incoming = incoming
        self.ctx = ctx
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.conn: poplib.POP3 | None = None
        self.tls = ""
        self.steps: list[dict[str, Any]] = []   # what open() got through, for `connector test`

    async def _run(self, step: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except poplib.error_proto as exc:
            raise MailboxError(step, f"{step}: server said {describe_reply(exc)}") from exc
        except (OSError, ssl.SSLError, EOFError, ValueError) as exc:
            raise MailboxError(step, f"{step}: {describe(exc)}") from exc

    async def open(self) -> list[dict[str, Any]]:
        inc = self.incoming
        steps = self.steps

        def connect() -> poplib.POP3:
            if inc.tls == "implicit":
                conn = poplib.POP3_SSL(inc.host, inc.port, timeout=self.connect_timeout, context=self.ctx)
            else:
                conn = poplib.POP3(inc.host, inc.port, timeout=self.connect_timeout)
            conn.sock.settimeout(self.command_timeout)
            return conn

        self.conn = await self._run("connect", connect)
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
            await asyncio.to_thread(self.conn.pass_, inc.password)
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
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await self._run("delete", conn.quit)
            finally:
                with contextlib.suppress(OSError):
                    conn.close()

    async def close(self) -> None:
        """Drop the session without QUIT: nothing marked for deletion is deleted."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()


def describe_reply(exc: poplib.error_proto) -> str:
    arg = exc.args[0] if exc.args else b""
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    return " ".join(text.split())[:200]
