"""What tenants read over the API, against the running daemon with a real aiohttp client: message
status with attempts, the message list, events, daily stats, the inbox and threads.

The traffic is real: mail submitted over SMTP, delivered to (or refused by) a recording MX, a
complaint (ARF) and an unsubscribe (mailto) sent to the daemon's own MX listener.
"""

from __future__ import annotations

import base64
import datetime
import re

from gateway.store.queue import NewMessage, QueueIds
from tests.support.api import api_client, api_key
from tests.support.daemon import running_daemon
from tests.support.delivery import delivering_daemon, publish_mx, wait_events
from tests.support.inbound import receiving_domain
from tests.support.sink import mail_sink
from tests.test_inbound_hookups_e2e import arf, message_id_of, processed, send_to_mx
from tests.test_outbound_e2e import raw_message, submit
from tests.test_unsubscribe_e2e import fields_of

PROBLEM = "urn:gateway:problem:"
_ids = QueueIds()


async def pages(api, path: str, params: list[tuple[str, str]]) -> list[dict]:
    """Every row of a paged list, following next_cursor."""
    rows, cursor = [], None
    for _ in range(100):
        status, body, _ = await api.get(path, params=params + ([("cursor", cursor)] if cursor else []))
        assert status == 200, body
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError("no end of pages")


async def test_status_list_events_and_stats_of_a_real_flow(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("eve@dest.test", "550 5.1.1 no such user here")
        sink.script("carol@dest.test", "451 4.3.0 busy, try later", "250 2.1.5 OK")
        async with delivering_daemon(tmp_path, dns_server, sink.port, kind="marketing", usecase="news") as (d, setup):
            rcpts = ["bob@dest.test", "eve@dest.test", "carol@dest.test", "erin@dest.test"]
            publish_mx(dns_server, setup["domain"], "mx.dest.test")   # the DSN to the app is delivered too
            qid = await submit(d, setup, rcpts, raw_message(setup["sender"], rcpts))
            await wait_events(d, qid, "delivered", 3)
            [dsn] = await wait_events(d, qid, "dsn_sent")
            dsn_qid = dsn["data"]["dsn_queue_id"]
            await wait_events(d, dsn_qid, "delivered")
            got = {m.rcpt_tos[0]: m for m in sink.messages}
            tenant_id = (await d.store.tenants.get(setup["tenant"]))["id"]
            # Carol complains (ARF to the return path), Erin unsubscribes by mail (List-Unsubscribe mailto).
            carol = got["carol@dest.test"]
            row = await processed(d, await send_to_mx(d, f"fbl@{setup['return_path_domain']}",
                                                      arf(carol.mail_from, "carol@dest.test", message_id_of(carol.data))))
            assert row["kind"] == "arf"
            uri = re.search(r"<(mailto:[^>]+)>", fields_of(got["erin@dest.test"].data)["List-Unsubscribe"][0]).group(1)
            to, _, query = uri[len("mailto:"):].partition("?")
            request = (f"From: Erin <erin@dest.test>\r\nTo: {to}\r\nSubject: Re: {query.removeprefix('subject=').replace('%20', ' ')}\r\n"
                       "Message-ID: <u1@dest.test>\r\n\r\nplease stop\r\n").encode()
            assert (await processed(d, await send_to_mx(d, to, request, mail_from="erin@dest.test")))["kind"] == "unsubscribe"
            await wait_events(d, qid, "complained")

            # A second use case and a second tenant, with keys of every kind.
            await d.call("usecase.add", tenant="acme", domain=setup["domain"], name="alerts", entity="acme alerts",
                         kind="transactional", senders=[setup["sender"]])
            await d.call("tenant.add", name="globex")
            owner, agent = await api_key(d, "acme", "owner"), await api_key(d, "acme", "agent")
            sender = await api_key(d, "acme", "sender", usecase="news")
            other_sender = await api_key(d, "acme", "sender", usecase="alerts")
            stranger = await api_key(d, "globex", "owner")

            # ---------------------------------------------------------------- one message's status
            for token in (owner, agent, sender):
                async with api_client(d, token) as api:
                    status, body, headers = await api.get(f"/v1/messages/{qid}")
                assert status == 200, body
                assert headers["ETag"]
            assert body["queue_id"] == qid and body["usecase"] == "news" and body["mail_from"] == setup["sender"]
            assert body["message_id"] == f"{qid}@{setup['domain']}" and body["state"] == "bounced"
            assert "tenant_id" not in body and "client" not in body
            by_rcpt = {r["rcpt"]: r for r in body["recipients"]}
            assert [by_rcpt[r]["state"] for r in rcpts] == ["delivered", "bounced", "delivered", "delivered"]
            [bounce] = by_rcpt["eve@dest.test"]["attempt_log"]
            assert (bounce["outcome"], bounce["code"], bounce["class"]) == ("bounced", 550, "hard")
            assert "no such user here" in bounce["reply"] and bounce["remote"].startswith("mx.dest.test")
            assert [a["outcome"] for a in by_rcpt["carol@dest.test"]["attempt_log"]] == ["deferred", "delivered"]
            assert by_rcpt["carol@dest.test"]["next_attempt_at"] is None
            kinds = [e["type"] for e in body["events"]]
            assert kinds[0] == "queued" and kinds.count("delivered") == 3 and "bounced" in kinds and "complained" in kinds
            assert [e["id"] for e in body["events"]] == sorted(e["id"] for e in body["events"])
            for token in (other_sender, stranger):
                async with api_client(d, token) as api:
                    status, body, _ = await api.get(f"/v1/messages/{qid}")
                assert status == 404 and body["type"] == PROBLEM + "not-found"
            async with api_client(d, owner) as api:
                assert (await api.get(f"/v1/messages/{qid}", headers={"If-None-Match": headers["ETag"]}))[0] == 304
                assert (await api.get("/v1/messages/not-a-queue-id"))[0] == 404
                assert (await api.get("/v1/messages/0123456789abcdef"))[0] == 404

            # ---------------------------------------------------------------- the message list
            second = await submit(d, setup, ["bob@dest.test"])
            await wait_events(d, second, "delivered")
            async with api_client(d, owner) as api:
                listed = await pages(api, "/v1/messages", [("limit", "1")])
                assert [m["queue_id"] for m in listed] == [second, dsn_qid, qid]   # newest first, one a page
                assert set(listed[0]) == {"queue_id", "usecase", "mail_from", "message_id", "size", "created_at", "expires_at",
                                          "state", "recipients", "counts"}     # shaped by the model: no row ids
                assert listed[2]["counts"]["bounced"] == 1 and listed[2]["recipients"] == 4 and listed[1]["mail_from"] == ""
                assert [m["queue_id"] for m in await pages(api, "/v1/messages", [("state", "bounced")])] == [qid]
                assert await pages(api, "/v1/messages", [("usecase", "alerts")]) == []
                assert [m["queue_id"] for m in await pages(api, "/v1/messages", [("recipient", "Eve@Dest.test")])] == [qid]
                assert [m["queue_id"] for m in await pages(api, "/v1/messages", [("recipient", "bob@dest.test")])] == [second, qid]
                assert await pages(api, "/v1/messages", [("since", str(listed[0]["created_at"] + 1))]) == []
                status, body, _ = await api.get("/v1/messages", params={"usecase": "nope"})
                assert status == 422 and body["field"] == "query.usecase"
                assert (await api.get("/v1/messages", params={"cursor": "garbage!"}))[0] == 400
                assert (await api.get("/v1/messages", params={"state": "lost"}))[0] == 422
            async with api_client(d, sender) as api:
                assert len(await pages(api, "/v1/messages", [])) == 3
            async with api_client(d, other_sender) as api:
                assert await pages(api, "/v1/messages", []) == []
                assert (await api.get("/v1/messages", params={"usecase": "news"}))[0] == 422   # not its use case: as unknown
            async with api_client(d, stranger) as api:
                assert await pages(api, "/v1/messages", []) == []

            # ---------------------------------------------------------------- events
            async with api_client(d, owner) as api:
                everything = await pages(api, "/v1/events", [("limit", "7")])
                ids = [e["id"] for e in everything]
                assert ids == sorted(ids, reverse=True) and len(ids) == len(set(ids))
                types = {e["type"] for e in everything}
                assert {"queued", "delivered", "bounced", "deferred", "complained", "unsubscribed", "usecase_added"} <= types
                oldest = await pages(api, "/v1/events", [("order", "oldest"), ("limit", "5")])
                assert [e["id"] for e in oldest] == ids[::-1]
                picked = await pages(api, "/v1/events", [("type", "delivered"), ("type", "bounced"), ("limit", "2")])
                assert sorted(e["type"] for e in picked) == ["bounced"] + ["delivered"] * 5   # the DSN's too
                assert all(e["usecase"] == "news" for e in picked)
                middle = sorted(e["created_at"] for e in picked)
                window = await pages(api, "/v1/events", [("type", "delivered"), ("type", "bounced"), ("since", repr(middle[1])),
                                                         ("until", repr(middle[3]))])
                assert sorted(e["created_at"] for e in window) == [t for t in middle if middle[1] <= t < middle[3]]
                assert (await api.get("/v1/events", params={"type": "Not A Type"}))[0] == 422
            async with api_client(d, sender) as api:
                mine = await pages(api, "/v1/events", [])
            assert mine and all(e["usecase"] == "news" for e in mine)
            assert {"queued", "delivered", "bounced", "complained", "unsubscribed"} <= {e["type"] for e in mine}
            assert "usecase_added" not in {e["type"] for e in mine} and "api_change" not in {e["type"] for e in mine}
            async with api_client(d, stranger) as api:
                assert all(e["type"] in ("tenant_added", "apikey_added") for e in await pages(api, "/v1/events", []))
            async with api_client(d, agent) as api:
                status, body, _ = await api.get("/v1/events")
                assert status == 403 and body["permission"] == "events.read"

            # ---------------------------------------------------------------- stats
            today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
            async with api_client(d, sender) as api:
                status, body, _ = await api.get("/v1/stats")
            assert status == 200, body
            [day] = body["data"]
            assert day["day"] == today and day["usecase"] == "news" and "usecase_id" not in day
            assert {k: day[k] for k in ("sent", "delivered", "deferred", "bounced_hard", "bounced_soft", "complained",
                                        "unsubscribed")} == {"sent": 5, "delivered": 4, "deferred": 1, "bounced_hard": 1,
                                                             "bounced_soft": 0, "complained": 1, "unsubscribed": 1}
            async with api_client(d, owner) as api:
                assert (await api.get("/v1/stats", params={"usecase": "alerts"}))[1]["data"] == []
                assert (await api.get("/v1/stats", params={"from": "2020-01-01", "to": "2020-01-31"}))[1]["data"] == []
                assert (await api.get("/v1/stats", params={"from": "2020-01-01", "to": "2026-01-31"}))[0] == 422
                assert (await api.get("/v1/stats", params={"from": "2020-02-30"}))[0] == 422
                assert (await api.get("/v1/stats", params={"to": "0001-01-05"}))[1]["data"] == []
            async with api_client(d, stranger) as api:
                assert (await api.get("/v1/stats"))[1]["data"] == []
            async with api_client(d, agent) as api:
                assert (await api.get("/v1/stats"))[0] == 403

            # ---------------------------------------------------------------- the plans behind them
            plans = await d.store.messages.plans(tenant_id, setup["usecase_id"], qid)
            assert any("sqlite_autoindex_messages_1" in p for p in plans["status"]), plans
            assert any("recipients_message" in p for p in plans["recipients"]), plans
            assert any("events_subject" in p for p in plans["events"]), plans
            for name in ("list", "list_usecase", "events_usecase"):
                assert not any(p.startswith("SCAN") or "TEMP B-TREE" in p for p in plans[name]), (name, plans[name])
            assert any("messages_usecase" in p for p in plans["list_usecase"]), plans
            assert any("events_usecase" in p for p in plans["events_usecase"]), plans


# Past the service's 1 MiB piece, so the raw message and the photo each stream in several.
PHOTO = bytes(range(256)) * 10000
MULTIPART = (
    "From: Customer <customer@example.org>\r\nTo: help@support.test\r\nSubject: Broken part\r\n"
    "Message-ID: <c1@example.org>\r\nIn-Reply-To: <order-1@support.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="zz"\r\n\r\n'
    "--zz\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe part arrived broken, photo attached.\r\n"
    "--zz\r\nContent-Type: text/html; name=\"evil page.html\"\r\nContent-Disposition: attachment; filename=\"evil page.html\"\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\nPHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\r\n"
    "--zz\r\nContent-Type: image/jpeg\r\nContent-Disposition: attachment; filename=\"photo.jpg\"\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PHOTO).decode().replace("\n", "\r\n")
    + "--zz--\r\n").encode()


async def test_inbox_message_raw_attachment_and_thread(tmp_path):
    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        await d.call("tenant.add", name="globex")
        tenant_id = (await d.store.tenants.get("acme"))["id"]
        domain = await receiving_domain(d.store, tenant_id, "support.test", catchall=True, usecase="support")
        # The order confirmation the customer answers: an outbound message of the thread.
        out = _ids.new()
        await d.store.queue.put(NewMessage(queue_id=out, tenant_id=tenant_id, usecase_id=domain.usecase_id, mail_from="help@support.test",
                                           message_id="order-1@support.test", body=b"Subject: your order\r\n\r\nshipped\r\n",
                                           recipients=["customer@example.org"]))
        inbound_id = await send_to_mx(d, "help@support.test", MULTIPART, mail_from="customer@example.org")
        row = await processed(d, inbound_id)
        assert row["state"] == "processed", row
        agent, sender = await api_key(d, "acme", "agent"), await api_key(d, "acme", "sender", usecase="support")
        stranger = await api_key(d, "globex", "owner")
        async with api_client(d, agent) as api:
            [item] = await pages(api, "/v1/inbox", [])
            assert item["inbound_id"] == inbound_id and item["attachments"] == 2 and item["subject"] == "Broken part"
            assert item["kind"] == "reply" and item["thread_id"] == "order-1@support.test"
            assert not {"client", "helo", "sha256", "tenant_id", "tenant", "id"} & set(item)
            assert await pages(api, "/v1/inbox", [("kind", "arf")]) == []
            assert [i["inbound_id"] for i in await pages(api, "/v1/inbox", [("thread", "order-1@support.test")])] == [inbound_id]
            assert await pages(api, "/v1/inbox", [("thread", "another@support.test")]) == []
            status, body, _ = await api.get(f"/v1/inbox/{inbound_id}")
            assert status == 200, body
            assert body["from"] == "customer@example.org" and body["usecase"] == "support"
            assert "photo attached" in body["text"] and body["thread_id"] == "order-1@support.test"
            assert body["parent"] == "order-1@support.test" and body["in_reply_to"] == "order-1@support.test"
            att, photo = body["attachments"]
            assert (photo["filename"], photo["content_type"], photo["size"]) == ("photo.jpg", "image/jpeg", len(PHOTO))
            assert att["url"] == f"/v1/inbox/{inbound_id}/attachments/0" and "sha256" not in att
            status, raw, headers = await api.get(f"/v1/inbox/{inbound_id}/raw")
            assert status == 200 and headers["Content-Type"] == "message/rfc822"
            assert raw.endswith(MULTIPART) and int(headers["Content-Length"]) == len(raw)
            for name in ("0", att["filename"]):
                status, data, headers = await api.get(f"/v1/inbox/{inbound_id}/attachments/{name}")
                assert status == 200 and data == b"<script>alert(1)</script>"
                assert headers["Content-Disposition"].startswith("attachment; filename=")
                assert "/" not in headers["Content-Disposition"].split(";")[1] and headers["X-Content-Type-Options"] == "nosniff"
                assert "sandbox" in headers["Content-Security-Policy"]
            status, data, headers = await api.get(f"/v1/inbox/{inbound_id}/attachments/1")
            assert status == 200 and data == PHOTO and headers["Content-Type"] == "image/jpeg"
            assert (await api.get(f"/v1/inbox/{inbound_id}/attachments/7"))[0] == 404
            status, thread, _ = await api.get("/v1/threads/order-1@support.test")
            assert status == 200 and [(e["direction"], e["id"]) for e in thread["entries"]] == [("out", out), ("in", inbound_id)]
            assert thread["entries"][0]["from"] == "help@support.test" and thread["entries"][1]["from"] == "customer@example.org"
            assert (await api.get("/v1/threads/<order-1@support.test>"))[1]["entries"] == thread["entries"]
            assert (await api.get("/v1/threads/nothing@example.org"))[0] == 404
            assert (await api.get("/v1/inbox/NOT-AN-ID"))[0] == 404
        async with api_client(d, stranger) as api:
            assert await pages(api, "/v1/inbox", []) == []
            for path in (f"/v1/inbox/{inbound_id}", f"/v1/inbox/{inbound_id}/raw", f"/v1/inbox/{inbound_id}/attachments/0",
                         "/v1/threads/order-1@support.test"):
                status, body, _ = await api.get(path)
                assert status == 404 and body["type"] == PROBLEM + "not-found", path
        async with api_client(d, sender) as api:
            status, body, _ = await api.get("/v1/inbox")
            assert status == 403 and body["permission"] == "inbox.read"
            assert (await api.get(f"/v1/inbox/{inbound_id}/raw"))[0] == 403


async def test_a_filtered_event_page_looks_at_a_bounded_number_of_rows(tmp_path):
    from gateway.store import keyset

    async with running_daemon(tmp_path) as d:
        await d.call("tenant.add", name="acme")
        tenant_id = (await d.store.tenants.get("acme"))["id"]

        def fill(conn):
            conn.executemany("INSERT INTO events (created_at, tenant_id, kind, subject, data) VALUES (?, ?, 'noise', '', '{}')",
                             [(1.0, tenant_id)] * (keyset.SCAN * 2 + 5))
        await d.store.db.write(fill)
        await d.store.events.append(tenant_id, "rare", "x")
        owner = await api_key(d, "acme", "owner")
        async with api_client(d, owner) as api:
            status, body, _ = await api.get("/v1/events", params=[("type", "rare"), ("order", "oldest")])
            assert status == 200 and body["data"] == [] and body["next_cursor"]      # short page, more to look at
            rows = await pages(api, "/v1/events", [("type", "rare"), ("order", "oldest")])
            assert [e["type"] for e in rows] == ["rare"]
            assert [e["type"] for e in await pages(api, "/v1/events", [("type", "rare")])] == ["rare"]


async def test_the_time_search_reads_the_ends_of_the_tables_not_a_whole_index(tmp_path):
    from gateway.store import Store, keyset

    store = await Store.open(tmp_path / "gateway.db")
    try:
        for table in sorted(keyset.TABLES):
            plan = await store.db.read(lambda c, t=table: [r[-1] for r in c.execute("EXPLAIN QUERY PLAN " + keyset.BOUNDS_SQL.format(table=t))])
            assert not any(p.startswith("SCAN") and table in p for p in plan), (table, plan)
    finally:
        await store.close()
