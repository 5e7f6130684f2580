"""Receiving set-ups written straight into a store (the addresses helper owns the CLI that makes
them), and a real MX listener over it.

    dom = await receiving_domain(store, tenant_id, "acme.test", catchall=True)
    await channel_address(store, dom, "help@acme.test", direction="both", enabled=True)
    async with mx_listener(tmp_path, store=store) as mx:
        async with mx.client() as smtp:
            await smtp.sendmail("customer@example.org", ["help@acme.test"], inbound_message())
        mx.rows()    # the spool, read through a connection of its own
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

from gateway import verp
from gateway.budget import ByteBudget
from gateway.config import Config, DaemonConfig, InboundConfig
from gateway.inbound.server import build
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.submission import TlsContext, client_tls_context
from gateway.unsubscribe.links import Keyring
from tests.support.submission import message


@dataclass(frozen=True)
class Domain:
    tenant_id: int
    id: int
    name: str
    usecase_id: int


async def receiving_domain(store: Store, tenant_id: int, name: str, *, state: str = "verified", inbound: bool = True,
                           catchall: bool = False, usecase: str | None = None) -> Domain:
    """A tenant domain in ``state`` with one use case; inbound on/off; the use case as catch-all or not."""
    def write(conn):
        cur = conn.execute("INSERT INTO domains (tenant_id, name, verification_token, state, created_at, inbound_enabled)"
                           " VALUES (?, ?, 't', ?, ?, ?)", (tenant_id, name, state, time.time(), int(inbound)))
        domain_id = cur.lastrowid
        cur = conn.execute("INSERT INTO usecases (tenant_id, domain_id, name, entity, kind, created_at)"
                           " VALUES (?, ?, ?, 'Test', 'transactional', ?)",
                           (tenant_id, domain_id, usecase or name.replace(".", "-"), time.time()))
        usecase_id = cur.lastrowid
        if catchall:
            conn.execute("UPDATE domains SET catchall_usecase_id = ? WHERE id = ?", (usecase_id, domain_id))
        return domain_id, usecase_id

    domain_id, usecase_id = await store.db.write(write)
    return Domain(tenant_id, domain_id, name, usecase_id)


async def channel_address(store: Store, domain: Domain, address: str, *, direction: str = "both", enabled: bool = True) -> int:
    def write(conn):
        now = time.time()
        return conn.execute("INSERT INTO channel_addresses (tenant_id, domain_id, usecase_id, address, direction, enabled,"
                            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (domain.tenant_id, domain.id, domain.usecase_id, address, direction, int(enabled), now, now)).lastrowid
    return await store.db.write(write)


async def set_tenant_enabled(store: Store, tenant_id: int, enabled: bool) -> None:
    await store.db.write(lambda conn: conn.execute("UPDATE tenants SET enabled = ? WHERE id = ?", (int(enabled), tenant_id)))


async def set_dmarc_reject(store: Store, tenant_id: int, on: bool) -> None:
    await store.db.write(lambda conn: conn.execute("UPDATE tenants SET dmarc_reject = ? WHERE id = ?", (int(on), tenant_id)))


# --------------------------------------------------------------------------- a real MX listener


@contextlib.asynccontextmanager
async def mx_listener(tmp_path: Path, *, inbound: dict[str, Any] | None = None, store: Store | None = None,
                      rules: dict[str, Any] | None = None, authenticate: Any = None,
                      budget: ByteBudget | None = None) -> AsyncIterator["Mx"]:
    """The MX listener on a free loopback port over a real store (and the submission TLS context)."""
    own_store = store is None
    if store is None:
        store = await Store.open(tmp_path / "gateway.db")
    try:
        config = Config(inbound=InboundConfig(**{"listen": "127.0.0.1:0", "facts_ttl": 0.0, **(inbound or {})}),
                        daemon=DaemonConfig(hostname="mx.gateway.test"), **(rules or {}))
        metrics = Metrics()
        tls = TlsContext("", "", tls_dir=tmp_path / "tls", hostname="mx.gateway.test")
        spooled: list[int] = []
        server = build(config, store=store, tls=tls, budget=budget or ByteBudget(config.daemon.memory_budget),
                       metrics=metrics, authenticate=authenticate, on_spooled=spooled.extend,
                       return_path=Keyring(store).return_path)
        await server.start()
        try:
            yield Mx(server, store, metrics, spooled, tmp_path / "gateway.db")
        finally:
            await server.stop(asyncio.get_running_loop().time() + 5)
    finally:
        if own_store:
            await store.close()


@dataclass
class Mx:
    server: Any
    store: Store
    metrics: Metrics
    spooled: list[int]
    db_path: Path

    @property
    def port(self) -> int:
        return int(self.server.listeners()[0].address.rpartition(":")[2])

    def refusals(self, step: str, code: str) -> float:
        return self.metrics.registry.get_sample_value("gateway_inbound_refusals_total", {"step": step, "code": code}) or 0.0

    @contextlib.asynccontextmanager
    async def client(self, *, tls: bool = False) -> AsyncIterator[aiosmtplib.SMTP]:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, start_tls=False, local_hostname="client.example.org", tls_context=client_tls_context(), timeout=10)
        await smtp.connect()
        try:
            if tls:
                await smtp.starttls(tls_context=client_tls_context())
            yield smtp
        finally:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()

    def rows(self) -> list[dict[str, Any]]:
        """The spool as another connection sees it (what is on disk)."""
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM inbound_messages ORDER BY id")]
        finally:
            conn.close()


def inbound_message(to: str = "help@acme.test", *, sender: str = "customer@example.org", subject: str = "Question",
                    extra: str = "", body: str = "Hello, I have a question.\r\n", size: int = 0) -> bytes:
    """What a customer sends to a channel address: submission's test message with a Message-ID."""
    return message(sender, to, subject, extra="Message-ID: <q1@example.org>\r\n" + extra, body=body, size=size, name="Customer")


_TAGGED = re.compile(rb"\b(bounces)\+([0-9a-z]{16})\.(\d+)@([a-z0-9.-]+[a-z0-9])", re.IGNORECASE)


async def link_key(store: Store) -> tuple[int, bytes]:
    """The store's signing link key, the one delivery signs VERP return paths with (made when there is none)."""
    return await Keyring(store).signing()


def db_link_key(db: Path) -> tuple[int, bytes]:
    """``link_key`` of a running daemon's SQLite file, made there as its keyring would when it has none yet
    (the daemon makes its key at its first signature; it reads this one instead)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        with conn:
            conn.execute("INSERT INTO unsubscribe_keys (secret, created_at) SELECT ?, ? WHERE NOT EXISTS"
                         " (SELECT 1 FROM unsubscribe_keys WHERE retired_at IS NULL)", (os.urandom(32), time.time()))
        key_id, secret = conn.execute("SELECT id, secret FROM unsubscribe_keys WHERE retired_at IS NULL ORDER BY id DESC").fetchone()
    finally:
        conn.close()
    return key_id, bytes(secret)


def signed_return_path(domain: str, queue_id: str, index: int, key: tuple[int, bytes]) -> str:
    """The return path delivery gives recipient ``index`` of ``queue_id`` (gateway/verp.py)."""
    return verp.return_path(verp.bounce_address(domain), queue_id, index, key)


def sign_tags(raw: bytes, key: tuple[int, bytes]) -> bytes:
    """``raw`` (a corpus bounce or complaint) with every unsigned ``bounces+QID.N@domain`` signed with ``key``,
    as if the gateway had sent the message it reports on."""
    def one(m: re.Match) -> bytes:
        return signed_return_path(m.group(4).decode(), m.group(2).decode().lower(), int(m.group(3)), key).encode()
    return _TAGGED.sub(one, raw)
