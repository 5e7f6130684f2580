"""One-click on a full disk: 503 with Retry-After (the provider tries again) and nothing half-written;
once there is room the same POST succeeds. A real tmpfs filled to the last byte (tests/support/smallfs.py)."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.config import StoreConfig
from gateway.metrics import Metrics
from gateway.store import Store
from gateway.unsubscribe import tokens
from gateway.unsubscribe.links import Keyring
from gateway.unsubscribe.web import Unsubscriber
from gateway.web import WebServer
from tests.support.smallfs import fill, small_filesystem
from tests.support.submission import make_usecase


@pytest.fixture
def small_fs(tmp_path):
    with small_filesystem(tmp_path / "fs", size_mb=8) as fs:
        yield fs


async def healthy() -> tuple[bool, dict]:
    return True, {}


async def test_a_full_disk_answers_503_and_the_retry_succeeds(small_fs):
    store = await Store.open(small_fs / "gateway.db", StoreConfig(min_free_bytes=0))
    metrics = Metrics()
    keyring = Keyring(store)
    server = WebServer("127.0.0.1:0", metrics, healthy, routes=Unsubscriber(store, keyring, metrics).web_routes())
    await server.start()
    try:
        ctx = await make_usecase(store)
        key_id, secret = await keyring.signing()
        token = tokens.mint(tokens.Claim(key_id, ctx["tenant_id"], "usecase", ctx["usecase_id"], ctx["usecase_id"], 0,
                                         "bob@example.org"), secret)
        url = f"http://{server.listeners()[0].address}/u/{token}"
        scope = [("usecase", ctx["usecase_id"])]
        filler = fill(small_fs)
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "300"
            assert await store.suppressions.find(ctx["tenant_id"], "bob@example.org", scope) is None
            assert await store.events.list(kind="unsubscribed") == []
            filler.unlink()
            async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
                assert r.status == 200
        assert (await store.suppressions.find(ctx["tenant_id"], "bob@example.org", scope))["reason"] == "unsubscribe"
        assert len(await store.events.list(kind="unsubscribed")) == 1
    finally:
        await server.stop(0)
        await store.close()


async def test_a_repeated_one_click_answers_without_a_write(tmp_path):
    """The repeat is answered from committed state: with the writer held inside another write, the
    second POST still gets its 200 (before, it queued a write and waited behind the held one)."""
    import asyncio
    import threading

    store = await Store.open(tmp_path / "gateway.db")
    metrics = Metrics()
    keyring = Keyring(store)
    server = WebServer("127.0.0.1:0", metrics, healthy, routes=Unsubscriber(store, keyring, metrics).web_routes())
    await server.start()
    held, release = threading.Event(), threading.Event()
    try:
        ctx = await make_usecase(store)
        key_id, secret = await keyring.signing()
        token = tokens.mint(tokens.Claim(key_id, ctx["tenant_id"], "usecase", ctx["usecase_id"], ctx["usecase_id"], 0,
                                         "bob@example.org"), secret)
        url = f"http://{server.listeners()[0].address}/u/{token}"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
                assert r.status == 200

            def hold(conn):
                held.set()
                release.wait(10)

            blocker = asyncio.ensure_future(store.db.write(hold))
            await asyncio.to_thread(held.wait, 10)
            try:
                async with http.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    assert r.status == 200
            finally:
                release.set()
            await blocker
        assert len(await store.events.list(kind="unsubscribed")) == 1
    finally:
        release.set()
        await server.stop(0)
        await store.close()
