"""Mailbox polling (IMAP, POP3) against a real Dovecot, through a real daemon and its admin socket."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
from typing import Any, AsyncIterator

import pytest

from tests.support.daemon import AdminError, DaemonHandle, running_daemon
from tests.support.dovecot import Dovecot
from tests.support.tenancy import dns_overrides, sending_setup

# Short waits everywhere: a failing login backs off for 0.3 s, not 30.
POLLER = {"backoff_base": 0.3, "backoff_max": 2.0, "rescan_interval": 60.0, "interval": 0.3, "idle_timeout": 30.0}


def message(n: int, *, size: int = 0, subject: str = "") -> bytes:
    body = (b"x" * 76 + b"\r\n") * (size // 78) if size else f"Reply number {n}.\r\n".encode()
    return (f"From: Customer {n} <customer{n}@example.org>\r\nTo: help@acme.test\r\n"
            f"Subject: {subject or f'question {n}'}\r\nMessage-ID: <m{n}.{id(body)}@example.org>\r\n"
            f"Date: Tue, 1 Dec 2026 12:00:00 +0000\r\n\r\n").encode() + body


def overrides(dns_server, dc: Dovecot, **poller: Any) -> dict[str, Any]:
    return {**dns_overrides(dns_server), "poller": {**POLLER, "ca_file": str(dc.cert_path), **poller}}


@contextlib.asynccontextmanager
async def daemon(tmp_path, dns_server, dc: Dovecot, **poller: Any) -> AsyncIterator[DaemonHandle]:
    async with running_daemon(tmp_path, overrides(dns_server, dc, **poller)) as d:
        yield d


async def add_mailbox(d: DaemonHandle, dc: Dovecot, name: str = "inbox", *, user: str = "alice", protocol: str = "imap",
                      tls: str = "implicit", after: str | None = None, password: str | None = None, **extra: Any) -> dict:
    port = {("imap", "implicit"): dc.imaps_port, ("imap", "starttls"): dc.imap_port, ("imap", "none"): dc.imap_port,
            ("pop3", "implicit"): dc.pop3s_port, ("pop3", "starttls"): dc.pop3_port, ("pop3", "none"): dc.pop3_port}[(protocol, tls)]
    params = {"host": "127.0.0.1", "port": port, "tls": tls, "username": user, "secret": password or dc.users[user],
              "usecase": "receipts", **({"after": after} if after else {}), **extra}
    return await d.call("connector.add", tenant="acme", name=name, kind=protocol, **params)


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def message_id(raw: bytes) -> str:
    return raw.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()


async def hashes(d: DaemonHandle, rows: list[dict[str, Any]]) -> list[str]:
    return sorted([sha(await d.store.inbound.raw(r["id"])) for r in rows])


async def spooled(d: DaemonHandle, count: int, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Until at least ``count`` rows are in the spool (the store is the one place to look)."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await d.store.inbound.spooled(limit=10000)
            if len(rows) >= count:
                return rows
            await asyncio.sleep(0.05)


async def mailbox_status(d: DaemonHandle, name: str = "inbox", *, until=lambda s: True, timeout: float = 20.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            shown = await d.call("connector.show", tenant="acme", name=name)
            status = shown.get("incoming_status") or {}
            if until(status):
                return status
            await asyncio.sleep(0.05)


async def settled(d: DaemonHandle, name: str = "inbox") -> dict:
    """Until the task reports a finished round (idle or waiting) after the last change."""
    poller = d.daemon.poller
    async with asyncio.timeout(20):
        while True:
            states = [t.state for t in poller.tasks.values() if t.state.name == name]
            if states and states[0].state in ("idle", "waiting") and states[0].last_poll_at:
                return states[0].as_dict()
            await asyncio.sleep(0.05)


async def test_imap_messages_polled_once_marked_seen_and_not_again_after_restart(tmp_path, dns_server, dovecot):
    raws = [message(i) for i in range(3)]
    for raw in raws:
        dovecot.append("alice", raw)
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        added = await add_mailbox(d, dovecot)
        assert added["direction"] == "in" and added["has_incoming_secret"] and "secret" not in str(added["settings"])
        rows = await spooled(d, 3)
        await settled(d)
        assert await hashes(d, rows) == sorted(sha(r) for r in raws)
        assert {r["source"] for r in rows} == {"imap"} and {r["connector_id"] for r in rows} == {added["id"]}
        assert all(r["tenant_id"] == added["tenant_id"] and r["recipients"] == [] for r in rows)
        assert {r["header_message_id"] for r in rows} == {message_id(r) for r in raws}
        # after seen: every message flagged \Seen on the server, still there
        on_server = dovecot.messages("alice")
        assert len(on_server) == 3 and all("\\Seen" in flags for flags, _ in on_server.values())
        status = await mailbox_status(d, until=lambda s: s.get("fetched") == 3)
        assert status["last_error"] == "" and status["last_ok_at"] and status["uidvalidity"] and status["last_uid"] == 3
    # A restart: nothing fetched twice; a new message is.
    dovecot.append("alice", message(9))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        rows = await spooled(d, 4)
        await settled(d)
        assert len(await d.store.inbound.spooled(limit=100)) == 4
        status = await mailbox_status(d)
        assert status["fetched"] == 4 and status["duplicates"] == 0 and status["last_uid"] == 4
