"""Mailbox polling (IMAP, POP3) against a real Dovecot, through a real daemon and its admin socket."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from typing import Any, AsyncIterator

import aiohttp
import pytest

from tests.support.daemon import AdminError, DaemonHandle, running_daemon
from tests.support.dovecot import Dovecot
from tests.support.faults import failing
from tests.support.proxy import relay
from tests.support.tenancy import dns_overrides, sending_setup

# Short waits everywhere: a failing login backs off for 0.3 s, not 30.
POLLER = {"backoff_base": 0.3, "backoff_max": 2.0, "rescan_interval": 60.0, "interval": 0.3, "idle_timeout": 30.0}


def message(n: int, *, size: int = 0, subject: str = "") -> bytes:
    body = (b"x" * 76 + b"\r\n") * (size // 78) if size else f"Reply number {n}.\r\n".encode()
    return (f"From: Customer {n} <customer{n}@example.org>\r\nTo: help@acme.test\r\n"
            f"Subject: {subject or f'question {n}'}\r\nMessage-ID: <m{n}@example.org>\r\n"
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


async def received(d: DaemonHandle) -> list[dict[str, Any]]:
    """Every inbound row, whatever its state: the daemon's processor takes spooled rows at once."""
    rows = await d.store.db.read(lambda c: [dict(r) for r in c.execute(
        "SELECT id, inbound_id, source, connector_id, tenant_id, recipients, header_message_id, state FROM inbound_messages ORDER BY id")])
    return [{**r, "recipients": json.loads(r["recipients"])} for r in rows]


async def spooled(d: DaemonHandle, count: int, *, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Until at least ``count`` rows were spooled (the store is the one place to look)."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await received(d)
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
        woken = asyncio.Event()
        d.daemon.poller.on_spooled = woken.set   # what the daemon wires to the processor's wake
        added = await add_mailbox(d, dovecot)
        await asyncio.wait_for(woken.wait(), 10)
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
        status = await mailbox_status(d, until=lambda s: s.get("fetched") == 3 and s.get("last_ok_at"))
        assert status["last_error"] == "" and status["last_ok_at"] and status["uidvalidity"] and status["last_uid"] == 3
    # A restart: nothing fetched twice; a new message is.
    dovecot.append("alice", message(9))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        rows = await spooled(d, 4)
        await settled(d)
        assert len(await received(d)) == 4
        status = await mailbox_status(d)
        assert status["fetched"] == 4 and status["duplicates"] == 0 and status["last_uid"] == 4


async def test_uidvalidity_change_rescans_without_duplicates(tmp_path, dns_server, dovecot):
    raws = [message(0), message(1), b"From: a@example.org\r\nSubject: no id\r\n\r\nA message without a Message-ID.\r\n"]
    for raw in raws:
        dovecot.append("alice", raw)
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot)
        await spooled(d, 3)
        await settled(d)
        first = await mailbox_status(d)
    # The mailbox is recreated (restored from a backup, say): new UIDVALIDITY, the messages unread again.
    with dovecot.session("alice") as conn:
        conn.select("INBOX")
        conn.uid("STORE", "1:*", "-FLAGS.SILENT", "(\\Seen)")
    dovecot.set_uidvalidity("alice", "INBOX", first["uidvalidity"] + 1000)
    dovecot.append("alice", message(7))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        status = await mailbox_status(d, until=lambda s: s.get("uidvalidity") == first["uidvalidity"] + 1000 and s["fetched"] == 4)
        await settled(d)
        rows = await received(d)
        assert len(rows) == 4 and await hashes(d, rows) == sorted(sha(r) for r in [*raws, message(7)])
        # two known by Message-ID, the one without by its content hash
        assert status["duplicates"] == 3
        assert all("\\Seen" in flags for flags, _ in dovecot.messages("alice").values())


@pytest.mark.parametrize("graceful", [True, False], ids=["shutdown-with-BYE", "crash"])
async def test_server_restart_during_idle_is_reestablished_and_new_mail_fetched(tmp_path, dns_server, dovecot, graceful):
    dovecot.append("alice", message(0))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot)
        await spooled(d, 1)
        assert (await settled(d))["state"] == "idle"
        await asyncio.to_thread(dovecot.restart, graceful=graceful)
        dovecot.append("alice", message(1))
        rows = await spooled(d, 2)
        assert sorted(r["header_message_id"] for r in rows) == sorted([message_id(message(0)), message_id(message(1))])
        state = await settled(d)
        assert state["failures"] == 0 and state["last_error"] == ""
        # and IDLE works again on the new connection: mail appended now arrives without a poll interval
        dovecot.append("alice", message(2))
        await spooled(d, 3, timeout=5)


async def test_a_server_gone_silent_during_idle_is_noticed_and_left(tmp_path, dns_server, dovecot):
    # No BYE, no FIN: the connection just stops carrying anything. aioimaplib alone would wait forever.
    async with relay(dovecot.host, dovecot.imap_port) as proxy:
        async with daemon(tmp_path, dns_server, dovecot, idle_timeout=1.0, command_timeout=1.0) as d:
            await sending_setup(d, dns_server)
            await add_mailbox(d, dovecot, tls="none", insecure_plaintext=True, port=proxy.port)
            assert (await settled(d))["state"] == "idle" and proxy.connections == 1
            proxy.freeze()
            proxy.thaw()                       # the frozen connection stays dead; a new one works
            dovecot.append("alice", message(0))
            [row] = await spooled(d, 1, timeout=15)
            assert row["header_message_id"] == message_id(message(0)) and proxy.connections == 2


async def test_wrong_password_backs_off_shows_the_error_and_leaves_other_connectors_alone(tmp_path, dns_server, dovecot):
    dovecot.append("alice", message(0))
    dovecot.append("bob", message(1))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot, "bad", user="alice", password="not-the-password")
        await add_mailbox(d, dovecot, "good", user="bob")
        rows = await spooled(d, 1)
        assert rows[0]["header_message_id"] == message_id(message(1))
        status = await mailbox_status(d, "bad", until=lambda s: s.get("failures", 0) >= 2)
        assert "login refused for alice" in status["last_error"] and status["backoff_until"]
        assert "not-the-password" not in str(status)
        running = (await d.call("status"))["poller"]["mailboxes"]
        bad = next(m for m in running if m["name"] == "bad")
        assert bad["state"] == "backoff" and "login refused" in bad["last_error"] and bad["failures"] >= 2
        assert next(m for m in running if m["name"] == "good")["last_error"] == ""
        code, out, err = await cli(d, "status")
        assert code == 0 and "polled mailboxes" in out and "acme/bad  imap://alice@127.0.0.1" in out
        assert "ERROR login refused for alice" in out and "not-the-password" not in out
        assert d.daemon.metrics.mailbox_failures.labels(protocol="imap")._value.get() >= 2
        assert len(await received(d)) == 1   # nothing of alice's
        # The operator fixes the password: the change is picked up at once, the mail comes in.
        await d.call("connector.incoming", tenant="acme", name="bad", secret=dovecot.users["alice"])
        await spooled(d, 2)
        # fetched counts at the commit, the error is cleared when the round ends: wait for both.
        fixed = await mailbox_status(d, "bad", until=lambda s: s.get("fetched") == 1 and not s.get("last_error"))
        assert fixed["last_error"] == "" and fixed["failures"] == 0 and fixed["backoff_until"] is None


async def test_after_move_and_after_delete_change_the_server_only_after_the_commit(tmp_path, dns_server, dovecot):
    dovecot.create("alice", "Done")
    for i in range(3):
        dovecot.append("alice", message(i))
        dovecot.append("bob", message(10 + i))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot, "moving", user="alice", after="move:Done", tls="starttls")
        await add_mailbox(d, dovecot, "deleting", user="bob", after="delete")
        rows = await spooled(d, 6)
        await settled(d, "moving")
        await settled(d, "deleting")
        assert dovecot.messages("alice", "INBOX") == {}
        assert sorted(body for _, body in dovecot.messages("alice", "Done").values()) == sorted(message(i) for i in range(3))
        assert dovecot.messages("bob", "INBOX") == {}
        assert len(rows) == 6
        # A message arriving later goes the same way.
        dovecot.append("bob", message(20))
        await spooled(d, 7)
        async with asyncio.timeout(10):
            while dovecot.messages("bob", "INBOX"):
                await asyncio.sleep(0.05)


async def test_pop3_keeps_or_deletes_and_never_fetches_twice(tmp_path, dns_server, dovecot):
    for i in range(2):
        dovecot.append("alice", message(i))
        dovecot.append("bob", message(10 + i))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot, "keep", user="alice", protocol="pop3")
        await add_mailbox(d, dovecot, "drain", user="bob", protocol="pop3", tls="starttls", after="delete")
        rows = await spooled(d, 4)
        assert {r["source"] for r in rows} == {"pop3"}
        await mailbox_status(d, "keep", until=lambda s: s.get("fetched") == 2 and s.get("last_ok_at"))
        await mailbox_status(d, "drain", until=lambda s: s.get("fetched") == 2 and s.get("last_ok_at"))
        async with asyncio.timeout(10):
            while dovecot.messages("bob"):
                await asyncio.sleep(0.05)
        assert len(dovecot.messages("alice")) == 2    # kept
        dovecot.append("alice", message(5))
        await spooled(d, 5)
    async with daemon(tmp_path, dns_server, dovecot) as d:
        polled = (await mailbox_status(d, "keep"))["last_poll_at"]
        await mailbox_status(d, "keep", until=lambda s: s["last_poll_at"] != polled and s["last_poll_at"])
        assert len(await received(d)) == 5
        assert (await mailbox_status(d, "keep"))["fetched"] == 3


async def test_message_over_the_size_bound_is_left_and_reported(tmp_path, dns_server, dovecot):
    dovecot.append("alice", message(0))
    dovecot.append("alice", message(1, size=5000))
    dovecot.append("alice", message(2))
    async with daemon(tmp_path, dns_server, dovecot, max_message_size=2048) as d:
        setup = await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot)
        rows = await spooled(d, 2)
        status = await mailbox_status(d, until=lambda s: s.get("skipped") == 1)
        assert "uid 2 of INBOX: " in status["last_skipped"] and "over poller.max_message_size (2048)" in status["last_skipped"]
        assert sorted(r["header_message_id"] for r in rows) == sorted([message_id(message(0)), message_id(message(2))])
        [event] = await d.store.events.list(kind="inbound_skipped")
        assert event["data"]["connector_id"] and "5" in event["data"]["reason"]
        on_server = dovecot.messages("alice")
        assert "\\Seen" not in on_server[2][0] and "\\Seen" in on_server[1][0]
        async with aiohttp.ClientSession() as http, http.get(f"http://{d.address('web')}/metrics") as response:
            text = await response.text()
        assert 'gateway_mailbox_messages_total{outcome="spooled",protocol="imap"} 2.0' in text
        assert 'gateway_mailbox_messages_total{outcome="skipped",protocol="imap"} 1.0' in text
        assert setup["tenant"] == "acme"


async def cli(d: DaemonHandle, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from gateway.cli import main; main()", "--socket", str(d.daemon.paths.socket), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_one_connector_carries_smtp_out_and_imap_in_set_through_the_cli(tmp_path, dns_server, dovecot):
    dovecot.append("alice", message(0))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        code, out, err = await cli(d, "connector", "add", "acme", "mail", "--kind", "smtp", "--host", "127.0.0.1",
                                   "--username", "relay", "--secret-stdin", stdin="smtp-pw\n")
        assert code == 0, err
        # tls none needs the explicit flag
        code, out, err = await cli(d, "connector", "incoming", "acme", "mail", "--protocol", "imap", "--host", "127.0.0.1",
                                   "--port", str(dovecot.imap_port), "--tls", "none", "--username", "alice",
                                   "--usecase", "receipts", "--secret-stdin", stdin="alice-pw\n")
        assert code == 2 and "--insecure-plaintext" in err
        code, out, err = await cli(d, "connector", "incoming", "acme", "mail", "--protocol", "imap", "--host", "127.0.0.1",
                                   "--port", str(dovecot.imap_port), "--tls", "starttls", "--username", "alice",
                                   "--usecase", "receipts", "--after", "seen", "--secret-stdin", stdin="alice-pw\n")
        assert code == 0, err
        assert "direction" in out and "both" in out and "alice-pw" not in out and "smtp-pw" not in out
        await spooled(d, 1)
        await settled(d, "mail")
        code, out, err = await cli(d, "connector", "show", "acme", "mail")
        assert code == 0 and "fetched       1" in out and "last error    -" in out and "alice-pw" not in out
        shown = await d.call("connector.show", tenant="acme", name="mail")
        assert shown["settings"]["host"] == "127.0.0.1" and shown["settings"]["incoming"]["protocol"] == "imap"
        assert shown["has_secret"] and shown["has_incoming_secret"] and "pw" not in str(shown)
        listed = await d.call("connector.list", tenant="acme")
        assert "alice-pw" not in str(listed) and "smtp-pw" not in str(listed)
        # disabling the connector stops its polling; enabling starts it again
        await d.call("connector.update", tenant="acme", name="mail", enabled=False)
        async with asyncio.timeout(10):
            while d.daemon.poller.tasks:
                await asyncio.sleep(0.05)
        await d.call("connector.update", tenant="acme", name="mail", enabled=True)
        await settled(d, "mail")
        # removing the incoming settings stops the polling and leaves the SMTP side
        code, out, err = await cli(d, "connector", "incoming", "acme", "mail", "--remove")
        assert code == 0, err
        shown = await d.call("connector.show", tenant="acme", name="mail")
        assert shown["direction"] == "out" and "incoming" not in shown["settings"] and not shown["has_incoming_secret"]
        async with asyncio.timeout(10):
            while d.daemon.poller.tasks:
                await asyncio.sleep(0.05)


async def test_connector_test_reports_each_incoming_step(tmp_path, dns_server, dovecot):
    dovecot.append("alice", message(0))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot, "imap", tls="starttls", enabled=False)
        code, out, err = await cli(d, "connector", "add", "acme", "pop", "--kind", "pop3", "--host", "127.0.0.1",
                                   "--port", str(dovecot.pop3s_port), "--username", "alice", "--usecase", "receipts",
                                   "--after", "delete", "--secret-env", "POP_PW", "--disabled", env={"POP_PW": "alice-pw"})
        assert code == 0 and "pop3" in out and "alice-pw" not in out, err
        code, out, err = await cli(d, "connector", "test", "acme", "imap")
        assert code == 0, out + err
        lines = out.splitlines()
        assert [l.split()[1] for l in lines[:4]] == ["imap:connect", "imap:tls", "imap:login", "imap:folder"]
        assert all(l.startswith("ok") for l in lines[:4]) and "TLSv1" in lines[1] and "INBOX: 1 messages" in lines[3]
        result = await d.call("connector.test", tenant="acme", name="pop")
        assert result["ok"] and [s["step"] for s in result["steps"]] == ["pop3:connect", "pop3:tls", "pop3:login", "pop3:mailbox"]
        # a wrong password: the login step fails, the password is never echoed
        await d.call("connector.incoming", tenant="acme", name="imap", secret="wrong-secret-123")
        code, out, err = await cli(d, "connector", "test", "acme", "imap")
        assert code == 1 and "FAIL  imap:login" in out and "wrong-secret-123" not in out + err
        # a folder that does not exist
        await d.call("connector.incoming", tenant="acme", name="imap", secret="alice-pw", folder="Nope")
        result = await d.call("connector.test", tenant="acme", name="imap")
        assert not result["ok"] and result["steps"][-1]["step"] == "imap:folder" and not result["steps"][-1]["ok"]
        # nothing listens: connect fails
        await d.call("connector.incoming", tenant="acme", name="imap", port=9, tls="implicit", folder="INBOX")
        result = await d.call("connector.test", tenant="acme", name="imap")
        assert [(s["step"], s["ok"]) for s in result["steps"]] == [("imap:connect", False)]
        # the test changed nothing on the server
        assert all("\\Seen" not in flags for flags, _ in dovecot.messages("alice").values())


async def test_incoming_settings_are_checked(tmp_path, dns_server, dovecot):
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        bad = [
            ({"after": "move:Archive"}, "pop3", "pop3 cannot move"),
            ({"usecase": "nope"}, "imap", "no use case named"),
            ({"usecase": None}, "imap", "needs a destination"),
            ({"after": "archive"}, "imap", "after must be"),
            ({"tls": "none"}, "imap", "--insecure-plaintext"),
            ({"folder": "IN\"BOX"}, "imap", "folder must be"),
        ]
        for extra, protocol, text in bad:
            params = {"host": "127.0.0.1", "username": "alice", "secret": "pw", "usecase": "receipts", **extra}
            params = {k: v for k, v in params.items() if v is not None}
            with pytest.raises(AdminError) as info:
                await d.call("connector.add", tenant="acme", name="x", kind=protocol, **params)
            assert text in str(info.value)
        with pytest.raises(AdminError) as info:
            await d.call("connector.add", tenant="acme", name="x", kind="imap", host="127.0.0.1", username="alice", usecase="receipts")
        assert "password" in str(info.value)
        added = await d.call("connector.add", tenant="acme", name="x", kind="imap", host="127.0.0.1", username="alice",
                             secret="pw", usecase="receipts", tls="none", insecure_plaintext=True)
        assert added["settings"]["incoming"]["port"] == 143 and added["settings"]["incoming"]["folder"] == "INBOX"


async def test_mailbox_is_left_alone_when_the_spool_cannot_commit(tmp_path, dns_server, dovecot):
    dovecot.append("alice", message(0))
    async with daemon(tmp_path, dns_server, dovecot) as d:
        await sending_setup(d, dns_server)
        d.store.db.space.min_free = 1 << 60   # below the reserve: new mail is refused (StorageFull)
        await add_mailbox(d, dovecot, after="delete")
        status = await mailbox_status(d, until=lambda s: s.get("failures", 0) >= 1)
        assert status["last_error"].startswith("store: ") and status["fetched"] == 0
        assert list(dovecot.messages("alice").values())[0][1] == message(0)   # not deleted: nothing was stored
        assert await d.store.inbound.spooled() == []
        d.store.db.space.min_free = 0         # room again: the retry stores it, then deletes it
        [row] = await spooled(d, 1)
        assert row["header_message_id"] == message_id(message(0))
        async with asyncio.timeout(10):
            while dovecot.messages("alice"):
                await asyncio.sleep(0.05)


async def test_without_idle_the_mailbox_is_polled_every_interval(tmp_path, dns_server, dovecot):
    async with daemon(tmp_path, dns_server, dovecot, idle=False, interval=0.2) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot, tls="none", insecure_plaintext=True)
        assert (await settled(d))["state"] == "waiting"
        dovecot.append("alice", message(0))
        await spooled(d, 1, timeout=5)
        dovecot.append("alice", message(1))
        rows = await spooled(d, 2, timeout=5)
        assert [r["header_message_id"] for r in rows] == [message_id(message(0)), message_id(message(1))]


async def test_a_restart_during_backoff_waits_it_out(tmp_path, dns_server, dovecot):
    async with daemon(tmp_path, dns_server, dovecot, backoff_base=60.0, backoff_max=60.0) as d:
        await sending_setup(d, dns_server)
        await add_mailbox(d, dovecot, password="wrong")
        status = await mailbox_status(d, until=lambda s: s.get("failures", 0) >= 1)
        assert status["backoff_until"] > status["last_poll_at"] + 50
    # The next try is a minute away: a restart does not try the wrong password again before then.
    async with daemon(tmp_path, dns_server, dovecot, backoff_base=60.0, backoff_max=60.0) as d:
        state = await asyncio.wait_for(_state(d, "inbox", "backoff"), 10)
        assert state["failures"] == 1 and state["backoff_until"] == status["backoff_until"]
        assert "login refused" in state["last_error"]
        assert await mailbox_status(d) == status   # no new attempt recorded
        # a settings change (the fixed password) tries at once
        await d.call("connector.incoming", tenant="acme", name="inbox", secret=dovecot.users["alice"])
        await mailbox_status(d, until=lambda s: s.get("last_ok_at") and s["failures"] == 0)


async def _state(d: DaemonHandle, name: str, wanted: str) -> dict:
    while True:
        for t in d.daemon.poller.tasks.values():
            if t.state.name == name and t.state.state == wanted:
                return t.state.as_dict()
        await asyncio.sleep(0.05)


async def test_a_store_failure_reading_the_checkpoint_at_start_backs_off_instead_of_ending_the_task(tmp_path, dns_server, dovecot):
    # Before: the task's first read (its checkpoint) sat outside the loop's error handling, so one
    # failed read ended the task for good and the mailbox was never polled again until a restart.
    dovecot.append("alice", message(0))
    async with daemon(tmp_path, dns_server, dovecot, backoff_base=0.05) as d:
        await sending_setup(d, dns_server)
        with failing(d.store.mailboxes, "checkpoint", times=1) as switch:
            await add_mailbox(d, dovecot)
            [row] = await spooled(d, 1)
        assert switch.raised == 1 and row["header_message_id"] == message_id(message(0))
        status = await mailbox_status(d, until=lambda s: s.get("last_ok_at"))
        assert status["fetched"] == 1
