"""Webhooks against a real local HTTP receiver (tests/support/webhooks.py), with the daemon in process:
fail-then-succeed with the signature checked, one endpoint down not delaying another, auto-disable
after the failure period, the durable outbox written with its event, URL validation, the log bound."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gateway.config import StoreConfig, WebhooksConfig
from gateway.errors import InvalidArgument
from gateway.store import Store
from gateway.webhooks.signing import EVENT_IDS, HEADER, sign, verify
from gateway.webhooks.urls import address_refused, check_url
from tests.support.daemon import AdminError, running_daemon
from tests.support.webhooks import WebhookReceiver

FAST = {"webhooks": {"poll_interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.2, "backoff_jitter": 0.0}}


def merged(extra: dict) -> dict:
    out = {k: dict(v) for k, v in FAST.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


async def make_events(d, n: int, tenant: str = "acme") -> None:
    for i in range(n):
        await d.call("tenant.update", name=tenant, display_name=f"Acme {i}")


async def eventually(check, timeout: float = 15.0, interval: float = 0.02):
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(interval)
        return result


async def wait_posts(rx: WebhookReceiver, predicate, timeout: float = 15.0):
    return await asyncio.to_thread(rx.wait, predicate, timeout)


async def test_fails_then_succeeds_signed_in_order(tmp_path):
    with WebhookReceiver() as rx:
        rx.script("/a", [500, 500])
        async with running_daemon(tmp_path, FAST) as d:
            await d.call("tenant.add", name="acme")
            added = await d.call("webhook.add", tenant="acme", url=rx.url("/a"), events=["tenant_updated"], name="hook")
            secret = added["secret"]
            assert secret.startswith("whsec_") and added["events"] == ["tenant_updated"]
            await make_events(d, 5)
            await wait_posts(rx, lambda posts: sum(len(json.loads(p["body"])["events"]) for p in posts if p["status"] == 200) >= 5)

            posts = rx.of("/a", ok_only=False)
            assert [p["status"] for p in posts[:2]] == [500, 500] and posts[-1]["status"] == 200
            for p in posts:
                # The receiver's check: HMAC-SHA256 over "<t>.<body>" with the secret it was given once.
                assert verify(secret, p["headers"][HEADER], p["body"], now=time.time())
                assert not verify("whsec_wrong", p["headers"][HEADER], p["body"], now=time.time())
                ids = [e["id"] for e in json.loads(p["body"])["events"]]
                assert p["headers"][EVENT_IDS] == ",".join(map(str, ids))
            got = rx.events("/a")
            expected = await d.store.events.list(kind="tenant_updated")
            assert [e["id"] for e in got] == [e["id"] for e in expected]   # each once, in id order
            assert {e["type"] for e in got} == {"tenant_updated"} and got[0]["tenant"] == "acme"
            assert got[-1]["data"] == expected[-1]["data"] and got[0]["time"].endswith("Z")

            shown = await eventually(lambda: _drained(d, "hook"))   # the 2xx reached the receiver before its commit
            log = shown["deliveries"]   # newest first
            assert [e["status"] for e in log][-2:] == [500, 500] and log[0]["ok"] and log[0]["status"] == 200
            assert log[-1]["error"].startswith("HTTP 500") and all(e["latency"] > 0 for e in log)
            assert shown["backlog"] == 0 and shown["failures"] == 0 and shown["failing_since"] is None
            # The secret was shown once: never in show, list or the events.
            listed = await d.call("webhook.list", tenant="acme")
            everything = json.dumps([shown, listed, await d.call("events.list", limit=1000)])
            assert secret not in everything and listed[0]["backlog"] == 0


async def test_one_endpoint_down_does_not_delay_another(tmp_path):
    with WebhookReceiver() as rx:
        rx.hang("/down")
        async with running_daemon(tmp_path, merged({"webhooks": {"timeout": 3.0}})) as d:
            await d.call("tenant.add", name="acme")
            await d.call("webhook.add", tenant="acme", url=rx.url("/down"), name="down")
            await d.call("webhook.add", tenant="acme", url=rx.url("/up"), name="up", events=["tenant_updated"])
            await wait_posts(rx, lambda posts: any(p["path"] == "/down" for p in posts))  # /down holds a POST now
            for i in range(3):
                began = time.monotonic()
                await make_events(d, 1)
                await wait_posts(rx, lambda posts, n=i + 1: sum(p["path"] == "/up" for p in posts) >= n, timeout=5)
                # Well inside the 3 s the hanging endpoint holds its POST.
                assert time.monotonic() - began < 1.0
            assert (await d.call("webhook.show", tenant="acme", name="down"))["backlog"] >= 3


async def test_disabled_after_the_failure_period_then_enabled_again(tmp_path):
    with WebhookReceiver() as rx:
        rx.script("/bad", [503] * 10_000)
        async with running_daemon(tmp_path, merged({"webhooks": {"disable_after": 0.3}})) as d:
            await d.call("tenant.add", name="acme")
            await d.call("webhook.add", tenant="acme", url=rx.url("/bad"), name="bad", events=["tenant_updated"])
            await make_events(d, 2)
            disabled = await eventually(lambda: d.store.events.list(kind="webhook_disabled"))
            assert disabled[0]["subject"] == "bad" and "failing for" in disabled[0]["data"]["reason"]
            assert disabled[0]["data"]["failures"] >= 2 and "HTTP 503" in disabled[0]["data"]["last_error"]
            shown = await d.call("webhook.show", tenant="acme", name="bad")
            assert not shown["enabled"] and "disable_after" in shown["disabled_reason"] and shown["backlog"] == 2
            # Disabled: new events are not queued for it; what waited is kept.
            await make_events(d, 1)
            assert (await d.call("webhook.show", tenant="acme", name="bad"))["backlog"] == 2
            rx.script("/bad", [])
            await d.call("webhook.enable", tenant="acme", name="bad")
            await wait_posts(rx, lambda posts: any(p["path"] == "/bad" and p["status"] == 200 for p in posts))
            assert [e["data"]["display_name"] for e in rx.events("/bad")] == ["Acme 0", "Acme 1"]
            assert (await d.call("webhook.show", tenant="acme", name="bad"))["enabled"]


async def test_test_command_and_delivery_log_bound(tmp_path):
    with WebhookReceiver() as rx:
        async with running_daemon(tmp_path, merged({"webhooks": {"keep_log": 3, "batch_max": 1}})) as d:
            await d.call("tenant.add", name="acme")
            secret = (await d.call("webhook.add", tenant="acme", url=rx.url("/t"), name="t", events=["tenant_updated"]))["secret"]
            result = await d.call("webhook.test", tenant="acme", name="t")
            assert result["ok"] and result["status"] == 200 and result["latency"] > 0
            test_post = rx.of("/t")[0]
            assert json.loads(test_post["body"])["events"][0]["type"] == "webhook_test"
            assert verify(secret, test_post["headers"][HEADER], test_post["body"], now=time.time())
            await make_events(d, 5)
            await wait_posts(rx, lambda posts: len(posts) >= 6)
            shown = await eventually(lambda: _drained(d, "t"))
            assert len(shown["deliveries"]) == 3   # keep_log: the last 3 attempts
            assert [x["first_event"] for x in shown["deliveries"]] == sorted((x["first_event"] for x in shown["deliveries"]), reverse=True)
            rx.hang("/t")
            with pytest.raises(AdminError):
                await d.call("webhook.test", tenant="acme", name="nope")
            await d.call("webhook.delete", tenant="acme", name="t")
            assert await d.call("webhook.list") == []


async def _drained(d, name):
    shown = await d.call("webhook.show", tenant="acme", name=name)
    return shown if shown["backlog"] == 0 and shown["deliveries"] and shown["deliveries"][0]["ok"] else None


async def test_urls_refused_when_added(tmp_path):
    async with running_daemon(tmp_path, {"webhooks": {"allow_loopback": False}}) as d:
        await d.call("tenant.add", name="acme")
        for url, why in [("ftp://example.com/x", "http"), ("http://example.com/\r\nX-Evil: 1", "printable"),
                         ("https://" + "a" * 2100 + ".com/", "characters"), ("https://u:p@example.com/", "user"),
                         ("http://127.0.0.1:8080/", "loopback"), ("http://localhost/", "loopback"),
                         ("http://[::1]/", "loopback"), ("http://169.254.169.254/latest/", "link-local"),
                         ("http:///nohost", "host")]:
            with pytest.raises(AdminError) as err:
                await d.call("webhook.add", tenant="acme", url=url)
            assert err.value.code == "invalid" and why in err.value.message, (url, err.value.message)
        with pytest.raises(AdminError) as err:
            await d.call("webhook.add", tenant="acme", url="https://hooks.example.com/", events=["Delivered!"])
        assert err.value.code == "invalid"
        added = await d.call("webhook.add", tenant="acme", url="https://hooks.example.com/in", events=["delivered", "bounced"])
        assert added["name"] == "hooks.example.com" and added["events"] == ["bounced", "delivered"]
        with pytest.raises(AdminError) as err:
            await d.call("webhook.add", tenant="acme", url="https://hooks.example.com/in")
        assert err.value.code == "conflict"
        with pytest.raises(AdminError) as err:
            await d.call("tenant.delete", name="acme")
        assert "webhook" in err.value.message


def test_address_rules():
    assert address_refused("127.0.0.1", allow_loopback=False) and not address_refused("127.0.0.1", allow_loopback=True)
    assert address_refused("::ffff:127.0.0.1", allow_loopback=False)
    assert address_refused("169.254.169.254", allow_loopback=True)   # never, loopback allowed or not
    assert address_refused("0.0.0.0", allow_loopback=True) and address_refused("224.0.0.1", allow_loopback=True)
    assert not address_refused("10.1.2.3", allow_loopback=False) and not address_refused("hooks.example.com", allow_loopback=False)
    with pytest.raises(InvalidArgument):
        check_url("http://example.com:0/", allow_loopback=True)
    assert sign("k", 1, b"x") == sign("k", 1, b"x") != sign("k", 2, b"x")
    assert not verify("k", sign("k", 1000, b"x"), b"x", now=2000)  # too old: a replay


async def test_outbox_rows_commit_with_their_event(tmp_path, store_url):
    store = await Store.open(tmp_path / "gw.db", StoreConfig(url=store_url))
    try:
        acme = (await store.tenants.add("acme"))["id"]
        other = (await store.tenants.add("other"))["id"]
        ep = await store.webhooks.add("acme", "a", "https://h.example/", "whsec_x", ["delivered"])
        every = await store.webhooks.add("acme", "b", "https://h.example/b", "whsec_y", None)
        from gateway.store.events import append_event

        def failing(conn):
            append_event(conn, acme, "delivered", "q1")
            raise RuntimeError("the write that caused it failed")

        with pytest.raises(RuntimeError):
            await store.db.write(failing)
        assert await store.webhooks.backlog(ep["id"]) == 0 and await store.events.list(kind="delivered") == []
        await store.events.append(acme, "delivered", "q2")
        await store.events.append(acme, "deferred", "q2")
        await store.events.append(other, "delivered", "q3")
        assert await store.webhooks.backlog(ep["id"]) == 1            # its kind only
        assert await store.webhooks.backlog(every["id"]) == 2 + 1     # everything of acme (and webhook_added of 'b')
        head = await store.webhooks.head(ep["id"], 10)
        assert [(h["kind"], h["subject"], h["tenant"]) for h in head] == [("delivered", "q2", "acme")]
        await store.webhooks.set_enabled("acme", "a", False)
        await store.events.append(acme, "delivered", "q4")
        assert await store.webhooks.backlog(ep["id"]) == 1
    finally:
        await store.close()


async def test_post_body_splices_the_stored_data_byte_for_byte(tmp_path, store_url):
    """The sender puts each event's data into the POST as stored (event_json): the bytes are those
    of json.dumps of the whole event parsed, for data with non-ASCII text, nesting, floats, nulls."""
    from gateway.webhooks.sender import WebhookSender, event_json, payload

    store = await Store.open(tmp_path / "gw.db", StoreConfig(url=store_url))
    try:
        acme = (await store.tenants.add("acme"))["id"]
        ep = await store.webhooks.add("acme", "a", "https://h.example/", "whsec_x", None)
        datas = [{}, {"reply": "550 5.1.1 <jöe@exämple.org> unknown \u2028 \"quoted\"", "code": 550},
                 {"nested": {"list": [1, 2.5, None, True], "e": 1e-7}, "emoji": "\U0001f600"}]
        for i, data in enumerate(datas):
            await store.events.append(acme, "delivered", f"q{i}\u00e9", data)
        rows = await store.webhooks.head(ep["id"], 10)
        rows = [r for r in rows if r["kind"] == "delivered"]
        assert [payload(r)["data"] for r in rows] == datas
        for r in rows:
            assert event_json(r) == json.dumps(payload(r), separators=(",", ":")).encode()
        _, body = await WebhookSender(store, WebhooksConfig())._body(rows)
        assert json.loads(body) == {"events": [payload(r) for r in rows]}
    finally:
        await store.close()


async def test_sweeper_ages_out_the_delivery_log(tmp_path, store_url):
    from gateway.config import QueueConfig, WebhooksConfig
    from gateway.sweeper import Sweeper

    store = await Store.open(tmp_path / "gw.db", StoreConfig(url=store_url))
    try:
        await store.tenants.add("acme")
        ep = await store.webhooks.add("acme", "a", "https://h.example/", "whsec_x", None)
        for at in (1000.0, 2000.0, 9000.0):
            await store.webhooks.failed(ep["id"], {"at": at, "first_event": 1, "last_event": 1, "events": 1, "status": 500,
                                                   "latency": 0.01, "ok": False, "error": "HTTP 500"}, at + 5, keep=100)
        sweeper = Sweeper(store, QueueConfig(), clock=lambda: 10000.0, webhooks=WebhooksConfig(keep_log_seconds=7500.0))
        summary = await sweeper.sweep()
        assert summary["webhook_log"] == 2
        assert [d["at"] for d in await store.webhooks.deliveries(ep["id"])] == [9000.0]
    finally:
        await store.close()


async def test_mail_outcomes_reach_the_webhook(tmp_path, dns_server):
    """A real delivery (a deferral, then 250) and a 5xx bounce: the tenant's endpoint gets queued,
    deferred, delivered and bounced in the order they happened, with the remote's reply."""
    from tests.support.delivery import delivering_daemon, enqueue, publish_mx, wait_events
    from tests.support.sink import mail_sink

    with WebhookReceiver() as rx:
        async with mail_sink() as sink:
            publish_mx(dns_server, "dest.test")
            sink.script("bob@dest.test", "451 4.3.0 busy, try later", "250 2.1.5 OK")
            sink.script("eve@dest.test", "550 5.1.1 no such user here")
            async with delivering_daemon(tmp_path, dns_server, sink.port, FAST) as (d, setup):
                await d.call("webhook.add", tenant="acme", url=rx.url("/mail"), name="mail",
                             events=["queued", "deferred", "delivered", "bounced"])
                qid = await enqueue(d, setup, ["bob@dest.test", "eve@dest.test"])
                await wait_events(d, qid, "delivered")
                await wait_posts(rx, lambda posts: {"delivered", "bounced"} <= {e["type"] for e in rx.events("/mail")
                                                                                 if e["subject"] == qid})
                got = [e for e in rx.events("/mail") if e["subject"] == qid]
                kinds = [e["type"] for e in got]
                assert kinds[0] == "queued" and kinds.index("deferred") < kinds.index("delivered")
                assert sorted(kinds) == ["bounced", "deferred", "delivered", "queued"]
                assert [e["id"] for e in got] == sorted(e["id"] for e in got)
                bounced = next(e for e in got if e["type"] == "bounced")
                assert bounced["data"]["code"] == 550 and bounced["data"]["enhanced"] == "5.1.1"
                assert bounced["data"]["rcpt"] == "eve@dest.test" and bounced["tenant"] == "acme"


async def test_endpoints_that_are_down_cannot_take_the_slots_of_one_that_works(tmp_path):
    """concurrency 1: the one slot is held by the first hanging POST for at most one timeout; after
    that, failing endpoints retry from a pool of their own and the working endpoint flows."""
    with WebhookReceiver() as rx:
        for path in ("/down1", "/down2"):
            rx.hang(path)
        async with running_daemon(tmp_path, merged({"webhooks": {"timeout": 0.5, "concurrency": 1, "backoff_base": 0.01,
                                                                 "backoff_max": 0.01}})) as d:
            await d.call("tenant.add", name="acme")
            for name in ("down1", "down2"):
                await d.call("webhook.add", tenant="acme", url=rx.url(f"/{name}"), name=name)
            await make_events(d, 1)
            # Both have failed once (timed out): from now on they retry, hanging, back to back.
            await eventually(lambda: _failing(d, "down1", "down2"))
            await d.call("webhook.add", tenant="acme", url=rx.url("/up"), name="up", events=["tenant_updated"])
            for i in range(3):
                began = time.monotonic()
                await make_events(d, 1)
                await wait_posts(rx, lambda posts, n=i + 1: sum(p["path"] == "/up" for p in posts) >= n, timeout=5)
                assert time.monotonic() - began < 0.4   # never behind a 0.5 s hanging POST


async def _failing(d, *names):
    shown = [await d.call("webhook.show", tenant="acme", name=n) for n in names]
    return all(s["failures"] >= 1 for s in shown)


async def test_one_node_sends_for_an_endpoint_at_a_time(tmp_path, store_url):
    """Two senders on one store (two gateway nodes): the endpoint's lease lets one of them send, so its
    events stay in order; the other takes over once the lease runs out."""
    from gateway.config import WebhooksConfig
    from gateway.webhooks.sender import WebhookSender

    cfg = WebhooksConfig(allow_loopback=True, poll_interval=0.02, timeout=1.0)
    clock = [time.time()]
    with WebhookReceiver() as rx:
        store = await Store.open(tmp_path / "gw.db", StoreConfig(url=store_url))
        a = WebhookSender(store, cfg, node="a")
        b = WebhookSender(store, cfg, node="b", clock=lambda: clock[0])
        try:
            acme = (await store.tenants.add("acme"))["id"]
            await store.webhooks.add("acme", "h", rx.url("/h"), "whsec_x", ["note"])
            await a.start()
            for i in range(5):
                await store.events.append(acme, "note", f"n{i}")
            await wait_posts(rx, lambda posts: len(rx.events("/h")) >= 5)
            await b.start()
            for i in range(5, 10):
                await store.events.append(acme, "note", f"n{i}")
            await wait_posts(rx, lambda posts: len(rx.events("/h")) >= 10)
            assert a.posts >= 1 and b.posts == 0   # b waits: a holds the lease
            ep_id = (await store.webhooks.get("acme", "h"))["id"]
            await eventually(lambda: _empty(store, ep_id))   # a's last 2xx is recorded (else b sends it again)
            await a.stop(0)
            clock[0] += 3600   # a's lease has run out (as after a node died)
            await store.events.append(acme, "note", "n10")
            await wait_posts(rx, lambda posts: len(rx.events("/h")) >= 11)
            assert b.posts == 1
            assert [e["subject"] for e in rx.events("/h")] == [f"n{i}" for i in range(11)]
        finally:
            await a.stop(0)
            await b.stop(0)
            await store.close()


async def _empty(store, endpoint_id):
    return await store.webhooks.backlog(endpoint_id) == 0


async def test_an_endpoint_past_its_backlog_bound_is_disabled(tmp_path, store_url):
    from gateway.config import WebhooksConfig
    from gateway.webhooks.sender import WebhookSender

    with WebhookReceiver() as rx:
        rx.script("/full", [503] * 1000)
        store = await Store.open(tmp_path / "gw.db", StoreConfig(url=store_url))
        sender = WebhookSender(store, WebhooksConfig(allow_loopback=True, poll_interval=0.02, backoff_base=60.0, max_backlog=3))
        sender.backlog_check = 0.0
        try:
            acme = (await store.tenants.add("acme"))["id"]
            ep = await store.webhooks.add("acme", "full", rx.url("/full"), "whsec_x", ["note"])
            await sender.start()
            await store.events.append(acme, "note", "n0")
            await wait_posts(rx, lambda posts: len(posts) >= 1)   # failed once: now backing off for a minute
            # The four land in one commit: the sender checks the backlog every poll (backlog_check 0),
            # and on a loaded machine a check between separate appends saw 4, not 5.
            from gateway.store.events import append_event
            await store.db.write(lambda conn: [append_event(conn, acme, "note", f"n{i}") for i in range(1, 5)])
            disabled = await eventually(lambda: store.events.list(kind="webhook_disabled"))
            assert "max_backlog" in disabled[0]["data"]["reason"] and disabled[0]["data"]["backlog"] == 5
            await store.events.append(acme, "note", "n5")
            assert await store.webhooks.backlog(ep["id"]) == 5   # kept, and no longer growing
        finally:
            await sender.stop(0)
            await store.close()


async def test_names_resolving_to_refused_addresses_are_not_posted_to():
    """The resolver the sender's connector uses drops refused addresses: a name that resolves only to
    loopback (here the system's own 'localhost') cannot be POSTed to unless loopback is allowed."""
    from gateway.webhooks.sender import GuardedResolver, RefusedAddress

    closed = GuardedResolver(lambda: False, "webhooks.allow_loopback")
    opened = GuardedResolver(lambda: True, "webhooks.allow_loopback")
    try:
        with pytest.raises(RefusedAddress):
            await closed.resolve("localhost", 80)
        assert {r["host"] for r in await opened.resolve("localhost", 80)} <= {"127.0.0.1", "::1"}
    finally:
        await closed.close()
        await opened.close()
