"""End to end: `gateway run` as a subprocess; a received message for a use case whose webhook (added
with the real CLI, narrowed to that use case) is down; SIGKILL while it fails; after the restart the
app gets the whole inbound JSON, signed, and fetches the attachment from the restarted daemon.
The processed row is written by a second process on the same database, as a processor on another
gateway node would."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.request
from urllib.parse import urlsplit

from gateway.admin.client import AdminClient
from gateway.store import Store
from gateway.webhooks.signing import HEADER, verify
from tests.support.processed import Part, processed_message
from tests.support.daemon import merge
from tests.support.dns import dns_overrides
from tests.support.process import AdminHandle, GatewayProcess
from tests.support.tenancy import sending_setup
from tests.support.webhooks import WebhookReceiver

CONFIG = {"webhooks": {"poll_interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.1, "backoff_jitter": 0.0}}
PDF = b"%PDF-1.4\n" + b"0123456789" * 5000


def prepare(gw: GatewayProcess, dns) -> None:
    """Tenant, verified domain, two use cases, set up over the admin socket as an operator does."""
    setup = asyncio.run(sending_setup(AdminHandle(gw), dns, usecase="support", sender="help@acme.test"))
    with AdminClient(gw.socket_path, timeout=30) as admin:
        admin.call("usecase.add", tenant="acme", domain=setup["domain"], name="receipts", entity="Acme receipts",
                   kind="transactional", senders=["app@acme.test"])


async def receive(state, usecase: str) -> dict:
    store = await Store.open(state / "gateway.db")
    try:
        tenant_id = (await store.tenants.get("acme"))["id"]
        usecase_id = (await store.usecases.get("acme", usecase))["id"]
        return await processed_message(store, state, tenant_id=tenant_id, usecase_id=usecase_id,
                                       attachments=[Part("report.pdf", "application/pdf", PDF)])
    finally:
        await store.close()


def test_received_webhook_survives_sigkill_and_the_attachment_url_works_after(tmp_path, dns_server):
    config = merge(CONFIG, dns_overrides(dns_server))
    state = tmp_path / "state"
    with WebhookReceiver() as rx:
        gw = GatewayProcess(tmp_path, config, state_dir=state).start()
        try:
            prepare(gw, dns_server)
            out = gw.cli("webhook", "add", "acme", rx.url("/app"), "--events", "received", "--usecase", "support",
                         "--name", "app").stdout
            assert "usecase support" in out
            secret = re.search(r"(whsec_\S+)", out).group(1)
            rx.script("/app", [503] * 10000)   # the app is down
            asyncio.run(receive(state, "receipts"))   # another use case: never sent to /app
            mine = asyncio.run(receive(state, "support"))
            rx.wait(lambda posts: sum(p["status"] == 503 for p in posts) >= 2)
            gw.proc.send_signal(signal.SIGKILL)
            gw.proc.wait(10)
            gw.close()
            rx.script("/app", [])   # the app is back
            gw = GatewayProcess(tmp_path, config, state_dir=state).start()
            rx.wait(lambda posts: len(rx.events("/app")) >= 1, timeout=30)
            [event] = {e["id"]: e for e in rx.events("/app")}.values()   # at-least-once: the same event only
            assert event["type"] == "received" and event["subject"] == mine["inbound_id"]
            inbound = event["inbound"]
            assert inbound["usecase"] == "support" and inbound["message_id"] == mine["message_id"]
            assert inbound["text"] == "Hello, my order is late.\n" and inbound["auth"]["spf"] == "pass"
            for p in rx.of("/app", ok_only=False):
                assert verify(secret, p["headers"][HEADER], p["body"], now=time.time())
            # Every POST carried only that event: the other use case's message never went to /app.
            assert {e["subject"] for p in rx.of("/app", ok_only=False) for e in json.loads(p["body"])["events"]} == {mine["inbound_id"]}
            # The URL, minted by the restarted daemon, fetched with a real HTTP client.
            status = json.loads(gw.cli("status", "--json").stdout)
            web = next(l["address"] for l in status["listeners"] if l["name"] == "web")
            [att] = inbound["attachments"]
            with urllib.request.urlopen(f"http://{web}{urlsplit(att['url']).path}", timeout=10) as resp:
                assert resp.status == 200 and resp.read() == PDF
                assert 'filename="report.pdf"' in resp.headers["Content-Disposition"]
            shown = gw.cli("webhook", "show", "acme", "app").stdout
            assert "HTTP 503" in shown and "usecase" in shown and "support" in shown   # the log kept the failures
            assert re.search(r"app\s+http://\S+/app\s+received\s+usecase support\s+enabled", gw.cli("webhook", "list").stdout)
            listed = gw.cli("inbox", "list", "--tenant", "acme").stdout
            assert mine["inbound_id"] in listed
            assert gw.stop() == 0
        finally:
            gw.close()
