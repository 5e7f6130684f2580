"""A real submission listener on free loopback ports over a real store, for tests and the benchmark.

    async with submission_listener(tmp_path) as sub:        # tenant acme, verified example.com,
        async with sub.client() as smtp:                    # use case 'billing', login app/secret
            await smtp.sendmail("app@example.com", ["bob@example.org"], sub.message())

Authentication is a small stand-in with the real contract (``authenticate(username, password)`` ->
the use case context or None); the store, queue, listener and TLS are the real ones.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib

from gateway.budget import ByteBudget
from gateway.config import Config, SubmissionConfig
from gateway.metrics import Metrics
from gateway.paths import Paths
from gateway.store import Store
from gateway.submission import build, client_tls_context

PASSWORD = "correct horse battery staple"


async def make_usecase(store: Store, *, tenant: str = "acme", domain: str = "example.com", usecase: str = "billing",
                       senders: list[str] | None = None, rate_limit: int = 0, monthly_quota: int = 0,
                       verified: bool = True) -> dict[str, Any]:
    """A tenant with a (verified) domain and a use case, through the store's own functions."""
    try:
        await store.tenants.get(tenant)
    except Exception:  # noqa: BLE001 - not there yet
        await store.tenants.add(tenant, monthly_quota=monthly_quota)
    d = await store.domains.add(tenant, domain, token=f"token-{domain}", keys=[])
    await store.domains.record(d["id"], f"token-{domain}", "verified", {}, [])
    uc = await store.usecases.add(tenant, domain=domain, name=usecase, senders=senders or [f"app@{domain}"],
                                  entity="", kind="transactional", unsubscribe_scope="usecase", route="direct",
                                  rate_limit=rate_limit)
    if not verified:
        await store.domains.record(d["id"], f"token-{domain}", "failing", {}, [])
    return await store.usecases.context(uc["id"])


@dataclass
class FakeAuth:
    """username -> (password, use case id); calls counted."""

    store: Store
    logins: dict[str, tuple[str, int]] = field(default_factory=dict)
    calls: int = 0

    async def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        self.calls += 1
        entry = self.logins.get(username)
        if entry is None or entry[0] != password:
            return None
        return await self.store.usecases.context(entry[1])


def message(sender: str = "app@example.com", to: str = "bob@example.org", subject: str = "hello", *,
            extra: str = "", body: str = "Hello Bob.\r\n", size: int = 0, name: str = "App") -> bytes:
    """A small message (padded with 78-octet lines to about ``size`` bytes when given)."""
    head = f"From: {name} <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
    text = head + "\r\n" + body
    if size and len(text) < size:
        line = "x" * 76 + "\r\n"
        text += line * ((size - len(text)) // len(line))
    return text.encode()


class Listener:
    def __init__(self, server, store: Store, auth: FakeAuth, ctx: dict[str, Any]):
        self.server = server
        self.store = store
        self.auth = auth
        self.ctx = ctx
        self.queued: list[str] = []

    def port(self, name: str = "submission") -> int:
        return int(self.server.listeners()[0 if name == "submission" else 1].address.rpartition(":")[2])

    @contextlib.asynccontextmanager
    async def client(self, *, login: tuple[str, str] | None = ("app", PASSWORD), implicit: bool = False,
                     tls: bool = True) -> AsyncIterator[aiosmtplib.SMTP]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port("submissions" if implicit else "submission"),
                               use_tls=implicit, start_tls=False, tls_context=client_tls_context(), timeout=10)
        await smtp.connect()
        try:
            if tls and not implicit:
                await smtp.starttls(tls_context=client_tls_context())
            if login is not None:
                await smtp.login(*login)
            yield smtp
        finally:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()


@contextlib.asynccontextmanager
async def submission_listener(tmp_path: Path, *, submission: dict[str, Any] | None = None, usecase: dict[str, Any] | None = None,
                              store: Store | None = None, budget: ByteBudget | None = None) -> AsyncIterator[Listener]:
    own_store = store is None
    if store is None:
        store = await Store.open(tmp_path / "gateway.db")
    try:
        ctx = await make_usecase(store, **(usecase or {}))
        auth = FakeAuth(store, {"app": (PASSWORD, ctx["id"])})
        config = Config(submission=SubmissionConfig(**{"listen": "127.0.0.1:0", "listen_tls": "127.0.0.1:0", "context_ttl": 0.0,
                                                        **(submission or {})}))
        paths = Paths(state_dir=tmp_path, socket=tmp_path / "admin.sock")
        listener: Listener | None = None

        def queued(queue_id: str) -> None:
            listener.queued.append(queue_id)

        server = build(config, paths=paths, authenticate=auth.authenticate, context=store.usecases.context,
                       submit=store.queue.put, monthly_count=store.queue.monthly_count, metrics=Metrics(), on_queued=queued,
                       budget=budget, lineage=store.queue.lineage, limits=store.limits)
        listener = Listener(server, store, auth, ctx)
        await server.start()
        try:
            yield listener
        finally:
            import asyncio

            await server.stop(asyncio.get_running_loop().time() + 5)
    finally:
        if own_store:
            await store.close()


class RawClient:
    """Bytes on the wire, for dialogs a well-behaved client library refuses to send (bare LF, NUL...)."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, *, implicit: bool = True) -> "RawClient":
        import asyncio

        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls_context() if implicit else None)
        client = cls(reader, writer)
        await client.reply()  # banner
        return client

    async def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) reply: (code, text of the last line)."""
        while True:
            line = (await self.reader.readline()).decode()
            if not line:
                return 0, "connection closed"
            if line[3:4] != "-":
                return int(line[:3]), line[4:].strip()

    async def cmd(self, raw: bytes | str) -> tuple[int, str]:
        if isinstance(raw, str):
            raw = raw.encode()
        self.writer.write(raw + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def login(self, username: str = "app", password: str = PASSWORD) -> None:
        import base64

        code, text = await self.cmd("EHLO client.example")
        assert code == 250, text
        blob = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        code, text = await self.cmd(f"AUTH PLAIN {blob}")
        assert code == 235, (code, text)

    async def data(self, payload: bytes) -> tuple[int, str]:
        """DATA, then ``payload`` exactly as given (it must end with the final CRLF.CRLF)."""
        code, text = await self.cmd("DATA")
        assert code == 354, (code, text)
        self.writer.write(payload)
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
