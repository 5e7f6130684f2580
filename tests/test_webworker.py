"""The web worker (web.process = true): the public web server in a child process of the daemon.

In-process daemons (tests/support/daemon.py) with a real worker process for what the daemon's own
objects show (a SIGKILLed worker restarted under load, /metrics of both processes); `gateway run`
as a real subprocess (tests/support/process.py) for the signals: SIGHUP reaches the worker, SIGTERM
stops both, a SIGKILLed daemon takes its worker with it. Process exits are awaited on pidfds.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal

import aiohttp
import pytest

from gateway.unsubscribe import tokens
from gateway.unsubscribe.links import Keyring
from gateway.workers import WebWorker
from tests.support.daemon import running_daemon
from tests.support.delivery import delivering_daemon, publish_mx
from tests.support.process import GatewayProcess
from tests.support.sink import mail_sink
from tests.support.submission import make_usecase
from tests.test_unsubscribe_e2e import PUBLIC, local_url, marketing_mail, token_of

WORKER = {"web": {"process": True}}


def worker_of(d) -> WebWorker:
    return next(c for c in d.daemon.components if isinstance(c, WebWorker))


def wait_exit(pid: int, timeout: float = 20.0) -> bool:
    """True once process ``pid`` has exited (its pidfd turns readable), False after ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def samples(text: str) -> dict[str, float]:
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in text.splitlines() if line and not line.startswith("#")}


async def test_a_worker_killed_under_load_is_restarted_and_no_acknowledged_unsubscribe_is_lost(tmp_path):
    async with running_daemon(tmp_path, WORKER) as d:
        ctx = await make_usecase(d.store)
        key_id, secret = await Keyring(d.store).signing()
        addresses = [f"reader{i}@example.org" for i in range(120)]
        links = {a: local_url(d, tokens.mint(tokens.Claim(key_id, ctx["tenant_id"], "usecase", ctx["usecase_id"],
                                                          ctx["usecase_id"], 0, a), secret)) for a in addresses}
        worker = worker_of(d)
        first_pid = worker.proc.pid
        acknowledged: list[str] = []
        errors = 0
        pending = asyncio.Queue()
        for a in addresses:
            pending.put_nowait(a)

        async def client(http: aiohttp.ClientSession) -> None:
            nonlocal errors
            while not pending.empty():
                address = pending.get_nowait()
                while True:  # a mailbox provider retries a failed one-click; so does this client
                    try:
                        async with http.post(links[address], data={"List-Unsubscribe": "One-Click"}) as r:
                            assert r.status == 200, await r.text()
                            break
                    except aiohttp.ClientError:
                        errors += 1
                acknowledged.append(address)
                if len(acknowledged) == 30:
                    os.kill(worker.proc.pid, signal.SIGKILL)  # mid-load: 8 clients have requests in flight

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await asyncio.gather(*(client(http) for _ in range(8)))
        assert sorted(acknowledged) == sorted(addresses)
        # Every address whose POST was answered 200 is suppressed: nothing acknowledged was lost.
        for a in addresses:
            entry = await d.store.suppressions.find(ctx["tenant_id"], a, [("usecase", ctx["usecase_id"])])
            assert entry is not None and entry["reason"] == "unsubscribe", a
        await asyncio.wait_for(worker.serving.wait(), 30)
        [shown] = (await d.call("status"))["workers"]
        assert shown["restarts"] == 1 and shown["up"] and shown["pid"] not in (None, first_pid), shown
        assert shown["last_exit"] == -signal.SIGKILL
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{d.address('web')}/metrics") as r:
                figures = samples(await r.text())
        assert figures['gateway_worker_restarts_total{worker="web"}'] == 1
        assert figures['gateway_worker_up{worker="web"}'] == 1
        # The killed worker's counts died with it; the new one counted what it served: all but the
        # 30 before the kill and the few (8 clients) answered between the 30th and the SIGKILL.
        assert figures['gateway_http_requests_total{path="/u",status="200"}'] >= len(addresses) - 30 - 8


async def test_a_dead_worker_makes_health_fail_and_withholds_the_watchdog_until_it_is_back(tmp_path):
    async with running_daemon(tmp_path, WORKER) as d:
        worker = worker_of(d)
        assert d.daemon._processes_alive()
        proc = worker.proc
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()  # the restart comes after a backoff (0.1 s) and a start (~1 s)
        assert not d.daemon._processes_alive()
        health = await d.call("daemon.health")
        assert health["ok"] is False and "web: the worker process is not running (being restarted)" in health["problems"]
        await asyncio.wait_for(worker.serving.wait(), 30)
        assert d.daemon._processes_alive()
        assert (await d.call("daemon.health"))["ok"] is True


async def test_metrics_cover_both_processes(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, {**WORKER, "web": {"process": True, "public_url": PUBLIC}},
                                     kind="marketing", usecase="news") as (d, setup):
            [data] = (await marketing_mail(d, setup, sink, ["bob@dest.test"])).values()
            async with aiohttp.ClientSession() as http:
                async with http.post(local_url(d, token_of(data)), data={"List-Unsubscribe": "One-Click"}) as r:
                    assert r.status == 200
                async with http.get(f"http://{d.address('web')}/metrics") as r:
                    figures = samples(await r.text())
    # The daemon's (delivery ran there) and the worker's (it served the POST), in one scrape.
    assert sum(v for k, v in figures.items() if k.startswith("gateway_messages_delivered_total")) == 1
    assert figures['gateway_http_requests_total{path="/u",status="200"}'] == 1
    # The worker's own commit (the suppression) is added to the daemon's.
    assert figures["gateway_store_writes_total"] >= figures["gateway_store_commits_total"] >= 2


def log_lines(gw: GatewayProcess) -> list[dict]:
    out = []
    for line in gw.stderr.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_sighup_reaches_the_worker_and_sigterm_stops_both(tmp_path):
    overrides = {**WORKER, "log": {"format": "json"}}
    with GatewayProcess(tmp_path, overrides) as gw:
        [worker] = gw.cli_json("status")["workers"]
        assert worker["up"] and worker["pid"] != gw.proc.pid
        # A change the worker must apply: its unsubscribe pages check web.public_url on every reload.
        text = gw.config_path.read_text().replace("[web]\n", '[web]\npublic_url = "http://mail.example.net"\n', 1)
        gw.config_path.write_text(text)
        gw.reload()
        said = [l for l in log_lines(gw) if l.get("event") == "unsubscribe_url_not_https" and l.get("process") == "web-worker"]
        assert [l["public_url"] for l in said] == ["http://mail.example.net"], log_lines(gw)[-10:]
        [again] = gw.cli_json("status")["workers"]
        assert again["pid"] == worker["pid"] and again["restarts"] == 0  # applied, not restarted
        assert "web" in gw.cli("status").stdout.split("workers", 1)[1]
        fd = os.pidfd_open(worker["pid"])
        try:
            assert gw.stop() == 0
            assert select.select([fd], [], [], 0)[0], "the worker outlived the daemon"
        finally:
            os.close(fd)
    stopped = [l for l in log_lines(gw) if l.get("event") == "worker_stopped" and l.get("worker") == "web"]
    assert [l["returncode"] for l in stopped] == [0]


def test_a_killed_daemon_takes_its_worker_with_it_and_starts_again(tmp_path):
    with GatewayProcess(tmp_path, WORKER) as gw:
        [worker] = gw.cli_json("status")["workers"]
        gw.proc.kill()
        gw.proc.wait(10)
        assert wait_exit(worker["pid"]), "the worker outlived its daemon"
    # Nothing of the old pair holds the state directory or the admin socket: a new daemon starts on it.
    with GatewayProcess(tmp_path, WORKER) as gw:
        assert gw.cli_json("status")["workers"][0]["up"]
