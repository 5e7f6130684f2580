"""The HTTP API with daemon.workers = 2: every pipeline worker serves it on its own SO_REUSEPORT socket
(gateway/pipelines.py). One daemon subprocess for the lot (each worker is an interpreter importing the
gateway: seconds to start): sends land once whichever worker took them, and each worker's own request
count (its row of `gateway status`) shows both served; a key revoked through the admin socket or
through one worker's API is refused by both at once; one key's rate limit holds over both; a webhook
test from a worker is POSTed by the parent's sender; /metrics sums the workers' API counters; SIGHUP
reaches the workers' API; SIGTERM stops them all with exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from gateway.config import ApiConfig, Config
from gateway.pipelines import share
from tests.support.daemon import merge
from tests.support.process import AdminHandle, GatewayProcess, write_config
from tests.support.tenancy import dns_overrides, sending_setup
from tests.support.webhooks import WebhookReceiver
from tests.test_workers import pipeline_rows, started

# Fresh connections, so the kernel spreads them over both workers' sockets: the chance that all of
# ROUNDS land on one of two is 2 ** (1 - ROUNDS).
ROUNDS = 24


@contextlib.asynccontextmanager
async def fresh_connections() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        yield http


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    h = {"Authorization": f"Bearer {token}", **(headers or {})}
    data = None
    if body is not None:
        data, h["Content-Type"] = json.dumps(body).encode(), "application/json"
    async with http.request(method, url, data=data, headers=h) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None


def served(gw: GatewayProcess) -> dict[str, int]:
    """Requests each pipeline worker's API answered, by worker name (their own count, `gateway status`)."""
    return {r["name"]: r["status"]["api"]["requests"] for r in pipeline_rows(gw)}


async def test_both_workers_serve_the_api_once_revoke_and_limit_together(tmp_path, dns_server):
    # A key is remembered for an hour: only the revocation passed on to every worker can refuse it.
    # The refused key's requests must not run into the bad-key limiter (429 after a few).
    settings = merge(dns_overrides(dns_server), {"daemon": {"workers": 2},
                                                 "api": {"key_cache_ttl": 3600.0, "auth_failure_rate": 1000.0}})
    gw = started(GatewayProcess(tmp_path, settings))
    try:
        admin = AdminHandle(gw)
        setup = await sending_setup(admin, dns_server)
        base = f"http://127.0.0.1:{await admin.listener_port('api')}"
        sender = (await admin.call("apikey.add", tenant="acme", role="sender", usecase="receipts"))["token"]
        owner = (await admin.call("apikey.add", tenant="acme", role="owner"))["token"]
        await admin.call("pause", tenant="acme")   # held: what is counted is what was stored

        def send(i: int) -> dict[str, Any]:
            return {"from": setup["sender"], "to": [f"rcpt{i}@dest.test"], "subject": f"n{i}", "text": "hello"}

        async with fresh_connections() as http:
            # Sends through both workers, each stored once; one Idempotency-Key used on every
            # connection (so on both workers) is one message with one queue id.
            sent = await asyncio.gather(*(call(http, "POST", f"{base}/v1/messages", sender, send(i)) for i in range(ROUNDS)))
            assert [s for s, _ in sent] == [202] * ROUNDS, sent
            ids = {b["queue_id"] for _, b in sent}
            same = [await call(http, "POST", f"{base}/v1/messages", sender, send(999), {"Idempotency-Key": "once"})
                    for _ in range(ROUNDS // 2)]
            assert {s for s, _ in same} == {202} and len({b["queue_id"] for _, b in same}) == 1, same
            assert len(ids) == ROUNDS and (await admin.call("queue.counts"))["held"] == ROUNDS + 1
            counts = served(gw)
            assert len(counts) == 2 and all(n > 0 for n in counts.values()), counts
            for qid in list(ids)[:4]:   # a status read, whichever worker answers
                status, body = await call(http, "GET", f"{base}/v1/messages/{qid}", sender)
                assert status == 200 and body["queue_id"] == qid

            # Revoked over the admin socket while both workers remember it: refused by both at once.
            before = served(gw)
            await admin.call("apikey.revoke", key=sender)
            refused = [await call(http, "GET", f"{base}/v1/messages/{qid}", sender) for qid in list(ids)[:ROUNDS // 2]]
            assert {s for s, _ in refused} == {401}, refused
            after = served(gw)
            assert all(after[w] > before[w] for w in before), (before, after)   # both refused some

            # Revoked through one worker's API: the other refuses it before the revocation is answered.
            victim = (await admin.call("apikey.add", tenant="acme", role="agent", name="victim"))
            for _ in range(ROUNDS // 2):
                assert (await call(http, "GET", f"{base}/v1/tenant", victim["token"]))[0] == 200
            status, _ = await call(http, "DELETE", f"{base}/v1/apikeys/{victim['public_id']}", owner)
            assert status == 200
            refused = [(await call(http, "GET", f"{base}/v1/tenant", victim["token"]))[0] for _ in range(ROUNDS // 2)]
            assert set(refused) == {401}, refused

            # The tenant disabled over the admin socket while both workers remember its keys: refused
            # by both at once (the key cache is an hour here), and served again once it is enabled.
            for _ in range(ROUNDS // 2):
                assert (await call(http, "GET", f"{base}/v1/tenant", owner))[0] == 200
            await admin.call("tenant.disable", name="acme")
            refused = [(await call(http, "GET", f"{base}/v1/tenant", owner))[0] for _ in range(ROUNDS // 2)]
            assert set(refused) <= {401, 403} and refused, refused
            await admin.call("tenant.enable", name="acme")
            assert {(await call(http, "GET", f"{base}/v1/tenant", owner))[0] for _ in range(ROUNDS // 2)} == {200}

            # One key's rate limit over both workers: 1 a second, a bucket of 2 and one chunk of 1 per
            # worker (gateway/submission/ratelimit.py) allow 4 + the seconds taken; two separate
            # budgets would allow about twice that.
            slow = (await admin.call("apikey.add", tenant="acme", role="agent", rate_limit=1.0))["token"]
            began = time.monotonic()
            answers = await asyncio.gather(*(call(http, "GET", f"{base}/v1/tenant", slow) for _ in range(ROUNDS)))
            took = time.monotonic() - began
            allowed = sum(1 for s, _ in answers if s == 200)
            assert {s for s, _ in answers} <= {200, 429}
            assert 1 <= allowed <= 4 + int(took) + 1, (allowed, took)

            # A webhook test from a worker is POSTed by the parent's sender, whichever worker asked.
            with WebhookReceiver() as rx:
                status, body = await call(http, "POST", f"{base}/v1/webhooks", owner, {"url": rx.url("/hook"), "name": "hook"})
                assert status == 201, body
                tests = [await call(http, "POST", f"{base}/v1/webhooks/hook/test", owner) for _ in range(6)]
                assert all(s == 200 and b["ok"] and b["status"] == 200 for s, b in tests), tests
                assert sum(e["type"] == "webhook_test" for e in rx.events("/hook")) == 6

            # The daemon's /metrics: the workers' API counters summed.
            total = sum(served(gw).values())
            async with http.get(f"http://127.0.0.1:{await admin.listener_port('web')}/metrics") as resp:
                text = await resp.text()
            counted = sum(float(v) for v in re.findall(r"^gateway_api_requests_total\{.*\} (\S+)$", text, re.M))
            assert counted == total, (counted, total)

            # SIGHUP: both workers' API documents name the new public URL.
            write_config(gw.config_path, merge(settings, {"api": {"public_url": "https://api.example.test"}}))
            gw.reload()
            for _ in range(8):
                async with http.get(f"{base}/v1/openapi.json") as resp:
                    assert (await resp.json())["servers"][0]["url"] == "https://api.example.test"
            health = gw.cli_json("status")
            assert any(l["name"] == "api" and l["up"] for l in health["listeners"])
        # Off the loop (the CLI and the daemon's stop block): SIGTERM stops every worker, exit 0.
        assert await asyncio.to_thread(gw.stop) == 0
    finally:
        gw.close()


def test_the_api_bounds_are_the_daemons_divided_among_the_workers():
    api = ApiConfig(max_inflight=512, max_inflight_per_client=128, max_inflight_per_key=1)
    shared = share(Config(api=api), 2).api
    assert (shared.max_inflight, shared.max_inflight_per_client, shared.max_inflight_per_key) == (256, 64, 1)
    assert share(Config(api=api), 1).api == api
