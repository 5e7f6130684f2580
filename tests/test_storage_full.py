"""A full disk (issue 7 item 9): on a real small filesystem (tmpfs) filled to the last byte.

Store level: SQLITE_FULL becomes ``StorageFull`` once, at the store boundary, with one log line per
episode; the writer notices by itself when room comes back. The reserve (``store.min_free_bytes``)
refuses new mail before SQLite fails while other writes go on. Daemon level: `gateway run` as
systemd runs it, with its state directory on the tmpfs: 452 4.3.1, /health 503 with the reason,
SIGKILL and a restart while still full, then recovery by itself and nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import aiosmtplib
import pytest
from structlog.testing import capture_logs

from gateway.config import StoreConfig
from gateway.errors import StorageFull
from gateway.store import Store
from gateway.store.queue import NewMessage, QueueIds
from gateway.submission import client_tls_context
from tests.support.daemon import merge
from tests.support.delivery import FAST_RETRIES, publish_mx
from tests.support.process import AdminHandle, GatewayProcess
from tests.support.sink import mail_sink
from tests.support.smallfs import fill, free_bytes, small_filesystem
from tests.support.submission import make_usecase
from tests.support.submission import message as submission_message
from tests.support.tenancy import dns_overrides, sending_setup

_ids = QueueIds()


@pytest.fixture
def small_fs(tmp_path):
    with small_filesystem(tmp_path / "fs", size_mb=8) as fs:
        yield fs


def new_message(ctx: dict, size: int) -> NewMessage:
    qid = _ids.new()
    body = b"From: app@example.com\r\nSubject: x\r\n\r\n" + b"x" * size + b"\r\n"
    return NewMessage(queue_id=qid, tenant_id=ctx["tenant_id"], usecase_id=ctx["usecase_id"], mail_from="app@example.com",
                      message_id=f"{qid}@example.com", body=body, recipients=["bob@example.org"])


async def test_full_disk_is_storage_full_logged_once_and_the_writer_notices_room(small_fs):
    store = await Store.open(small_fs / "gateway.db", StoreConfig(min_free_bytes=0))
    try:
        ctx = await make_usecase(store)
        recovered = asyncio.Event()
        store.db.on_recovered(recovered.set)
        with capture_logs() as logs:
            filler = fill(small_fs)
            for _ in range(3):
                with pytest.raises(StorageFull):  # not sqlite3.OperationalError, not a bare StoreError
                    await store.queue.put(new_message(ctx, 512 * 1024))
            [problem] = store.problems()
            assert "is full" in problem and "database or disk is full" in problem
            assert (await store.queue.counts())["messages"] == 0  # reads go on
            waiting = asyncio.create_task(store.db.wait_writable())
            filler.unlink()
            # Nobody writes: the writer looks at the free space by itself and ends the episode.
            await asyncio.wait_for(recovered.wait(), 5)
            await asyncio.wait_for(waiting, 1)
            assert store.problems() == []
            put = await store.queue.put(new_message(ctx, 512 * 1024))
        assert (await store.queue.show(put["queue_id"])) is not None
        events = [e["event"] for e in logs]
        assert events.count("store_full") == 1, events  # one line per episode, not per write
        assert "store_commit_failed" not in events
        [back] = [e for e in logs if e["event"] == "store_space_recovered"]
        assert back["refused_writes"] >= 3
    finally:
        await store.close()


async def test_store_opens_on_a_full_disk_after_a_clean_stop(small_fs):
    """A clean stop removes SQLite's -shm index; opening again needs pages for it: the room kept aside."""
    store = await Store.open(small_fs / "gateway.db", StoreConfig(min_free_bytes=0))
    ctx = await make_usecase(store)
    queued = await store.queue.put(new_message(ctx, 1000))
    await store.close()
    assert (small_fs / "store-room").stat().st_size == 1 << 20
    filler = fill(small_fs)
    with capture_logs() as logs:
        store = await Store.open(small_fs / "gateway.db", StoreConfig(min_free_bytes=0))
    try:
        assert [e["event"] for e in logs] == ["store_room_released", "store_full"]
        assert store.db.full and "full" in store.problems()[0]
        assert (await store.queue.show(queued["queue_id"]))["recipients"][0]["state"] == "pending"
        recovered = asyncio.Event()
        store.db.on_recovered(recovered.set)
        filler.unlink()
        await asyncio.wait_for(recovered.wait(), 5)
        assert (small_fs / "store-room").stat().st_size == 1 << 20  # set aside again
    finally:
        await store.close()


async def test_reserve_refuses_new_mail_before_sqlite_fails_and_other_writes_go_on(tmp_path):
    store = await Store.open(tmp_path / "gateway.db", StoreConfig(min_free_bytes=1 << 60))
    try:
        ctx = await make_usecase(store)
        with capture_logs() as logs:
            for _ in range(3):
                with pytest.raises(StorageFull, match="below store.min_free_bytes"):
                    await store.queue.put(new_message(ctx, 100))
            # Delivery records, events and operator actions still write into the reserve.
            await store.events.append(ctx["tenant_id"], "note", "x")
            [problem] = store.problems()
            assert "min_free_bytes" in problem and "452 4.3.1" in problem
            store.db.space.min_free = 0  # what a reload to a smaller reserve does
            await store.queue.put(new_message(ctx, 100))
        assert store.problems() == []
        events = [e["event"] for e in logs]
        assert events.count("store_full") == 1 and events.count("store_space_recovered") == 1, events
        assert (await store.queue.counts())["messages"] == 1
    finally:
        await store.close()


# --------------------------------------------------------------------------- the daemon, as systemd runs it

QUEUE_ID = re.compile(rb"\bid ([0-9a-hjkmnp-tv-z]{16})\b")
BIG = 600 * 1024  # more than any slack the WAL file could have left on the full tmpfs


async def send(port: int, setup: dict, *rcpts: str, size: int = 0) -> str | list[str]:
    """One message per recipient over one STARTTLS + AUTH session; the reply of each final dot
    ('250 ...' or '452 ...'), a list when there are several."""
    replies = []
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls_context(), timeout=20)
    async with smtp:
        await smtp.login(setup["username"], setup["password"])
        for rcpt in rcpts:
            try:
                _, reply = await smtp.sendmail(setup["sender"], [rcpt], submission_message(sender=setup["sender"], to=rcpt, size=size))
            except aiosmtplib.SMTPDataError as exc:
                replies.append(f"{exc.code} {exc.message}")
                await smtp.rset()
            else:
                replies.append(f"250 {reply}")
    return replies[0] if len(replies) == 1 else replies


async def health(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/health") as resp:
            return resp.status, await resp.json()


async def wait_healthy(port: int, timeout: float = 15.0) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            status, body = await health(port)
            if status == 200:
                return body
            await asyncio.sleep(0.1)


def log_lines(gw: GatewayProcess) -> list[dict]:
    return [json.loads(line) for line in gw.stderr.splitlines() if line.startswith("{")]


async def test_disk_full_cycle_452_health_restart_while_full_recover_nothing_lost(tmp_path, small_fs, dns_server):
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        overrides = merge(dns_overrides(dns_server), {"delivery": {**FAST_RETRIES, "remote_port": sink.port},
                                                      "store": {"min_free_bytes": 0}, "log": {"format": "json"}})
        state = small_fs / "state"
        gw = GatewayProcess(tmp_path, overrides, state_dir=state).start()
        try:
            admin = AdminHandle(gw)
            setup = await sending_setup(admin, dns_server)
            port, web = await admin.listener_port("submission"), await admin.listener_port("web")
            accepted = []
            reply = await send(port, setup, "first@dest.test")
            assert reply.startswith("250"), reply
            accepted.append(reply.rsplit(" ", 1)[1])
            await sink.wait_for(1)

            # A delivery in flight when the disk fills: the remote has gone quiet at RCPT.
            sink.gate = asyncio.Event()
            reply = await send(port, setup, "inflight@dest.test")
            accepted.append(reply.rsplit(" ", 1)[1])
            await sink.wait_until(lambda s: s.waiting == 1)

            filler = fill(small_fs)
            assert free_bytes(small_fs) == 0
            replies = await send(port, setup, *(f"full{i}@dest.test" for i in range(3)), size=BIG)
            assert replies == ["452 4.3.1 Insufficient system storage"] * 3, replies
            status, body = await health(web)
            assert status == 503 and any("full" in p for p in body["problems"]), body
            lines = log_lines(gw)
            assert [line["event"] for line in lines].count("store_full") == 1
            assert not [line for line in lines if line["event"] in ("submission_data_failed", "store_commit_failed")
                        or "exception" in line], lines[-5:]

            # SIGKILL with the delivery still claimed, then start again on the still-full disk.
            gw.proc.kill()
            gw.proc.wait(10)
            gw.close()
            sink.gate = None
            gw = GatewayProcess(tmp_path, overrides, state_dir=state, name="gw-restarted").start()
            admin = AdminHandle(gw)
            port, web = await admin.listener_port("submission"), await admin.listener_port("web")
            shown = gw.cli_json("status")
            assert shown["store"]["full"] and "full" in shown["store"]["reason"], shown["store"]
            assert "FULL since" in gw.cli("status").stdout
            status, body = await health(web)
            assert status == 503 and any("full" in p for p in body["problems"]), body
            reply = await send(port, setup, "stillfull@dest.test", size=BIG)
            assert reply.startswith("452 4.3.1"), reply

            # Room again: the daemon finds out by itself; stale claims are released and delivered.
            filler.unlink()
            await wait_healthy(web)
            reply = await send(port, setup, "after@dest.test", size=BIG)
            assert reply.startswith("250"), reply
            accepted.append(reply.rsplit(" ", 1)[1])

            def delivered() -> list[str]:
                return [m.group(1).decode() for r in sink.messages for m in [QUEUE_ID.search(r.data)] if m]

            await sink.wait_until(lambda _s: set(accepted) <= set(delivered()), timeout=30)
            got = delivered()
            assert sorted(got) == sorted(accepted), (got, accepted)  # each exactly once, nothing else
            lines = log_lines(gw)
            events = [line["event"] for line in lines]
            assert events.count("store_full") == 1 and events.count("store_space_recovered") == 1, events
            assert "delivery_claims_released" in events
            assert await asyncio.to_thread(gw.stop) == 0  # the sink runs on this loop: do not block it
        finally:
            gw.close()


async def test_a_full_store_at_the_final_dot_is_one_refusal_not_a_protocol_error(tmp_path):
    """The 452 of a full store is counted once (the handler accounts for it) and not as the client's
    protocol error: ten full-disk refusals must not close a session with 421 Too many errors."""
    from tests.support.submission import message, submission_listener

    store = await Store.open(tmp_path / "gateway.db", StoreConfig(min_free_bytes=1 << 60))
    try:
        async with submission_listener(tmp_path, store=store) as sub:
            async with sub.client() as smtp:
                for _ in range(11):
                    with pytest.raises(aiosmtplib.SMTPDataError) as info:
                        await smtp.sendmail("app@example.com", ["bob@example.org"], message())
                    assert info.value.code == 452
            count = sub.server.metrics.registry.get_sample_value("gateway_submission_refusals_total", {"step": "DATA", "code": "452"})
        assert count == 11
    finally:
        await store.close()
