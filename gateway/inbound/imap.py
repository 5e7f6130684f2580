"""One IMAP session with a polled mailbox, over aioimaplib, with every wait bounded.

aioimaplib leaves two gaps this module closes. A lost connection (the server restarted, a BYE, a
dead network) completes none of its pending commands, so a plain ``await`` on a command or on
``wait_server_push`` would hang: every call here races the command against the connection's
``connection_lost`` callback and a timeout. And it has no STARTTLS: ``starttls`` sends the command,
upgrades the transport in place (``loop.start_tls``) and asks for the capabilities again (RFC 3501
6.2.1: those from before TLS are void).

Its exceptions are translated here, once, into ``MailboxError`` (``MailboxAuthError`` for a refused
login); the text never carries the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aioimaplib

from .mailbox import Incoming, MailboxAuthError, MailboxError, describe, describe_tls, header_message_id

T = TypeVar("T")
_RAISE = object()

_UID = re.compile(rb"\bUID (\d+)")
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_FETCH = re.compile(rb"^\d+ FETCH \(")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS")


@dataclass(frozen=True)
class Folder:
    uidvalidity: int
    uidnext: int
    exists: int


@dataclass(frozen=True)
class Meta:
    uid: int
    size: int
    message_id: str


def _set(uids: Sequence[int]) -> str:
    """A UID set, with ranges (a batch of consecutive UIDs is one short argument)."""
    parts: list[str] = []
    ordered = sorted(uids)
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts)


def _items(lines: Sequence[Any]) -> list[tuple[bytes, bytes]]:
    """FETCH response lines -> (the item's text around its literal, the literal) per message."""
    out: list[tuple[bytes, bytes]] = []
    head: bytes | None = None
    literal = b""
    for line in lines:
        if isinstance(line, bytearray):
            literal = bytes(line)
            continue
        if _FETCH.match(line):
            if head is not None:
                out.append((head, literal))
            head, literal = line, b""
        elif head is not None:
            head += b" " + line
    if head is not None:
        out.append((head, literal))
    return out


class ImapSession:
    """Connect with ``open``; every method raises ``MailboxError`` on failure."""

    def __init__(self, incoming: Incoming, ctx: ssl.SSLContext, *, connect_timeout: float, command_timeout: float):
        self.incoming = incoming
        self.ctx = ctx
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.client: aioimaplib.IMAP4 | None = None
        self.tls = ""
        self.steps: list[dict[str, Any]] = []   # what open() got through, for `connector test`
        self._lost = asyncio.Event()
        self._lost_reason = "the server closed the connection"

    # ------------------------------------------------------------------ plumbing

    def _on_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._lost_reason = f"connection lost: {describe(exc)}"
        self._lost.set()

    async def _run(self, step: str, aw: Awaitable[T], timeout: float | None = None, *, default: Any = _RAISE) -> T:
        """Await ``aw`` unless the connection is lost or ``timeout`` passes first (then: ``default``
        when given, else MailboxError)."""
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout or self.command_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()   # we were cancelled (the poller stops): the command goes with us
            raise
        finally:
            lost.cancel()
        if task in done:
            try:
                return task.result()
            except MailboxError:
                raise
            except (aioimaplib.AioImapException, OSError, ssl.SSLError, asyncio.TimeoutError, ValueError) as exc:
                raise MailboxError(step, f"{step}: {describe(exc)}") from exc
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if self._lost.is_set():
            raise MailboxError(step, f"{step}: {self._lost_reason}")
        if default is not _RAISE:
            return default
        raise MailboxError(step, f"{step}: no answer within {timeout or self.command_timeout:g}s")

    def _check(self, step: str, response: aioimaplib.Response) -> aioimaplib.Response:
        if response.result != "OK":
            text = b" ".join(l for l in response.lines if isinstance(l, bytes)).decode("utf-8", "replace")
            raise MailboxError(step, f"{step}: server said {response.result} {' '.join(text.split())[:200]}")
        return response

    # ------------------------------------------------------------------ session

    async def open(self) -> list[dict[str, Any]]:
        """Connect, TLS, log in; returns the steps done (for `connector test`)."""
        inc = self.incoming
        steps = self.steps
        loop = asyncio.get_running_loop()
        self.client = aioimaplib.IMAP4(host=inc.host, port=inc.port, timeout=self.command_timeout, conn_lost_cb=self._on_lost,
                                       ssl_context=self.ctx if inc.tls == "implicit" else None, loop=loop)
        await self._run("connect", self.client.wait_hello_from_server(), self.connect_timeout)
        transport = self.client.protocol.transport
        steps.append({"step": "connect", "ok": True, "detail": f"connected to {inc.host}:{inc.port}"})
        if inc.tls == "implicit":
            self.tls = describe_tls(transport.get_extra_info("ssl_object"))
        elif inc.tls == "starttls":
            await self.starttls()
        if self.tls:
            steps.append({"step": "tls", "ok": True, "detail": self.tls + ("" if inc.verify_tls else " (certificate not checked)")})
        else:
            steps.append({"step": "tls", "ok": True, "detail": "none (plaintext allowed for this connector)"})
        response = await self._run("login", self.client.login(inc.username, inc.password))
        if response.result != "OK":
            text = " ".join(b" ".join(l for l in response.lines if isinstance(l, bytes)).decode("utf-8", "replace").split())
            raise MailboxAuthError("login", f"login refused for {inc.username}: {text[:200]}")
        steps.append({"step": "login", "ok": True, "detail": f"logged in as {inc.username}"})
        return steps

    async def starttls(self) -> None:
        client = self.client
        if "STARTTLS" not in client.protocol.capabilities:
            raise MailboxError("tls", "tls: the server does not offer STARTTLS")
        protocol = client.protocol
        response = await self._run("tls", protocol.execute(aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)))
        self._check("tls", response)
        loop = asyncio.get_running_loop()
        transport = await self._run("tls", loop.start_tls(protocol.transport, protocol, self.ctx,
                                                          server_hostname=self.incoming.host), self.connect_timeout)
        protocol.transport = transport
        await self._run("tls", protocol.capability())
        self.tls = describe_tls(transport.get_extra_info("ssl_object"))

    async def select(self, folder: str, *, readonly: bool = False) -> Folder:
        client = self.client
        if readonly:
            response = await self._run("folder", client.examine(folder))
        else:
            response = await self._run("folder", client.select(folder))
        self._check("folder", response)
        uidvalidity = uidnext = exists = 0
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            if m := _UIDVALIDITY.search(line):
                uidvalidity = int(m.group(1))
            if m := _UIDNEXT.search(line):
                uidnext = int(m.group(1))
            if m := _EXISTS.match(line):
                exists = int(m.group(1))
        if not uidvalidity:
            raise MailboxError("folder", f"folder: {folder} has no UIDVALIDITY")
        return Folder(uidvalidity, uidnext, exists)

    async def folder_exists(self, folder: str) -> bool:
        response = await self._run("folder", self.client.list('""', folder))
        return response.result == "OK" and any(isinstance(l, bytes) and l.startswith(b"LIST ") for l in response.lines)

    async def search(self, *criteria: str) -> list[int]:
        response = self._check("search", await self._run("search", self.client.uid_search(*criteria, charset=None)))
        first = response.lines[0] if response.lines else b""
        return sorted(int(x) for x in first.split() if x.isdigit()) if isinstance(first, bytes) else []

    async def meta(self, uids: Sequence[int]) -> list[Meta]:
        """Size and Message-ID of each message (without its body: the bound is checked first)."""
        response = self._check("fetch", await self._run(
            "fetch", self.client.uid("fetch", _set(uids), "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")))
        out = []
        for head, literal in _items(response.lines):
            uid, size = _UID.search(head), _SIZE.search(head)
            if uid and size:
                out.append(Meta(int(uid.group(1)), int(size.group(1)), header_message_id(literal)))
        return out

    async def bodies(self, uids: Sequence[int]) -> dict[int, bytes]:
        """The messages, unchanged on the server (BODY.PEEK: no \\Seen before they are stored)."""
        response = self._check("fetch", await self._run("fetch", self.client.uid("fetch", _set(uids), "(UID BODY.PEEK[])")))
        out = {}
        for head, literal in _items(response.lines):
            # Only the items that carry the body: the server may also send a FETCH of flags for the
            # same UID (another client's change, RFC 3501 7.4.2), with no literal.
            if b"BODY[]" in head and (uid := _UID.search(head)):
                out[int(uid.group(1))] = literal
        return out

    async def mark_seen(self, uids: Sequence[int]) -> None:
        self._check("seen", await self._run("seen", self.client.uid("store", _set(uids), "+FLAGS.SILENT", "(\\Seen)")))

    async def move(self, uids: Sequence[int], folder: str) -> None:
        client = self.client
        if client.has_capability("MOVE"):
            self._check("move", await self._run("move", client.uid("move", _set(uids), folder)))
            return
        # RFC 6851 3.3: without MOVE, COPY then mark deleted then expunge those UIDs.
        self._check("move", await self._run("move", client.uid("copy", _set(uids), folder)))
        await self.delete(uids)

    async def delete(self, uids: Sequence[int]) -> None:
        client = self.client
        self._check("delete", await self._run("delete", client.uid("store", _set(uids), "+FLAGS.SILENT", "(\\Deleted)")))
        if client.has_capability("UIDPLUS"):
            self._check("delete", await self._run("delete", client.uid("expunge", _set(uids))))
        else:
            # Plain EXPUNGE also removes what others marked \Deleted: the folder is the gateway's to drain.
            self._check("delete", await self._run("delete", client.expunge()))

    @property
    def can_idle(self) -> bool:
        return self.client is not None and self.client.has_capability("IDLE")

    async def idle(self, timeout: float) -> bool:
        """Wait with IDLE until the server reports a change (True) or ``timeout`` passes (False).
        A BYE or a lost connection raises MailboxError: aioimaplib would wait on forever."""
        client = self.client
        idle = await self._run("idle", client.idle_start(timeout=timeout + 5))
        changed = False
        try:
            pushed = await self._run("idle", client.protocol.idle_queue.get(), timeout, default=[])
            for line in pushed:
                if not isinstance(line, (bytes, bytearray)):
                    continue
                if line.startswith(b"BYE"):
                    raise MailboxError("idle", f"idle: the server said {bytes(line).decode('utf-8', 'replace')[:200]}")
                if line.endswith((b"EXISTS", b"RECENT")) or b"FETCH" in line or line.endswith(b"EXPUNGE"):
                    changed = True
        finally:
            if not self._lost.is_set() and client.has_pending_idle():
                client.idle_done()
                with contextlib.suppress(MailboxError):
                    await self._run("idle", idle)
        return changed

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if not self._lost.is_set():
            with contextlib.suppress(MailboxError):
                await self._run("logout", client.logout(), 5)
        # Commands a lost connection left waiting would never finish: end them with the session.
        for task in (*client.tasks, *client.protocol.tasks):
            task.cancel()
        transport = client.protocol.transport
        if transport is not None:
            transport.close()
