"""POST /v1/messages against the running daemon: a real HTTP client, the submission port beside it,
delivery to a local sink, DKIM checked with dkimpy. One table of refusals runs through both doors
and asserts the same SMTP reply."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import itertools
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import dkim

from gateway.config import QueueConfig
from gateway.sweeper import Sweeper
from tests.support.api import api_client, api_key
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, publish_mx, wait_events
from tests.support.sink import mail_sink
from tests.support.submission import RawClient
from tests.support.tenancy import publish_records

PROBLEM = "urn:gateway:problem:"
FAST = {"submission": {"context_ttl": 0}}


def rfc822(sender: str, to: list[str], *, subject: str = "hello", headers: str = "", body: str = "Hello there.\r\n") -> bytes:
    return (f"From: App <{sender}>\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n{headers}MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").encode()


async def smtp_send(d, setup, sender: str, rcpts: list[str], data: bytes) -> str:
    """The submission port's answer, bytes on the wire as given: '250 ...' or the refusal's
    'code enhanced text' (MAIL's, else the first RCPT's when none is accepted, else DATA's)."""
    client = await RawClient.connect(d.hostport("submissions")[1])
    try:
        await client.login(setup["username"], setup["password"])
        code, text = await client.cmd(f"MAIL FROM:<{sender}>")
        if code != 250:
            return f"{code} {text}"
        refused = [f"{c} {t}" for c, t in [await client.cmd(f"RCPT TO:<{r}>") for r in rcpts] if c != 250]
        if len(refused) == len(rcpts):
            return refused[0]
        code, text = await client.data(data + b".\r\n")
        return f"{code} {text}"
    finally:
        await client.close()


def message_of(got) -> email.message.Message:
    return email.message_from_bytes(got.data, policy=email.policy.default)


# --------------------------------------------------------------------------- delivered and signed


async def test_a_json_send_is_delivered_signed_with_its_parts_and_recorded_as_from_the_api(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, dkim="both") as (d, setup):
            token = await api_key(d, "acme", "sender", usecase="receipts")
            logo = b"\x89PNG fake image bytes"
            request = {
                "from": {"address": setup["sender"], "name": "Acme Bélénos"},
                "to": ["bob@dest.test"], "cc": [{"address": "carol@dest.test", "name": "Carol"}], "bcc": ["hidden@dest.test"],
                "subject": "Your receipt — №42", "text": "Thanks!\nLine two", "html": '<p>Thanks! <img src="cid:logo@acme"></p>',
                "attachments": [
                    {"content": base64.b64encode(logo).decode(), "filename": "logo.png", "content_type": "image/png", "content_id": "logo@acme"},
                    {"content": base64.b64encode(b"a,b\r\n1,2\r\n").decode(), "filename": "receipt €.csv", "content_type": "text/csv"},
                ],
                "headers": {"X-Order": "42"}, "metadata": {"order": "42"}, "tags": ["receipt"],
            }
            async with api_client(d, token) as api:
                status, body, _ = await api.post("/v1/messages", request)
            assert status == 202, body
            qid = body["queue_id"]
            assert body["message_id"] == f"{qid}@{setup['domain']}" and body["usecase"] == "receipts" and body["held"] is None
            assert [(r["address"], r["status"]) for r in body["recipients"]] == [
                ("bob@dest.test", "accepted"), ("carol@dest.test", "accepted"), ("hidden@dest.test", "accepted")]
            got = await sink.wait_for(3)
            assert sorted(r for m in got for r in m.rcpt_tos) == ["bob@dest.test", "carol@dest.test", "hidden@dest.test"]
            for m in got:
                head = m.data.split(b"\r\n\r\n", 1)[0]
                assert b"hidden@dest.test" not in m.data and b"\r\nBcc:" not in head
                for i in range(2):
                    assert dkim.DKIM(m.data).verify(idx=i, dnsfunc=dkim_dnsfunc(dns_server)), i
            msg = message_of(got[0])
            assert msg["Subject"] == "Your receipt — №42" and msg["From"].addresses[0].display_name == "Acme Bélénos"
            assert msg["X-Order"] == "42" and msg["Message-ID"] == f"<{qid}@{setup['domain']}>" and msg["Date"]
            assert any(f"with HTTP id {qid}" in " ".join(r.split()) for r in msg.get_all("Received"))
            assert msg.get_content_type() == "multipart/mixed"
            related, csv = msg.get_payload()
            assert related.get_content_type() == "multipart/related"
            alternative, image = related.get_payload()
            assert [p.get_content_type() for p in alternative.get_payload()] == ["text/plain", "text/html"]
            assert alternative.get_payload()[0].get_content().replace("\r\n", "\n").rstrip("\n") == "Thanks!\nLine two"
            assert image["Content-ID"] == "<logo@acme>" and image.get_content_disposition() == "inline"
            assert image.get_content() == logo
            assert csv.get_content_disposition() == "attachment" and csv.get_filename() == "receipt €.csv"
            [queued] = await d.store.events.list(subject=qid, kind="queued")
            assert queued["data"]["source"] == "api" and queued["data"]["api_key"] == token.split("_")[2]
            assert queued["data"]["metadata"] == {"order": "42"} and queued["data"]["tags"] == ["receipt"]
            await wait_events(d, qid, "delivered", 3)


async def test_a_raw_message_is_sent_as_it_is_and_a_reply_is_threaded_from_our_records(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            token = await api_key(d, "acme", "owner")
            async with api_client(d, token) as api:
                # Unix line ends, envelope from ?to= (the Cc header is not a recipient then).
                raw = rfc822(setup["sender"], ["bob@dest.test"], headers="Cc: nobody@dest.test\r\nMessage-ID: <first@acme.test>\r\n")
                status, first, _ = await api.request("POST", "/v1/messages", data=raw.replace(b"\r\n", b"\n"),
                                                     headers={"Content-Type": "message/rfc822"}, params={"to": "bob@dest.test"})
                assert status == 202, first
                assert first["message_id"] == "first@acme.test" and first["usecase"] == "receipts"
                assert [r["address"] for r in first["recipients"]] == ["bob@dest.test"]
                # A reply to a reply whose References the client left out: the whole chain comes from our records.
                status, second, _ = await api.post("/v1/messages", {"from": setup["sender"], "to": ["bob@dest.test"], "subject": "Re",
                                                                    "text": "2", "in_reply_to": "<first@acme.test>"})
                assert status == 202 and second["thread_id"] == first["thread_id"] == "first@acme.test"
                status, third, _ = await api.post("/v1/messages", {"from": setup["sender"], "to": ["bob@dest.test"], "subject": "Re",
                                                                   "text": "3", "in_reply_to": second["message_id"]})
                assert status == 202 and third["thread_id"] == "first@acme.test"
                # Without ?to= the recipients are To, Cc and Bcc (sendmail -t); Bcc never reaches anyone's header.
                raw = rfc822(setup["sender"], ["dora@dest.test"], headers="Cc: eve@dest.test\r\nBcc: fay@dest.test\r\n")
                status, fourth, _ = await api.request("POST", "/v1/messages", data=raw, headers={"Content-Type": "message/rfc822"},
                                                      params={"usecase": "receipts"})
                assert status == 202 and [r["address"] for r in fourth["recipients"]] == ["dora@dest.test", "eve@dest.test", "fay@dest.test"]
            got = await sink.wait_for(6)
            assert all(b"fay@dest.test" not in m.data for m in got)
            by_id = {message_of(m)["Message-ID"]: m for m in got}
            assert by_id["<first@acme.test>"].rcpt_tos == ["bob@dest.test"]
            assert b"\r\n" in by_id["<first@acme.test>"].data and b"\r\r" not in by_id["<first@acme.test>"].data
            last = message_of(by_id[f"<{third['message_id']}>"])
            assert last["In-Reply-To"] == f"<{second['message_id']}>"
            assert last["References"].split() == ["<first@acme.test>", f"<{second['message_id']}>"]


# --------------------------------------------------------------------------- one refusal table, two doors


@dataclass
class Case:
    name: str
    change: Callable[[Any, dict], Awaitable[None]]       # the state that refuses (undone by ``undo``)
    undo: Callable[[Any, dict], Awaitable[None]]
    smtp: Callable[[dict], tuple[str, list[str], bytes]]  # (mail from, rcpts, data)
    http: Callable[[dict], dict]
    status: int
    slug: str


_numbers = itertools.count()


async def nothing(d, s):
    return None


def fresh() -> list[str]:
    """A recipient never used before: what was sent earlier may have bounced (no MX here) and be suppressed."""
    return [f"rcpt{next(_numbers)}@dest.test"]


def plain(s, sender=None, rcpts=None, **kw):
    sender, rcpts = sender or s["sender"], rcpts or fresh()
    return sender, list(rcpts), rfc822(sender, list(rcpts), **kw)


def json(s, sender=None, rcpts=None, **kw):
    return {"from": sender or s["sender"], "to": list(rcpts or fresh()), "subject": "hello", "text": "Hello there.", **kw}


async def unverified(d, s):
    s["dns"].remove(s["return_path_domain"], "MX")
    assert (await d.call("domain.verify", domain="acme.test"))["state"] == "failing"


async def verified(d, s):
    await publish_records(d, s["dns"], "acme.test")
    assert (await d.call("domain.verify", domain="acme.test"))["state"] == "verified"


async def outbound_off(d, s):
    await d.call("tenant.disable", name="acme", outbound=True)


async def outbound_on(d, s):
    await d.call("tenant.enable", name="acme", outbound=True)


async def suppress(d, s):
    await d.call("suppression.add", tenant="acme", address="gone@dest.test", reason="hard_bounce")


async def quota(d, s):
    await d.call("tenant.update", name="acme", monthly_quota=1)


async def no_quota(d, s):
    await d.call("tenant.update", name="acme", monthly_quota=0)


async def rate(d, s):
    await d.call("usecase.update", tenant="acme", name="receipts", rate_limit=1)


async def no_rate(d, s):
    await d.call("usecase.update", tenant="acme", name="receipts", rate_limit=0)


CASES = [
    Case("sender not allowed", nothing, nothing, lambda s: plain(s, "intruder@acme.test"), lambda s: json(s, "intruder@acme.test"),
         422, "sender-not-allowed"),
    Case("unverified domain", unverified, verified, plain, json, 422, "domain-not-verified"),
    Case("outbound disabled", outbound_off, outbound_on, plain, json, 422, "outbound-disabled"),
    Case("suppressed recipient", suppress, nothing, lambda s: plain(s, rcpts=["gone@dest.test"]), lambda s: json(s, rcpts=["gone@dest.test"]),
         422, "recipient-suppressed"),
    Case("invalid recipient", nothing, nothing, lambda s: plain(s, rcpts=["no-at-sign"]), lambda s: json(s, rcpts=["no-at-sign"]),
         422, "recipient-invalid"),
    Case("oversize", nothing, nothing, lambda s: plain(s, body=("y" * 76 + "\r\n") * 80),
         lambda s: json(s, text=("y" * 76 + "\n") * 80), 413, "message-too-large"),
    Case("header injection", nothing, nothing, lambda s: plain(s, subject="hi\nBcc: victim@dest.test"),
         lambda s: json(s, subject="hi\nBcc: victim@dest.test"), 422, "message-invalid"),
    Case("quota", quota, no_quota, plain, json, 429, "quota-exceeded"),
    Case("rate limit", rate, no_rate, plain, json, 429, "rate-limited"),
]


async def test_each_refusal_is_the_same_through_smtp_and_http(tmp_path, dns_server):
    extra = {**FAST, "submission": {"context_ttl": 0, "max_message_size": 4096}}
    async with delivering_daemon(tmp_path, dns_server, 9, extra) as (d, setup):
        setup["dns"] = dns_server
        token = await api_key(d, "acme", "owner")
        async with api_client(d, token) as api:
            for case in CASES:
                await case.change(d, setup)
                if case.name in ("quota", "rate limit"):   # the first message of the month / minute passes
                    assert (await smtp_send(d, setup, *plain(setup))).startswith("250"), case.name
                smtp_reply = await smtp_send(d, setup, *case.smtp(setup))
                status, body, headers = await api.post("/v1/messages", case.http(setup))
                assert status == case.status and body["type"] == PROBLEM + case.slug, (case.name, status, body)
                code, enhanced = smtp_reply.split()[:2]
                assert body["smtp"].split()[:2] == [code, enhanced], (case.name, smtp_reply, body)
                if status in (429, 503):
                    assert int(headers["Retry-After"]) >= 1
                await case.undo(d, setup)
            # The disk below the store's reserve: 452 4.3.1 on SMTP, 503 storage-full over HTTP.
            d.store.db.space.min_free = 1 << 60
            smtp_reply = await smtp_send(d, setup, *plain(setup))
            status, body, headers = await api.post("/v1/messages", json(setup))
            d.store.db.space.min_free = 0
            assert smtp_reply.startswith("452 4.3.1") and status == 503 and body["type"] == PROBLEM + "storage-full", body
            assert body["smtp"].split()[:2] == ["452", "4.3.1"] and int(headers["Retry-After"]) >= 1
            # A paused use case: both doors accept and hold, nothing is refused.
            await d.call("pause", tenant="acme", usecase="receipts")
            assert (await smtp_send(d, setup, *plain(setup))).startswith("250")
            status, body, _ = await api.post("/v1/messages", json(setup))
            assert status == 202 and body["held"] == "paused"


async def test_suppressed_recipients_are_listed_and_the_rest_is_sent(tmp_path, dns_server):
    async with delivering_daemon(tmp_path, dns_server, 9, FAST) as (d, setup):
        await d.call("suppression.add", tenant="acme", address="gone@dest.test", reason="hard_bounce")
        token = await api_key(d, "acme", "sender", usecase="receipts")
        async with api_client(d, token) as api:
            status, body, _ = await api.post("/v1/messages", json(setup, rcpts=["bob@dest.test", "gone@dest.test", "BOB@dest.test"]))
        assert status == 202, body
        assert [(r["address"], r["status"]) for r in body["recipients"]] == [("bob@dest.test", "accepted"), ("gone@dest.test", "refused")]
        assert body["recipients"][1]["smtp"].startswith("550 5.7.1") and body["recipients"][1]["type"] == PROBLEM + "recipient-suppressed"
        shown = await d.call("queue.show", queue_id=body["queue_id"])
        assert [r["rcpt"] for r in shown["recipients"]] == ["bob@dest.test"]


async def test_owned_headers_and_bad_idempotency_keys_are_refused_before_anything_is_queued(tmp_path, dns_server):
    async with delivering_daemon(tmp_path, dns_server, 9, FAST) as (d, setup):
        token = await api_key(d, "acme", "sender", usecase="receipts")
        async with api_client(d, token) as api:
            for name in ("Message-ID", "dkim-signature", "List-Unsubscribe-Post", "Content-Type", "Received"):
                status, body, _ = await api.post("/v1/messages", json(setup, headers={name: "x"}))
                assert status == 422 and body["type"] == PROBLEM + "header-not-allowed" and body["field"] == f"headers.{name}", body
            status, body, _ = await api.post("/v1/messages", json(setup, headers={"X-Ok": "a\r\nBcc: x@dest.test"}))
            assert status == 422 and body["smtp"].startswith("550 5.6.0") and body["field"] == "headers.X-Ok"
            status, body, _ = await api.post("/v1/messages", json(setup), headers={"Idempotency-Key": "bad\tkey"})
            assert status == 422 and body["field"] == "header.Idempotency-Key"
            status, body, _ = await api.post("/v1/messages", {"from": setup["sender"], "text": "nobody"})
            assert status == 422 and body["field"] == "to"
        assert (await d.store.queue.counts())["messages"] == 0


# --------------------------------------------------------------------------- roles and tenants


async def test_keys_send_only_through_what_their_role_allows(tmp_path, dns_server):
    async with delivering_daemon(tmp_path, dns_server, 9, FAST) as (d, setup):
        await d.call("usecase.add", tenant="acme", domain="acme.test", name="news", entity="acme news", kind="marketing",
                     senders=["news@acme.test"])
        await d.call("address.add", tenant="acme", address="support@acme.test", usecase="receipts")
        await d.call("address.add", tenant="acme", address="intake@acme.test", usecase="receipts", direction="inbound")
        await d.call("tenant.add", name="globex")
        sender = await api_key(d, "acme", "sender", usecase="receipts")
        agent = await api_key(d, "acme", "agent")
        owner = await api_key(d, "acme", "owner")
        stranger = await api_key(d, "globex", "owner")
        async with api_client(d, sender) as api:
            named_other = await api.post("/v1/messages", json(setup, usecase="news"))
            named_none = await api.post("/v1/messages", json(setup, usecase="nope"))
            # Another use case than the key's answers as one that does not exist (no existence oracle).
            assert named_other[0] == named_none[0] == 422 and named_other[1]["type"] == PROBLEM + "usecase-not-found"
            assert named_other[1]["detail"].replace("news", "X") == named_none[1]["detail"].replace("nope", "X")
            status, body, _ = await api.post("/v1/messages", json(setup, "news@acme.test"))
            assert status == 422 and body["type"] == PROBLEM + "sender-not-allowed"
        async with api_client(d, agent) as api:
            status, body, _ = await api.post("/v1/messages", json(setup))
            assert status == 403 and body["type"] == PROBLEM + "channel-address-required", body
            status, body, _ = await api.post("/v1/messages", json(setup, "intake@acme.test"))
            assert status == 422 and body["smtp"].startswith("550 5.7.1"), body  # receive-only address
            status, body, _ = await api.post("/v1/messages", json(setup, "support@acme.test"))
            assert status == 202 and body["usecase"] == "receipts", body
        async with api_client(d, owner) as api:
            # Two use cases send from acme.test: the From address decides when it is one use case's sender.
            status, body, _ = await api.post("/v1/messages", json(setup, "news@acme.test"))
            assert status == 202 and body["usecase"] == "news", body
            status, body, _ = await api.post("/v1/messages", json(setup, usecase="nope"))
            assert status == 422 and body["type"] == PROBLEM + "usecase-not-found" and body["field"] == "usecase"
        async with api_client(d, stranger) as api:
            status, body, _ = await api.post("/v1/messages", json(setup, usecase="receipts"))
            assert status == 422 and body["type"] == PROBLEM + "usecase-not-found", body   # acme's is not globex's
            status, body, _ = await api.post("/v1/messages", json(setup))
            assert status == 422 and body["type"] == PROBLEM + "sender-not-allowed"


# --------------------------------------------------------------------------- idempotency


async def test_an_idempotency_key_gives_one_message_and_the_same_answer(tmp_path, dns_server):
    async with delivering_daemon(tmp_path, dns_server, 9, FAST) as (d, setup):
        token = await api_key(d, "acme", "sender", usecase="receipts")
        async with api_client(d, token) as api:
            request = json(setup)
            first = await api.post("/v1/messages", request, headers={"Idempotency-Key": "order-42"})
            again = await api.post("/v1/messages", request, headers={"Idempotency-Key": "order-42"})
            assert first[0] == again[0] == 202 and first[1] == again[1]
            assert again[2]["Idempotent-Replayed"] == "true"
            status, body, _ = await api.post("/v1/messages", json(setup, subject="another"), headers={"Idempotency-Key": "order-42"})
            assert status == 422 and body["type"] == PROBLEM + "idempotency-key-reused"
            # Fifty at once with one key: one message, fifty equal answers.
            burst = json(setup, subject="burst")
            answers = await asyncio.gather(*(api.post("/v1/messages", burst, headers={"Idempotency-Key": "burst"}) for _ in range(50)))
            assert {a[0] for a in answers} == {202} and len({a[1]["queue_id"] for a in answers}) == 1
        sent = [m for m in await d.store.queue.list(finished=True) if m["mail_from"]]   # not the bounces (DSNs) of them
        assert len(sent) == 2
        assert await d.store.queue.monthly_count((await d.store.tenants.get("acme"))["id"]) == 2
        # A day later the key is forgotten: the sweeper deletes its row, and the key may send again.
        swept = await Sweeper(d.store, QueueConfig(), clock=lambda: time.time() + 86400 + 60).sweep()
        assert swept["idempotency"] == 2
        async with api_client(d, token) as api:
            status, body, _ = await api.post("/v1/messages", json(setup, subject="another"), headers={"Idempotency-Key": "order-42"})
        assert status == 202 and body["queue_id"] != first[1]["queue_id"], body


async def test_a_body_past_the_memory_budget_is_refused_as_smtp_refuses_it(tmp_path, dns_server):
    extra = {**FAST, "daemon": {"memory_budget": 1 << 20}}
    async with delivering_daemon(tmp_path, dns_server, 9, extra) as (d, setup):
        token = await api_key(d, "acme", "sender", usecase="receipts")
        big = json(setup, attachments=[{"content": base64.b64encode(b"z" * 100_000).decode(), "filename": "z.bin"}])
        await d.call("pause", tenant="acme", usecase="receipts")   # held: delivery takes nothing from the budget
        budget = d.daemon.budget
        assert budget.try_acquire(600_000)        # what messages in delivery hold meanwhile
        async with api_client(d, token) as api:
            status, body, headers = await api.post("/v1/messages", big)
            assert status == 503 and body["type"] == PROBLEM + "insufficient-resources", body
            assert body["smtp"].startswith("452 4.3.1") and int(headers["Retry-After"]) >= 1
            assert budget.in_use == 600_000
            budget.release(600_000)
            status, body, _ = await api.post("/v1/messages", big)
            assert status == 202, body
        assert budget.in_use == 0                 # given back after the commit


def test_the_received_field_names_only_an_ip_address_whatever_a_proxy_forwarded():
    from gateway.api.sending import received_http

    def field(client: str) -> bytes:
        return received_http(client_ip=client, hostname="gw.test", queue_id="q1", tls=True, recipients=["a@b.test"], now=0)

    assert field("127.0.0.1").startswith(b"Received: from [127.0.0.1]\r\n\tby gw.test (gateway) with HTTPS id q1\r\n\tfor <a@b.test>; ")
    assert field("::1").startswith(b"Received: from [IPv6:::1]\r\n")
    assert field("evil) (by forged; x").startswith(b"Received: from unknown\r\n")
