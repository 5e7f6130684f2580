"""Delivery end to end inside a real daemon: queue -> scheduler -> DNS (test server) -> sink MX."""

from __future__ import annotations

import dkim

from gateway import verp
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, enqueue, publish_mx, recipients, wait_events
from tests.support.sink import mail_sink


async def test_delivered_signed_over_starttls_with_verp(tmp_path, dns_server):
    async with mail_sink(starttls=True) as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            qid = await enqueue(d, setup, ["bob@dest.test"])
            [got] = await sink.wait_for(1)
            assert got.rcpt_tos == ["bob@dest.test"] and got.tls
            tag = verp.decode(got.mail_from)
            assert tag is not None and tag.queue_id == qid and tag.recipient_index == 0
            assert got.mail_from.endswith("@" + setup["return_path_domain"])
            # DKIM: every signature verifies against the key published in DNS
            n = got.data.count(b"DKIM-Signature:")
            assert n >= 1
            for i in range(n):
                assert dkim.DKIM(got.data).verify(idx=i, dnsfunc=dkim_dnsfunc(dns_server)), i
            [event] = await wait_events(d, qid, "delivered")
            assert event["data"]["rcpt"] == "bob@dest.test" and event["data"]["reply"].startswith("250")
            assert "delay" in event["data"]
            r = (await recipients(d, qid))["bob@dest.test"]
            assert r["state"] == "delivered" and r["attempts"] == 1 and r["attempt_log"][0]["outcome"] == "delivered"
            assert r["attempt_log"][0]["remote"].startswith("mx.dest.test[127.0.0.1]")
            metrics = d.daemon.metrics
            assert metrics.delivered.labels(route="direct")._value.get() == 1


async def test_temporary_failures_retried_on_schedule_then_delivered(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("bob@dest.test", "451 4.3.0 busy, try later", "452 4.2.2 mailbox full", "250 2.1.5 OK")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            qid = await enqueue(d, setup, ["bob@dest.test"])
            await sink.wait_for(1)
            await wait_events(d, qid, "delivered")
            deferred = await wait_events(d, qid, "deferred", 2)
            assert [e["data"]["enhanced"] for e in deferred] == ["4.3.0", "4.2.2"]
            r = (await recipients(d, qid))["bob@dest.test"]
            assert [a["outcome"] for a in r["attempt_log"]] == ["deferred", "deferred", "delivered"]
            assert r["attempt_log"][0]["reply"] == "451 4.3.0 busy, try later"
            # backoff: base 0.2 s then doubled (no jitter in tests)
            gaps = [b["at"] - a["at"] for a, b in zip(r["attempt_log"], r["attempt_log"][1:])]
            assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps


async def test_permanent_failure_gives_exactly_one_dsn_and_partial_success(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        publish_mx(dns_server, "other.test")
        sink.script("eve@dest.test", "550 5.1.1 no such user here")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            dns_server.set(setup["domain"], "MX", "10 mx.dest.test.")  # DSNs to the app come back to the sink
            qid = await enqueue(d, setup, ["bob@dest.test", "eve@dest.test", "carol@other.test"])
            [bounced] = await wait_events(d, qid, "bounced")
            assert bounced["data"]["rcpt"] == "eve@dest.test" and bounced["data"]["enhanced"] == "5.1.1"
            await wait_events(d, qid, "delivered", 2)
            [dsn_event] = await wait_events(d, qid, "dsn_sent")
            dsn_qid = dsn_event["data"]["dsn_queue_id"]
            await wait_events(d, dsn_qid, "delivered")
            await sink.wait_for(3)
            state = {k: v["state"] for k, v in (await recipients(d, qid)).items()}
            assert state == {"bob@dest.test": "delivered", "eve@dest.test": "bounced", "carol@other.test": "delivered"}
            assert (await recipients(d, qid))["eve@dest.test"]["dsn_sent"] == 1
            dsns = sink.for_rcpt(setup["sender"])
            assert len(dsns) == 1
            dsn = dsns[0]
            assert dsn.mail_from in ("", "<>")  # a DSN is sent from <> (aiosmtpd records it as "<>")
            assert b"multipart/report; report-type=delivery-status" in dsn.data
            assert b"Final-Recipient: rfc822; eve@dest.test" in dsn.data and b"Action: failed" in dsn.data
            assert b"Status: 5.1.1" in dsn.data and b"Diagnostic-Code: smtp; 550 5.1.1 no such user here" in dsn.data
            assert b"bob@dest.test" not in dsn.data.split(b"message/delivery-status")[1].split(b"text/rfc822-headers")[0]
            assert b"text/rfc822-headers" in dsn.data and b"Subject: hello" in dsn.data.split(b"text/rfc822-headers")[1]
            assert len(await d.store.events.list(subject=qid, kind="dsn_sent")) == 1


async def test_null_sender_gets_no_dsn(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("eve@dest.test", "550 5.1.1 unknown")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            qid = await enqueue(d, setup, ["eve@dest.test"], mail_from="")
            await wait_events(d, qid, "bounced")
            assert await d.store.events.list(subject=qid, kind="dsn_sent") == []
            assert (await d.store.queue.counts())["messages"] == 1


async def test_connection_dropped_in_data_is_retried_without_loss(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.drop_in_data = 1
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            qid = await enqueue(d, setup, ["bob@dest.test"])
            [got] = await sink.wait_for(1)
            assert sink.dropped == 1 and got.rcpt_tos == ["bob@dest.test"]
            [deferred] = await wait_events(d, qid, "deferred")
            assert "DATA" in deferred["data"]["reply"]
            # Plain words, no library class names: this text can reach the sender in a DSN.
            assert "connection closed by the remote server" in deferred["data"]["reply"], deferred["data"]["reply"]
            assert "Disconnected" not in deferred["data"]["reply"] and "Error" not in deferred["data"]["reply"]
            await wait_events(d, qid, "delivered")


async def test_null_mx_bounces_at_once(tmp_path, dns_server):
    async with mail_sink() as sink:
        dns_server.set("nomail.test", "MX", "0 .")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            dns_server.set(setup["domain"], "MX", "10 mx.gateway.test.")
            qid = await enqueue(d, setup, ["x@nomail.test"])
            [bounced] = await wait_events(d, qid, "bounced")
            assert bounced["data"]["code"] == 556 and bounced["data"]["enhanced"] == "5.1.10"
            r = (await recipients(d, qid))["x@nomail.test"]
            assert r["attempts"] == 1 and r["state"] == "bounced"
            await wait_events(d, qid, "dsn_sent")


async def test_no_mx_falls_back_to_address_and_servfail_defers(tmp_path, dns_server):
    async with mail_sink() as sink:
        dns_server.set("plain.test", "A", "127.0.0.1")
        dns_server.servfail("broken.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            qid = await enqueue(d, setup, ["a@plain.test", "b@broken.test"])
            await wait_events(d, qid, "delivered")
            assert sink.messages[0].rcpt_tos == ["a@plain.test"]
            [deferred] = await wait_events(d, qid, "deferred")
            assert deferred["data"]["rcpt"] == "b@broken.test" and deferred["data"]["enhanced"] == "4.4.3"


async def test_one_connection_carries_several_messages(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        extra = {"delivery": {"per_destination": 1}}
        async with delivering_daemon(tmp_path, dns_server, sink.port, extra) as (d, setup):
            for i in range(5):
                await d.store.queue.put(_new(setup, await _tenant_id(d, setup), [f"r{i}@dest.test", f"s{i}@dest.test"]))
            d.daemon.scheduler.wake()
            got = await sink.wait_for(10)
            assert {m.connection for m in got} == {1}, [m.connection for m in got]
            assert sink.connections == 1


async def test_expired_message_bounces_with_dsn(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("slow@dest.test", "451 4.7.1 greylisted")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            dns_server.set(setup["domain"], "MX", "10 mx.dest.test.")
            qid = await enqueue(d, setup, ["slow@dest.test"], lifetime=0.5)
            [bounced] = await wait_events(d, qid, "bounced")
            assert bounced["data"]["expired"] is True
            await wait_events(d, qid, "dsn_sent")
            [dsn] = await sink.wait_for(1)
            assert b"Status: 4.7.1" in dsn.data and b"lifetime ran out" in dsn.data


async def test_internal_error_holds_with_reason(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            # A corrupt key: our failure, not the remote's.
            await d.store.db.write(lambda c: c.execute("UPDATE dkim_keys SET private_pem = 'garbage' WHERE state = 'active'"))
            qid = await enqueue(d, setup, ["bob@dest.test"])
            [held] = await wait_events(d, qid, "held")
            assert "DKIM key" in held["data"]["reason"]
            r = (await recipients(d, qid))["bob@dest.test"]
            assert r["state"] == "held" and "internal error" in r["hold_reason"] and r["attempts"] == 0
            assert sink.messages == []


async def test_claims_of_a_dead_process_are_released_on_start(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, {"delivery": {"poll_interval": 3600}}) as (d, setup):
            await d.daemon.scheduler.stop(0)  # the scheduler is gone, as if the process had died
            qid = await enqueue(d, setup, ["bob@dest.test"])
            claimed = await d.store.delivery.claim(f"{d.daemon.node}:1:x", 10)  # a dead process of this node
            assert [c["rcpt"] for c in claimed] == ["bob@dest.test"]
            assert await d.store.delivery.claim("other", 10) == []  # claimed rows are not due
        async with delivering_daemon_again(tmp_path, dns_server, sink.port) as d2:
            await wait_events(d2, qid, "delivered")
            assert sink.for_rcpt("bob@dest.test")


# ---------------------------------------------------------------------- helpers


def delivering_daemon_again(tmp_path, dns, port):
    from tests.support.daemon import merge, running_daemon
    from tests.support.delivery import FAST_RETRIES
    from tests.support.dns import dns_overrides

    return running_daemon(tmp_path, merge(dns_overrides(dns), {"delivery": {**FAST_RETRIES, "remote_port": port}}))


async def _tenant_id(d, setup):
    return (await d.store.tenants.get(setup["tenant"]))["id"]


def _new(setup, tenant_id, rcpts):
    from gateway.store.queue import NewMessage, QueueIds

    qid = QueueIds().new()
    from tests.support.delivery import message

    return NewMessage(queue_id=qid, tenant_id=tenant_id, usecase_id=setup["usecase_id"], mail_from=setup["sender"],
                      message_id=f"{qid}@acme.test", body=message(setup["sender"], rcpts), recipients=rcpts)


async def test_due_work_query_walks_the_partial_index(tmp_path):
    from gateway.store import Store

    store = await Store.open(tmp_path / "g.db")
    try:
        plan = " ".join(await store.delivery.due_plan())
        assert "USING INDEX recipients_due" in plan and "TEMP B-TREE" not in plan, plan
        # The take-over probe of every claim seeks the claimed rows' index by lease end (0031).
        assert "USING COVERING INDEX recipients_claimed (claim_until<?)" in plan, plan
    finally:
        await store.close()
