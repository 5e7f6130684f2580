"""Delivery of received mail to the tenant's application and the operator's inbox commands, in one
in-process daemon: webhooks narrowed to a use case (a real HTTP receiver that fails then succeeds,
signatures verified), attachment URLs fetched with a real HTTP client (tampered, expired, another
tenant's), forwarding through the outbound queue to an aiosmtpd sink, and every CLI command over
the real admin socket. Processed rows are written as the processor does (tests/support/processed.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from urllib.parse import urlsplit

import aiohttp
import dkim
import pytest

from gateway.inbound import downloads
from gateway.inbound.attachments import AttachmentFiles
from gateway.inbound.delivery import content_disposition
from gateway.inbound.payload import cut
from gateway.store.inbound import Spooled
from gateway.unsubscribe import tokens
from gateway.webhooks.signing import HEADER, verify
from tests.support import process
from tests.support.daemon import WEB_PROCESS, AdminError, running_daemon
from tests.support.delivery import FAST_RETRIES, delivering_daemon, dkim_dnsfunc, enqueue, publish_mx, wait_events
from tests.support.dns import dns_overrides
from tests.support.processed import Part, add_channel_address, processed_message, raw_message
from tests.support.sink import mail_sink
from tests.support.tenancy import sending_setup
from tests.support.webhooks import WebhookReceiver

FAST_WEBHOOKS = {"webhooks": {"poll_interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.1, "backoff_jitter": 0.0}}
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 300


def cli(d, *args: str, check: int | None = 0) -> str:
    result = process.run_cli("--socket", str(d.daemon.paths.socket), *args, check=check)
    return result.stdout + result.stderr


async def run_cli(d, *args: str, check: int | None = 0) -> str:
    return await asyncio.to_thread(cli, d, *args, check=check)


async def setup_two_usecases(d, dns) -> dict:
    setup = await sending_setup(d, dns)
    support = await d.call("usecase.add", tenant="acme", domain=setup["domain"], name="support", entity="Acme support",
                           kind="transactional", senders=["help@acme.test"])
    tenant_id = (await d.store.tenants.get("acme"))["id"]
    address_id = await add_channel_address(d.store, tenant_id, support["id"], "help@acme.test")
    return setup | {"tenant_id": tenant_id, "support_id": support["id"], "address_id": address_id}


def local(d, url: str) -> str:
    """The URL as the daemon's web listener serves it (web.public_url is the default here)."""
    parts = urlsplit(url)
    return f"http://{d.address('web')}{parts.path}"


@pytest.mark.parametrize("web", WEB_PROCESS)
async def test_received_webhook_narrowed_to_a_use_case_signed_retried_with_attachment_urls(tmp_path, dns_server, web):
    with WebhookReceiver() as rx:
        async with running_daemon(tmp_path, {**dns_overrides(dns_server), **FAST_WEBHOOKS, **web}) as d:
            s = await setup_two_usecases(d, dns_server)
            narrowed = await d.call("webhook.add", tenant="acme", url=rx.url("/support"), events=["received"], name="support",
                                    usecase="support")
            assert narrowed["usecase"] == "support"
            everything = await d.call("webhook.add", tenant="acme", url=rx.url("/all"), events=["received"], name="all")
            rx.script("/support", [500])   # the app is down for the first POST
            state = d.daemon.paths.state_dir
            evil = b"<script>alert(1)</script>"
            mine = await processed_message(d.store, state, tenant_id=s["tenant_id"], usecase_id=s["support_id"],
                                           address_id=s["address_id"], recipients=("help@acme.test",),
                                           summary={"html": "<p>x</p>" * 100000,   # 800 KB: cut to inbox.max_body_bytes
                                                    "classification": "no_parent", "from_name": "Customer"},
                                           attachments=[Part("invoice.pdf", "application/pdf", PDF),
                                                        Part("logo@acme", "image/png", PNG, inline=True, content_id="logo@acme"),
                                                        Part('../"évil".html', "text/html", evil)])
            other = await processed_message(d.store, state, tenant_id=s["tenant_id"], usecase_id=s["usecase_id"])
            # The receiver's wait blocks its thread: off the daemon's loop.
            await asyncio.to_thread(rx.wait, lambda posts: len(rx.events("/support")) >= 1 and len(rx.events("/all")) >= 2)
            assert [p["status"] for p in rx.of("/support", ok_only=False)][:2] == [500, 200]
            # Narrowed: the other use case's message never went to /support.
            assert [e["subject"] for e in rx.events("/support")] == [mine["inbound_id"]]
            assert [e["subject"] for e in rx.events("/all")] == [mine["inbound_id"], other["inbound_id"]]
            for p in rx.of("/support", ok_only=False):
                assert verify(narrowed["secret"], p["headers"][HEADER], p["body"], now=time.time())
            assert verify(everything["secret"], rx.of("/all")[0]["headers"][HEADER], rx.of("/all")[0]["body"], now=time.time())
            [event] = rx.events("/support")
            assert event["type"] == "received" and event["data"]["usecase_id"] == s["support_id"]
            inbound = event["inbound"]
            assert inbound["inbound_id"] == mine["inbound_id"] and inbound["message_id"] == mine["message_id"]
            assert inbound["thread_id"] == mine["message_id"] and inbound["kind"] == "message"
            assert inbound["usecase"] == "support" and inbound["address"] == "help@acme.test"
            assert inbound["from"] == "customer@example.org" and inbound["to"] == ["help@acme.test"]
            assert inbound["from_name"] == "Customer" and inbound["classification"] == {"kind": "message", "rule": "no_parent"}
            assert inbound["subject"] == "Help please" and inbound["stripped_text"] == "Hello, my order is late."
            assert inbound["auth"]["spf"] == "pass" and inbound["envelope"]["recipients"] == ["help@acme.test"]
            assert inbound["truncated"] == ["html"] and len(inbound["html"].encode()) == 131072   # inbox.max_body_bytes
            assert [(a["filename"], a["inline"], a["size"]) for a in inbound["attachments"]] == [
                ("invoice.pdf", False, len(PDF)), ("logo@acme", True, len(PNG)), ('../"évil".html', False, len(evil))]
            pdf_url, png_url, html_url = (local(d, a["url"]) for a in inbound["attachments"])
            # The URL fetched with a real HTTP client: the bytes, their type, a safe download name.
            async with aiohttp.ClientSession() as http:
                async with http.get(pdf_url) as resp:
                    assert resp.status == 200 and await resp.read() == PDF
                    assert resp.headers["Content-Type"] == "application/pdf"
                    assert resp.headers["Content-Disposition"] == content_disposition("invoice.pdf")
                    assert 'filename="invoice.pdf"' in resp.headers["Content-Disposition"]
                async with http.get(png_url) as resp:
                    assert resp.status == 200 and await resp.read() == PNG
                async with http.get(html_url) as resp:
                    assert resp.status == 200 and await resp.read() == evil
                    disposition = resp.headers["Content-Disposition"]
                    assert disposition.startswith("attachment;") and "/" not in disposition.split("filename*")[0]
                    assert "sandbox" in resp.headers["Content-Security-Policy"] and resp.headers["X-Content-Type-Options"] == "nosniff"
                # Tampered: one character of the token changed -> 404, nothing says why.
                token = pdf_url.rsplit("/", 1)[1]
                tampered = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
                async with http.get(pdf_url.replace(token, tampered)) as resp:
                    assert resp.status == 404 and resp.headers["Content-Type"].startswith("application/problem+json")
                    assert (await resp.json())["status"] == 404
                # Ours but expired -> 403; ours for another tenant's row -> 404.
                keys = {k["id"]: bytes(k["secret"]) for k in await d.store.unsubscribes.keys() if k["retired_at"] is None}
                key_id = max(keys)
                expired = downloads.mint(downloads.Download(key_id, s["tenant_id"], mine["row_id"], 0, int(time.time()) - 1), keys[key_id])
                async with http.get(f"http://{d.address('web')}/inbound/attachments/{expired}") as resp:
                    assert resp.status == 403 and "expired" in (await resp.json())["detail"]
                foreign = downloads.mint(downloads.Download(key_id, s["tenant_id"] + 1, mine["row_id"], 0, int(time.time()) + 60), keys[key_id])
                async with http.get(f"http://{d.address('web')}/inbound/attachments/{foreign}") as resp:
                    assert resp.status == 404
                # The file removed (retention): the genuine, unexpired URL answers 404.
                AttachmentFiles(state / "attachments").remove(inbound["attachments"][1]["sha256"])
                async with http.get(png_url) as resp:
                    assert resp.status == 404 and "retention" in (await resp.json())["detail"]
            assert "support" in await run_cli(d, "webhook", "show", "acme", "support")


async def test_forwarded_through_the_outbound_queue_to_the_sink(tmp_path, dns_server):
    async with mail_sink() as sink:
        async with delivering_daemon(tmp_path, dns_server, sink.port, {"inbox": {"forward_interval": 0.05}}) as (d, setup):
            publish_mx(dns_server, "desk.example")
            tenant_id = (await d.store.tenants.get("acme"))["id"]
            out = await run_cli(d, "inbound", "forward", "add", "acme", "--usecase", "receipts", "--to", "Team@Desk.example")
            assert "forwarded to team@desk.example" in out
            assert "team@desk.example" in await run_cli(d, "inbound", "forward", "list", "--tenant", "acme")
            await run_cli(d, "inbound", "forward", "add", "acme", "--to", "x@desk.example", check=2)  # neither --usecase nor --address
            state = d.daemon.paths.state_dir
            bounce = await processed_message(d.store, state, tenant_id=tenant_id, usecase_id=setup["usecase_id"], kind="dsn")
            msg = await processed_message(d.store, state, tenant_id=tenant_id, usecase_id=setup["usecase_id"],
                                          recipients=("app@acme.test",))
            [got] = await sink.wait_for(1)
            assert got.rcpt_tos == ["team@desk.example"]
            assert got.mail_from.startswith("bounces+") and got.mail_from.endswith("@" + setup["return_path_domain"])
            # The original as received, our Authentication-Results kept, one Received on top, our DKIM signature over it.
            assert msg["raw"] in got.data
            head = got.data.split(b"\r\n\r\n", 1)[0]
            assert b"with forward id" in head and b"Authentication-Results: gw.test; spf=pass" in head
            assert dkim.verify(got.data, dnsfunc=dkim_dnsfunc(dns_server))
            [forwarded] = await wait_events(d, msg["inbound_id"], "forwarded")
            assert forwarded["data"]["to"] == ["team@desk.example"]
            [skipped] = await wait_events(d, bounce["inbound_id"], "forward_skipped")
            assert "dsn" in skipped["data"]["reason"]
            assert await d.store.queue.monthly_count(tenant_id) == 0   # a forward is not the tenant's sending
            assert await d.store.forwards.pending() == []
            rules = await d.call("forward.list", tenant="acme")
            assert "deleted rule" in await run_cli(d, "inbound", "forward", "delete", "acme", str(rules[0]["id"]))
            assert await d.call("forward.list") == []


async def test_inbox_commands_over_the_socket_and_tenant_isolation(tmp_path, dns_server):
    async with running_daemon(tmp_path, {**dns_overrides(dns_server), "delivery": {**FAST_RETRIES, "remote_port": 9}}) as d:
        s = await setup_two_usecases(d, dns_server)
        await d.call("tenant.add", name="other")
        state = d.daemon.paths.state_dir
        # A thread: our message out, the customer's reply in.
        qid = await enqueue(d, s, ["customer@example.org"])
        thread_id = f"{qid}@acme.test"
        reply = await processed_message(d.store, state, tenant_id=s["tenant_id"], usecase_id=s["usecase_id"], kind="reply",
                                        thread_id=thread_id, parent=thread_id, subject="Re: hello \x1b[31mred",
                                        attachments=[Part("invoice.pdf", "application/pdf", PDF)])
        listed = await run_cli(d, "inbox", "list", "--tenant", "acme", "--kind", "reply")
        assert reply["inbound_id"] in listed and "\x1b" not in listed and "\\x1b" in listed
        assert reply["inbound_id"] not in await run_cli(d, "inbox", "list", "--tenant", "other")
        assert reply["inbound_id"] not in await run_cli(d, "inbox", "list", "--after", reply["inbound_id"])
        rows = json.loads(await run_cli(d, "inbox", "list", "--thread", thread_id, "--json"))
        assert [r["inbound_id"] for r in rows] == [reply["inbound_id"]] and rows[0]["attachments"] == 1
        shown = await run_cli(d, "inbox", "show", reply["inbound_id"])
        assert "spf=pass" in shown and "invoice.pdf" in shown and "Hello, my order is late." in shown and thread_id in shown
        # Export and attachment: bytes, to a file and to stdout.
        eml = tmp_path / "out.eml"
        await run_cli(d, "inbox", "export", reply["inbound_id"], "--output", str(eml))
        assert eml.read_bytes() == reply["raw"] and eml.stat().st_mode & 0o777 == 0o600
        # A file that already exists, readable by everyone, is the operator's target too: the mail in it
        # is a customer's, so it ends 0600 like a new one (O_CREAT's mode applies only to new files).
        shared = tmp_path / "shared.eml"
        shared.write_bytes(b"old")
        shared.chmod(0o644)
        await run_cli(d, "inbox", "export", reply["inbound_id"], "--output", str(shared))
        assert shared.read_bytes() == reply["raw"] and shared.stat().st_mode & 0o777 == 0o600
        result = await asyncio.to_thread(subprocess.run, [process.GATEWAY, "--socket", str(d.daemon.paths.socket), "inbox",
                                                          "attachment", reply["inbound_id"], "invoice.pdf"],
                                         capture_output=True, env=process.gateway_env(), stdin=subprocess.DEVNULL, timeout=30)
        assert result.returncode == 0 and result.stdout == PDF   # bytes on stdout when it is not a terminal
        pdf = tmp_path / "a.pdf"
        await run_cli(d, "inbox", "attachment", reply["inbound_id"], "0", "-o", str(pdf))
        assert pdf.read_bytes() == PDF
        # Big enough for several pieces over the socket (1 MiB each).
        big_raw = raw_message(body="x" * 100 + "\r\n")[0] + b"y" * (2 * 1024 * 1024 + 17)
        big = await processed_message(d.store, state, tenant_id=s["tenant_id"], usecase_id=s["usecase_id"], raw=big_raw,
                                      message_id="big@example.org")
        await run_cli(d, "inbox", "export", big["inbound_id"], "-o", str(eml))
        assert eml.read_bytes() == big_raw
        # Another tenant's id is not found, through every command.
        for args in (("inbox", "show", reply["inbound_id"]), ("inbox", "export", reply["inbound_id"]),
                     ("inbox", "attachment", reply["inbound_id"], "invoice.pdf"), ("inbox", "release", reply["inbound_id"]),
                     ("thread", "show", thread_id)):
            out = await run_cli(d, *args, "--tenant", "other", check=1)
            assert "no inbound message" in out or "no thread" in out, (args, out)
        with_tenant = await d.call("inbox.show", id=reply["inbound_id"], tenant="acme")
        assert with_tenant["summary"]["auth"]["spf"] == "pass"
        try:
            await d.call("inbox.attachment", id=reply["inbound_id"], name="nope.pdf", offset=0, length=10)
        except AdminError as exc:
            assert exc.code == "not_found"
        else:
            raise AssertionError("an unknown attachment name was found")
        # The whole conversation in order: out, then in.
        conv = await run_cli(d, "thread", "show", thread_id, "--tenant", "acme")
        lines = conv.splitlines()
        assert "->" in lines[1] and qid in lines[1] and "<-" in lines[2] and reply["inbound_id"] in lines[2]
        conv_json = await d.call("thread.show", id=f"<{thread_id}>")
        assert [c["direction"] for c in conv_json] == ["out", "in"] and conv_json[0]["recipients"][0]["rcpt"] == "customer@example.org"
        # A held message goes back to the processor with `inbox release`. The daemon's processor runs:
        # a row with no recipient that receives here is held by it (unroutable), and again once released.
        await d.store.inbound.spool([Spooled(
            inbound_id="0000000000held1", source="mx", raw=b"Subject: x\r\n\r\nbody\r\n", tenant_id=s["tenant_id"])])
        await wait_events(d, "0000000000held1", "inbound_held")
        assert (await d.call("inbox.show", id="0000000000held1"))["state"] == "held"
        assert "was held: " in await run_cli(d, "inbox", "release", "0000000000held1")
        assert await wait_events(d, "0000000000held1", "inbound_released")
        assert await wait_events(d, "0000000000held1", "inbound_held", count=2)   # the processor took it again
        assert "not held" in await run_cli(d, "inbox", "release", reply["inbound_id"], check=1)
        # webhook add narrowed through the CLI.
        out = await run_cli(d, "webhook", "add", "acme", "https://app.example/hook", "--events", "received",
                            "--address", "Help@acme.test", "--name", "desk")
        assert "address help@acme.test" in out
        assert "no channel address" in await run_cli(d, "webhook", "add", "acme", "https://app.example/h2", "--address",
                                                    "nobody@acme.test", check=1)


def test_body_cut_at_a_character_boundary_and_safe_download_names():
    assert cut("ééé", 5) == ("éé", True)
    assert cut("abc", 3) == ("abc", False)
    assert content_disposition("a\r\n/b\\\".pdf").startswith('attachment; filename="ab.pdf"')
    assert content_disposition("../..").startswith('attachment; filename="attachment"')
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf" in content_disposition("résumé.pdf")


def test_attachment_tokens_are_tamper_proof_and_never_an_unsubscribe_token():
    keys = {3: b"k" * 32, 4: b"j" * 32}
    claim = downloads.Download(3, 7, 1234, 2, 2_000_000_000)
    token = downloads.mint(claim, keys[3])
    assert downloads.verify(token, keys) == claim and len(token) < 60
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), token + "A", "", "!" * 20):
        with pytest.raises(downloads.InvalidToken):
            downloads.verify(bad, keys)
    with pytest.raises(downloads.InvalidToken):
        downloads.verify(token, {4: keys[4]})   # its key retired
    # Same key, other kind: an unsubscribe token is refused here and an attachment token there.
    unsub = tokens.mint(tokens.Claim(3, 7, "usecase", 1, 1, 1, "a@b.example"), keys[3])
    with pytest.raises(downloads.InvalidToken):
        downloads.verify(unsub, keys)
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(token, keys)


async def test_posts_stay_within_max_post_bytes_and_one_big_event_is_cut_to_fit(tmp_path, dns_server):
    with WebhookReceiver() as rx:
        overrides = {**dns_overrides(dns_server), **FAST_WEBHOOKS, "inbox": {"max_post_bytes": 65536}}
        async with running_daemon(tmp_path, overrides) as d:
            s = await setup_two_usecases(d, dns_server)
            await d.call("webhook.add", tenant="acme", url=rx.url("/app"), events=["received"], name="app")
            state = d.daemon.paths.state_dir
            # 100,000 'é' is 200 KB of UTF-8 and 600 KB of JSON (\u00e9): cut until the event fits.
            huge = await processed_message(d.store, state, tenant_id=s["tenant_id"], usecase_id=s["usecase_id"],
                                           summary={"text": "é" * 100000, "html": "", "stripped_text": ""})
            made = [await processed_message(d.store, state, tenant_id=s["tenant_id"], usecase_id=s["usecase_id"],
                                            summary={"text": "x" * 20000}) for _ in range(5)]
            ids = [huge["inbound_id"], *(m["inbound_id"] for m in made)]
            await asyncio.to_thread(rx.wait, lambda posts: [e["subject"] for e in rx.events("/app")] == ids)
            posts = rx.of("/app")
            assert len(posts) >= 3 and all(len(p["body"]) <= 65536 for p in posts)
            first = rx.events("/app")[0]["inbound"]
            assert first["truncated"] == ["text"] and 0 < len(first["text"]) < 10000
            assert all(e["inbound"]["truncated"] == [] for e in rx.events("/app")[1:])
