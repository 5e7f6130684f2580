"""The whole outbound path in one daemon: a real client submits (STARTTLS or implicit TLS, AUTH), the
daemon queues, signs and delivers to a recording MX found through the test DNS server.

Nothing here enqueues through the store: every message enters through the submission listener with
credentials made by `usecase.credentials.add`, and operators act through the admin socket (the CLI
where it matters). Waits are on events (sink.wait_for, wait_events), never sleeps.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib

import aiosmtplib
import dkim
import pytest

from gateway import verp
from gateway.submission import client_tls_context
from tests.support import process
from tests.support.daemon import AdminError
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, publish_mx, recipients, wait_events
from tests.support.sink import mail_sink
from tests.support.tenancy import sending_setup


def raw_message(sender: str, to: list[str], *, bcc: list[str] = (), subject: str = "hello", headers: str = "") -> bytes:
    """A message as an app writes it; no Message-ID and no Date unless ``headers`` adds them."""
    head = f"From: App <{sender}>\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n"
    if bcc:
        head += f"Bcc: {', '.join(bcc)}\r\n"
    head += headers + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    return (head + "\r\nHello there.\r\nA second line.\r\n").encode()


def queue_id_of(reply: str) -> str:
    assert "queued as" in reply, reply
    return reply.rsplit(" ", 1)[1]


async def submit(d, setup, rcpts: list[str], data: bytes | None = None, *, implicit: bool = False) -> str:
    """STARTTLS (or implicit TLS) + AUTH PLAIN with aiosmtplib; returns the queue id from the 250."""
    host, port = d.hostport("submissions" if implicit else "submission")
    smtp = aiosmtplib.SMTP(hostname=host, port=port, use_tls=implicit, start_tls=not implicit,
                           tls_context=client_tls_context(), timeout=10)
    async with smtp:
        await smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_extensions["auth"].split()
        await smtp.auth_plain(setup["username"], setup["password"])
        _, reply = await smtp.sendmail(setup["sender"], rcpts, data or raw_message(setup["sender"], rcpts))
    return queue_id_of(reply)


def cli(d, *args: str) -> tuple[int, str]:
    result = process.run_cli("--socket", str(d.daemon.paths.socket), *args, check=None)
    return result.returncode, result.stdout + result.stderr


async def run_cli(d, *args: str) -> tuple[int, str]:
    return await asyncio.to_thread(cli, d, *args)


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def dkim_algorithms(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    out = []
    for sig in msg.get_all("DKIM-Signature", []):
        tags = dict(t.strip().split("=", 1) for t in "".join(str(sig).split()).split(";") if "=" in t)
        out.append(tags["a"])
    return out


# --------------------------------------------------------------------------- the happy path, two clients


async def test_starttls_plain_submission_arrives_signed_prepared_and_verp_tagged(tmp_path, dns_server, store_url):
    async with mail_sink(starttls=True) as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, dkim="both", extra={"store": {"url": store_url}}) as (d, setup):
            data = raw_message(setup["sender"], ["bob@dest.test"], bcc=["hidden@dest.test"])
            qid = await submit(d, setup, ["bob@dest.test", "hidden@dest.test"], data)
            got = await sink.wait_for(2)
            assert sorted(r for m in got for r in m.rcpt_tos) == ["bob@dest.test", "hidden@dest.test"]
            shown = await d.call("queue.show", queue_id=qid)
            by_index = {r["index"]: r["rcpt"] for r in shown["recipients"]}
            for m in got:
                [rcpt] = m.rcpt_tos  # VERP: one transaction per recipient
                assert m.tls
                head = header_block(m.data)
                # Bcc gone from what every recipient sees, the Bcc recipient still got its copy.
                assert b"\r\nbcc:" not in b"\r\n" + head.lower() and b"hidden@dest.test" not in m.data
                # Message-ID on the sending domain and Date, added because the client sent neither.
                assert f"\r\nMessage-ID: <{qid}@{setup['domain']}>".encode() in head
                assert shown["message_id"] == f"{qid}@{setup['domain']}"
                assert head.count(b"\r\nDate: ") == 1
                # Our trace field, naming the queue id and the TLS submission.
                received = email.message_from_bytes(m.data, policy=email.policy.compat32).get_all("Received")
                assert any(f"with ESMTPSA id {qid}" in " ".join(r.split()) for r in received), received
                # Both signatures (RSA and Ed25519) verify against the keys the test DNS publishes.
                assert sorted(dkim_algorithms(m.data)) == ["ed25519-sha256", "rsa-sha256"]
                for i in range(2):
                    assert dkim.DKIM(m.data).verify(idx=i, dnsfunc=dkim_dnsfunc(dns_server)), (rcpt, i)
                # The envelope sender is the VERP return path on the bounce domain, naming message and recipient.
                assert m.mail_from.endswith("@" + setup["return_path_domain"]), m.mail_from
                tag = verp.decode(m.mail_from)
                assert tag is not None and tag.queue_id == qid and by_index[tag.recipient_index] == rcpt
                assert tag.base == verp.bounce_address(setup["return_path_domain"])
            await wait_events(d, qid, "delivered", 2)
            assert {r["state"] for r in shown["recipients"]} <= {"pending", "delivered"}
            assert {r["state"] for r in (await recipients(d, qid)).values()} == {"delivered"}


async def test_smtplib_implicit_tls_auth_login_arrives_signed(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, dkim="both") as (d, setup):
            host, port = d.hostport("submissions")
            # The client sets its own Message-ID and Date: both kept as they are.
            data = raw_message(setup["sender"], ["carol@dest.test"],
                               headers="Message-ID: <own.1@app.example>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n")

            def send() -> str:
                with smtplib.SMTP_SSL(host, port, context=client_tls_context(), timeout=10) as s:
                    s.ehlo("client.example")
                    s.user, s.password = setup["username"], setup["password"]
                    code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
                    assert code == 235
                    s.mail(setup["sender"])
                    s.rcpt("carol@dest.test")
                    code, reply = s.data(data)
                    assert code == 250
                    return reply.decode()

            qid = queue_id_of(await asyncio.to_thread(send))
            [got] = await sink.wait_for(1)
            head = header_block(got.data)
            assert b"\r\nMessage-ID: <own.1@app.example>" in head and head.count(b"Message-ID:") == 1
            assert b"\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000" in head and head.count(b"\r\nDate:") == 1
            assert sorted(dkim_algorithms(got.data)) == ["ed25519-sha256", "rsa-sha256"]
            for i in range(2):
                assert dkim.DKIM(got.data).verify(idx=i, dnsfunc=dkim_dnsfunc(dns_server)), i
            tag = verp.decode(got.mail_from)
            assert tag is not None and tag.queue_id == qid and tag.recipient_index == 0
            [event] = await wait_events(d, qid, "delivered")
            assert event["data"]["rcpt"] == "carol@dest.test"


# --------------------------------------------------------------------------- failures


async def test_partial_failure_one_dsn_to_the_envelope_senders_mx(tmp_path, dns_server, store_url):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("eve@dest.test", "550 5.1.1 no such user here")
        async with delivering_daemon(tmp_path, dns_server, sink.port, extra={"store": {"url": store_url}}) as (d, setup):
            publish_mx(dns_server, setup["domain"], "mx.dest.test")  # the app's own domain receives at the sink
            qid = await submit(d, setup, ["bob@dest.test", "eve@dest.test"])
            [dsn_event] = await wait_events(d, qid, "dsn_sent")
            await wait_events(d, dsn_event["data"]["dsn_queue_id"], "delivered")
            await sink.wait_for(2)
            assert [m.rcpt_tos for m in sink.for_rcpt("bob@dest.test")] == [["bob@dest.test"]]
            assert sink.for_rcpt("eve@dest.test") == []
            [dsn] = sink.for_rcpt(setup["sender"])
            assert dsn.mail_from in ("", "<>")
            report = email.message_from_bytes(dsn.data, policy=email.policy.default)
            assert report.get_content_type() == "multipart/report"
            assert report.get_param("report-type") == "delivery-status"
            parts = list(report.iter_parts())
            assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
            per_message, *per_rcpt = parts[1].get_payload()
            assert per_message["Reporting-MTA"].startswith("dns;")
            assert per_message["Arrival-Date"]
            [failed] = per_rcpt  # bob was delivered: not in the report
            assert failed["Final-Recipient"] == "rfc822; eve@dest.test"
            assert failed["Action"] == "failed" and failed["Status"] == "5.1.1"
            assert failed["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
            assert failed["Remote-MTA"] == "dns; mx.dest.test"
            assert f"Message-ID: <{qid}@{setup['domain']}>" in parts[2].as_string()  # the original's headers
            code, out = await run_cli(d, "queue", "show", qid)
            assert code == 0, out
            assert "recipient 0: bob@dest.test  delivered" in out and "recipient 1: eve@dest.test  bounced" in out
            assert "550 5.1.1" in out and "no such user here" in out
            assert len(await d.store.events.list(subject=qid, kind="dsn_sent")) == 1
            await check_metrics_after_traffic(d)


async def check_metrics_after_traffic(d) -> None:
    """Scrape /metrics as Prometheus does: the outbound families exist, count what happened, and follow
    the naming conventions (counters _total, durations _seconds, sizes _bytes; no other units)."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    monitor = next(c for c in d.daemon.components if c.name == "queue")
    await monitor.refresh()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{d.address('web')}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {}
    for family in families.values():
        for sample in family.samples:
            value[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    assert value[("gateway_messages_received_total", ())] == 1
    assert value[("gateway_messages_delivered_total", (("route", "direct"),))] == 2  # bob and the DSN
    assert value[("gateway_messages_bounced_total", (("route", "direct"),))] == 1
    assert value[("gateway_dsn_sent_total", ())] == 1
    assert value[("gateway_delivery_duration_seconds_count", ())] == 2
    assert value[("gateway_submission_accept_seconds_count", ())] == 1
    assert value[("gateway_message_size_bytes_count", ())] == 1 and value[("gateway_message_size_bytes_sum", ())] > 100
    assert value[("gateway_queue_recipients", (("state", "bounced"),))] == 1
    assert value[("gateway_queue_recipients", (("state", "delivered"),))] == 2
    for name, family in families.items():
        if not name.startswith("gateway_") or name.endswith("_created"):
            continue  # _created: prometheus_client's companion of each counter and histogram
        samples = {s.name for s in family.samples}
        if family.type == "counter":
            assert samples <= {f"{name}_total", f"{name}_created"}, (name, samples)
        elif family.type == "histogram":
            assert name.endswith(("_seconds", "_bytes")), name
        else:
            assert not name.endswith("_total"), f"{name} is a {family.type} named like a counter"
        assert not any(unit in name for unit in ("_ms", "_milliseconds", "_minutes", "_kb", "_mb", "_kilobytes")), name
        words = set(name.split("_"))
        if words & {"duration", "latency", "time", "delay", "age"}:
            assert name.endswith(("_seconds", "_seconds_total")), name
        if words & {"size", "length"}:
            assert name.endswith(("_bytes", "_bytes_total")), name


async def test_4xx_remote_retried_on_schedule_then_delivered(tmp_path, dns_server, store_url):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("bob@dest.test", "451 4.3.0 busy, try later", "421 4.7.0 too many, later", "250 2.1.5 OK")
        async with delivering_daemon(tmp_path, dns_server, sink.port, extra={"store": {"url": store_url}}) as (d, setup):
            qid = await submit(d, setup, ["bob@dest.test"])
            [got] = await sink.wait_for(1)
            assert tuple(got.rcpt_tos) == ("bob@dest.test",)
            await wait_events(d, qid, "delivered")
            deferred = await wait_events(d, qid, "deferred", 2)
            assert [e["data"]["code"] for e in deferred] == [451, 421]
            r = (await recipients(d, qid))["bob@dest.test"]
            assert r["state"] == "delivered" and r["attempts"] == 3
            assert [a["outcome"] for a in r["attempt_log"]] == ["deferred", "deferred", "delivered"]
            gaps = [b["at"] - a["at"] for a, b in zip(r["attempt_log"], r["attempt_log"][1:])]
            assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps  # FAST_RETRIES: base 0.2 s, doubled, no jitter
            code, out = await run_cli(d, "queue", "show", qid)
            assert code == 0 and "451 4.3.0" in out and "busy, try later" in out and "delivered" in out


# --------------------------------------------------------------------------- pauses


@pytest.mark.parametrize("scope", ["global", "tenant", "usecase"])
async def test_pause_holds_submitted_mail_and_resume_delivers(tmp_path, dns_server, scope):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            args = {"global": [], "tenant": ["--tenant", setup["tenant"]],
                    "usecase": ["--tenant", setup["tenant"], "--usecase", setup["usecase"]]}[scope]
            code, out = await run_cli(d, "pause", *args)
            assert code == 0, out
            qid = await submit(d, setup, ["bob@dest.test"])  # accepted: 250 with a queue id
            shown = await d.call("queue.show", queue_id=qid)
            assert [(r["state"], r["hold_reason"]) for r in shown["recipients"]] == [("held", "paused")]
            if scope != "global":
                # Another tenant is not paused: its mail flows past the paused one.
                other = await sending_setup(d, dns_server, tenant="beta", domain="beta.test", sender="app@beta.test")
                other_qid = await submit(d, other, ["carol@dest.test"])
                await wait_events(d, other_qid, "delivered")
            # Nothing of the paused message is due: a worker asking for work gets none.
            assert await d.store.delivery.claim("probe", 100) == []
            assert sink.for_rcpt("bob@dest.test") == []
            code, out = await run_cli(d, "queue", "list", "--state", "held", "--json")
            assert code == 0 and qid in out
            code, out = await run_cli(d, "resume", *args)
            assert code == 0 and "1 recipient(s) released" in out, out
            await sink.wait_until(lambda s: len(s.for_rcpt("bob@dest.test")) == 1)
            await wait_events(d, qid, "delivered")
            assert len(sink.for_rcpt("bob@dest.test")) == 1


# --------------------------------------------------------------------------- operators on real mail


async def test_operator_hold_release_delete_on_submitted_mail(tmp_path, dns_server, store_url):
    # A long backoff: once deferred, a recipient waits (not in flight) until the operator acts.
    slow = {"delivery": {"backoff_base": 60.0, "backoff_max": 120.0}, "store": {"url": store_url}}
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        for rcpt in ("a@dest.test", "b@dest.test", "c@dest.test"):
            sink.script(rcpt, "451 4.3.0 try again later")
        async with delivering_daemon(tmp_path, dns_server, sink.port, slow) as (d, setup):
            a, b, c = [await submit(d, setup, [rcpt]) for rcpt in ("a@dest.test", "b@dest.test", "c@dest.test")]
            for qid in (a, b, c):
                await wait_events(d, qid, "deferred")
            code, out = await run_cli(d, "queue", "hold", a, c, "--json")
            assert code == 0, out
            for rcpt in ("a@dest.test", "b@dest.test", "c@dest.test"):
                sink.script(rcpt, "250 2.1.5 OK")  # the remote accepts again
            code, out = await run_cli(d, "queue", "flush")
            assert code == 0 and "1 deferred recipient(s) due now" in out, out
            await wait_events(d, b, "delivered")
            assert [m.rcpt_tos for m in sink.messages] == [["b@dest.test"]]
            for qid in (a, c):
                assert [(r["state"], r["hold_reason"]) for r in (await recipients(d, qid)).values()] == [("held", "operator")]

            code, out = await run_cli(d, "queue", "release", a)
            assert code == 0 and f"{a}: released 1 recipient(s)" in out, out
            await wait_events(d, a, "delivered")
            assert [m.rcpt_tos for m in sink.messages] == [["b@dest.test"], ["a@dest.test"]]

            code, out = await run_cli(d, "queue", "delete", c)
            assert code == 0, out
            with pytest.raises(AdminError) as err:
                await d.call("queue.show", queue_id=c)
            assert err.value.code == "not_found"
            code, out = await run_cli(d, "queue", "list", "--json")
            assert code == 0 and c not in out
            # Even told to retry everything now, the deleted message is nowhere to be sent.
            code, out = await run_cli(d, "queue", "retry", "ALL", "--yes")
            assert code == 0, out
            assert await d.store.delivery.claim("probe", 100) == []
            assert sink.for_rcpt("c@dest.test") == []
            assert (await d.call("queue.counts"))["messages"] == 2


# --------------------------------------------------------------------------- what we send is never smuggled


@pytest.mark.parametrize("bad", ["\r\nRSET\r\nRCPT TO:<victim@dest.test>", "\n", "\0"])
async def test_cr_lf_nul_in_stored_addresses_never_reach_an_smtp_command(tmp_path, dns_server, bad):
    """Submission refuses them; if one is in the database anyway, delivery holds it instead of sending it."""
    from tests.support.delivery import enqueue

    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        sink.script("eve@dest.test", "550 5.1.1 no such user")
        async with delivering_daemon(tmp_path, dns_server, sink.port) as (d, setup):
            publish_mx(dns_server, setup["domain"], "mx.dest.test")
            evil = f"bob{bad}@dest.test"
            # The clean recipient first: nothing of the message may go out before the bad one is found
            # (holding a recipient the remote already accepted would deliver it twice on release).
            qid = await enqueue(d, setup, ["carol@dest.test", evil])
            held = await wait_events(d, qid, "held", 2)
            assert {e["data"]["rcpt"] for e in held} == {"carol@dest.test", evil}
            assert all("CR, LF or NUL" in e["data"]["reason"] for e in held)
            assert {r["state"] for r in (await recipients(d, qid)).values()} == {"held"}
            # The envelope sender is only ever used as a DSN's recipient: that DSN is held, never sent.
            qid2 = await enqueue(d, setup, ["eve@dest.test"], mail_from=f"app{bad}@{setup['domain']}")
            [dsn] = await wait_events(d, qid2, "dsn_sent")
            await wait_events(d, dsn["data"]["dsn_queue_id"], "held")
            assert sink.messages == []
