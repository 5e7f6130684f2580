"""daemon.workers = 2: the daemon as a subprocess with two pipeline workers (gateway/pipeline.py) on one
store and one set of listening sockets, and (daemon.delivery_workers = auto) two delivery processes
beside them. Mail is accepted by both pipelines, delivered exactly once; a pipeline or a delivery
process SIGKILLed under load is restarted and loses nothing; the daemon SIGKILLed takes its workers
with it and a restart delivers everything; SIGHUP and wakes reach the workers; SIGTERM drains them;
status and /metrics show them all; acceptance goes on while every delivery process is stopped."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal

import aiohttp
import aiosmtplib

from gateway.store import Store
from gateway.submission import client_tls_context
from tests.support.daemon import merge
from tests.support.delivery import FAST_RETRIES, publish_mx
from tests.support.process import AdminHandle, GatewayProcess, write_config
from tests.support.sink import mail_sink
from tests.support.submission import message
from tests.support.tenancy import dns_overrides, sending_setup
from tests.support.nodes import QUEUE_ID, deliveries

SESSIONS = 4


def started(gw: GatewayProcess) -> GatewayProcess:
    """gw started, READY awaited longer than usual: each worker is an interpreter importing the gateway."""
    gw.start(wait_ready=False)
    try:
        gw.notify.wait_for(lambda m: m.get("READY") == "1", timeout=120, process=gw.proc)
    except BaseException:
        gw.close()
        raise AssertionError(f"gateway did not become ready; its stderr:\n{gw.stderr}") from None
    return gw


def overrides(dns_server, sink_port: int, extra: dict | None = None) -> dict:
    return merge(merge(dns_overrides(dns_server), {"daemon": {"workers": 2}, "delivery": {**FAST_RETRIES, "remote_port": sink_port}}),
                 extra or {})


async def submit_loop(port: int, setup: dict, accepted: list[tuple[str, str]], stop: asyncio.Event, n: int,
                      count: int | None = None) -> None:
    """Submit one recipient per message until ``stop`` (or ``count`` messages); record each 250's queue id.
    A session cut by a killed worker connects again: only what got no 250 is lost to the client."""
    i = 0
    while not stop.is_set() and (count is None or i < count):
        try:
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
            async with smtp:
                await smtp.login(setup["username"], setup["password"])
                while not stop.is_set() and (count is None or i < count):
                    i += 1
                    rcpt = f"rcpt{n}-{i}@dest.test"
                    _, reply = await smtp.sendmail(setup["sender"], [rcpt], message(sender=setup["sender"], to=rcpt, size=2048))
                    accepted.append((reply.rsplit(" ", 1)[1], rcpt))
        except (aiosmtplib.SMTPException, OSError):
            if stop.is_set():
                return
            await asyncio.sleep(0.05)  # a worker or the daemon is being restarted


async def metrics(web_port: int) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{web_port}/metrics") as resp:
            return await resp.text()


def delivered_count(exposition: str) -> float:
    return sum(float(v) for v in re.findall(r"^gateway_messages_delivered_total\{[^}]*\} (\S+)$", exposition, re.M))


def pipeline_rows(gw: GatewayProcess, kind: str = "pipeline") -> list[dict]:
    """The status rows of the pipelines (kind "pipeline") or of the delivery processes ("delivery")."""
    return [w for w in gw.cli_json("status")["workers"] if w["name"].startswith(f"{kind}-")]


async def test_two_workers_share_the_port_deliver_once_and_report(tmp_path, dns_server):
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        # No poll to fall back on: what is delivered at once was woken (a commit, or an admin action
        # the daemon passed on to the workers).
        settings = overrides(dns_server, sink.port, {"delivery": {"poll_interval": 60.0}, "processor": {"poll_interval": 60.0}})
        gw = started(GatewayProcess(tmp_path, settings))
        try:
            admin = AdminHandle(gw)
            setup = await sending_setup(admin, dns_server)
            port = await admin.listener_port("submission")
            rows, delivering = pipeline_rows(gw), pipeline_rows(gw, "delivery")
            assert [r["up"] for r in rows + delivering] == [True] * 4
            assert [r["role"] for r in rows + delivering] == ["accept", "accept", "deliver", "deliver"]
            pids = {r["pid"] for r in rows + delivering}
            assert len(pids) == 4 and gw.proc.pid not in pids

            accepted: list[tuple[str, str]] = []
            stop = asyncio.Event()
            await asyncio.gather(*(submit_loop(port, setup, accepted, stop, n, count=15) for n in range(SESSIONS)))
            wanted = set(accepted)
            await sink.wait_until(lambda s: wanted <= set(deliveries(s)), timeout=60)
            got = deliveries(sink)
            assert set(got) == wanted and max(got.values()) == 1  # every message once, none twice

            # Each worker's own status (a pipeline its sessions, a delivery process its deliveries), and
            # their counters summed in the daemon's /metrics.
            assert all("submission" in r["status"] and "delivery" not in r["status"] for r in pipeline_rows(gw))
            assert all("delivery" in r["status"] and "submission" not in r["status"] for r in pipeline_rows(gw, "delivery"))
            web = await admin.listener_port("web")
            text = await metrics(web)
            for pid in pids:
                assert re.search(rf'gateway_worker_pid{{worker="(pipeline|delivery)-\d"}} {pid}(\.0)?\n', text), text[:2000]
            assert f"gateway_messages_received_total {float(len(accepted))}" in text
            # The delivery processes' counters are in it too (each outcome counted once it committed).
            async with asyncio.timeout(20):
                while delivered_count(text) < len(accepted):
                    await asyncio.sleep(0.1)
                    text = await metrics(web)
            assert delivered_count(text) == len(accepted)
            # A pause over the admin socket holds new mail in every worker; the resume wakes them.
            await admin.call("pause", tenant="acme")
            held: list[tuple[str, str]] = []
            await submit_loop(port, setup, held, stop, 99, count=2)
            assert (await admin.call("queue.counts"))["held"] == 2
            await admin.call("resume", tenant="acme")
            await sink.wait_until(lambda s: set(held) <= set(deliveries(s)), timeout=20)

            # Mail spooled by a worker's MX wakes the daemon's processor (a reply to a return path).
            mx = await admin.listener_port("inbound")
            return_path = sink.messages[0].mail_from
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=mx, start_tls=False, timeout=10) as smtp:
                await smtp.sendmail("", [return_path], message(sender="mailer-daemon@dest.test", to=return_path))
            async with asyncio.timeout(20):
                while not re.search(r"^gateway_inbound_(processed|held)_total(\{[^}]*\})? [1-9]", await metrics(web), re.M):
                    await asyncio.sleep(0.1)

            # SIGHUP reaches every worker: new sessions on either one advertise the new SIZE.
            write_config(gw.config_path, merge(settings, {"submission": {"max_message_size": 123456}}))
            gw.reload()
            for _ in range(8):  # SO_REUSEPORT spreads them: both workers answer some
                async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=10) as smtp:
                    await smtp.ehlo()
                    assert smtp.esmtp_extensions["size"] == "123456"

            # Off the loop: the workers QUIT their pooled sessions to the sink, which runs on it.
            assert await asyncio.to_thread(gw.stop) == 0
        finally:
            gw.close()


# As tests/test_submission_crash.py: only a kill between the remote's 250 and the commit of that
# outcome can deliver a recipient twice.
DUPLICATE_RATE_LIMIT = 0.03


async def wait_for(predicate, timeout: float = 120.0, every: float = 0.2):
    """Ask ``predicate`` (blocking: the CLI) off the loop until it returns something true."""
    async with asyncio.timeout(timeout):
        while not (found := await asyncio.to_thread(predicate)):
            await asyncio.sleep(every)
    return found


def exited(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True   # gone (and reaped) before we looked
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def worker_exits(gw: GatewayProcess) -> dict[str, list]:
    exits: dict[str, list] = {}
    for line in gw.stderr.splitlines():
        if '"worker_stopped"' in line:
            entry = json.loads(line)
            exits.setdefault(entry["worker"], []).append(entry["returncode"])
    return exits


async def test_killed_worker_killed_daemon_and_sigterm_lose_nothing(tmp_path, dns_server):
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        # A drain under load on a busy machine: room to finish (what must hold is exit 0, not speed).
        settings = overrides(dns_server, sink.port, {"log": {"format": "json"}, "daemon": {"shutdown_timeout": 15.0}})
        gw = started(GatewayProcess(tmp_path, settings))
        accepted: list[tuple[str, str]] = []
        stop = asyncio.Event()
        clients: list[asyncio.Task] = []
        try:
            admin = AdminHandle(gw)
            setup = await sending_setup(admin, dns_server)
            port = await admin.listener_port("submission")
            victim, other = pipeline_rows(gw)
            courier, _ = pipeline_rows(gw, "delivery")

            # SIGKILL one pipeline and one delivery process while six sessions submit: the pipeline's
            # sessions break (their clients connect again), the daemon releases the delivery
            # process's claims and starts another in the place of each.
            clients = [asyncio.create_task(submit_loop(port, setup, accepted, stop, n)) for n in range(6)]
            await wait_for(lambda: len(accepted) >= 30)
            os.kill(victim["pid"], signal.SIGKILL)
            os.kill(courier["pid"], signal.SIGKILL)

            def restarted() -> list[dict]:
                rows = {r["name"]: r for kind in ("pipeline", "delivery") for r in pipeline_rows(gw, kind)}
                back = [rows[dead["name"]] for dead in (victim, courier)]
                return back if all(r["up"] and r["pid"] not in (victim["pid"], courier["pid"]) for r in back) else []
            back = await wait_for(restarted)
            assert [r["restarts"] for r in back] == [1, 1]
            # What it had claimed is delivered by now too: the daemon released its claims.
            before = set(accepted)
            await sink.wait_until(lambda s: before <= set(deliveries(s)), timeout=90)
            seen = len(accepted)
            await wait_for(lambda: len(accepted) >= seen + 30)

            # SIGKILL the daemon under the same load: its workers go with it (their control sockets
            # close, PR_SET_PDEATHSIG sends SIGTERM), each after draining what it had under way for at
            # most daemon.shutdown_timeout (a delivery process at delivery.nice does so slowly on a
            # loaded machine), then flushing its writer.
            alive = [r["pid"] for kind in ("pipeline", "delivery") for r in pipeline_rows(gw, kind)]
            gw.proc.kill()
            gw.proc.wait(10)
            killed = asyncio.get_running_loop().time()
            assert len(alive) == 4
            for pid in alive:
                assert await asyncio.to_thread(exited, pid, settings["daemon"]["shutdown_timeout"] + 15), \
                    f"worker {pid} outlived the daemon"
            print(f"the daemon's workers all exited {asyncio.get_running_loop().time() - killed:.1f}s after it was killed")
            stop.set()
            await asyncio.gather(*clients)
            gw.close()

            # A new daemon on the same state delivers every message that had its 250.
            gw = started(GatewayProcess(tmp_path, settings, state_dir=gw.state_dir, name="gw-2"))
            wanted = set(accepted)
            await sink.wait_until(lambda s: wanted <= set(deliveries(s)), timeout=90)

            # SIGTERM under load drains every worker: each exits 0, then the daemon does, and every
            # message with a 250 is delivered or still queued for the next start.
            port = await AdminHandle(gw).listener_port("submission")
            stop = asyncio.Event()
            clients = [asyncio.create_task(submit_loop(port, setup, accepted, stop, n + 10)) for n in range(6)]
            seen = len(accepted)
            await wait_for(lambda: len(accepted) >= seen + 30)
            assert await asyncio.to_thread(gw.stop) == 0
            assert worker_exits(gw) == {"pipeline-1": [0], "pipeline-2": [0], "delivery-1": [0], "delivery-2": [0]}
            stop.set()
            await asyncio.gather(*clients)
            got = deliveries(sink)
            store = await Store.open(gw.state_dir / "gateway.db")
            try:
                for qid, rcpt in set(accepted) - set(got):
                    shown = await store.queue.show(qid)
                    [state] = [r["state"] for r in shown["recipients"] if r["rcpt"] == rcpt]
                    assert state in ("pending", "deferred"), shown  # an attempt the drain cut short is deferred
            finally:
                await store.close()
            duplicates = sum(n - 1 for n in got.values())
            print(f"workers crash test: {len(got)} recipients delivered, {duplicates} duplicates")
            assert duplicates / len(got) <= DUPLICATE_RATE_LIMIT, got.most_common(5)
        finally:
            stop.set()
            await asyncio.gather(*clients)
            gw.close()


RATE = 12  # messages a minute for the use case below


async def test_a_use_cases_rate_limit_is_one_budget_across_workers(tmp_path, dns_server):
    """A use case limited to RATE a minute, submitting through sessions held open on *both* workers:
    together they accept about RATE (plus each worker's chunk and the refill), not RATE each."""
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        # The layout without delivery processes (each pipeline delivers too): started here, where
        # only submission matters.
        gw = started(GatewayProcess(tmp_path, overrides(dns_server, sink.port, {"daemon": {"delivery_workers": 0}})))
        sessions: list[aiosmtplib.SMTP] = []
        try:
            admin = AdminHandle(gw)
            setup = await sending_setup(admin, dns_server)
            await admin.call("usecase.update", tenant=setup["tenant"], name=setup["usecase"], rate_limit=RATE)
            port = await admin.listener_port("submission")

            def per_worker() -> list[int]:
                return [(r.get("status") or {}).get("submission", {}).get("connections", 0) for r in pipeline_rows(gw)]

            # Sessions until each worker holds at least one (SO_REUSEPORT spreads them by address and port).
            while min(per_worker()) == 0:
                assert len(sessions) < 24, f"the sessions never reached both workers: {per_worker()}"
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls_context(), timeout=20)
                await smtp.connect()
                await smtp.login(setup["username"], setup["password"])
                sessions.append(smtp)
            spread = per_worker()
            assert all("delivery" in (r.get("status") or {}) for r in pipeline_rows(gw))  # each delivers too

            began = asyncio.get_running_loop().time()
            accepted, refused = 0, 0
            for round_ in range(RATE):  # every session tries once a round, until every one is refused
                answers = await asyncio.gather(*(s.sendmail(setup["sender"], [f"r{round_}-{i}@dest.test"],
                                                            message(sender=setup["sender"], to="r@dest.test"))
                                                 for i, s in enumerate(sessions)), return_exceptions=True)
                for answer in answers:
                    if isinstance(answer, aiosmtplib.SMTPSenderRefused):
                        assert answer.code == 451 and "4.7.0" in answer.message, answer
                        refused += 1
                    elif isinstance(answer, BaseException):
                        raise answer
                    else:
                        accepted += 1
                if all(isinstance(a, aiosmtplib.SMTPSenderRefused) for a in answers):
                    break
            elapsed = asyncio.get_running_loop().time() - began
            # The README's bound: rate x period + depth + one chunk per process (a chunk here: 1 token).
            bound = RATE + int(RATE * elapsed / 60) + 1 + 2
            print(f"{len(sessions)} sessions over the workers {spread}: {accepted} accepted, {refused} refused in {elapsed:.1f}s")
            assert RATE <= accepted <= bound, (accepted, bound)
            assert refused > 0
        finally:
            for smtp in sessions:
                smtp.close()
            await asyncio.to_thread(gw.stop)
            gw.close()


async def test_acceptance_goes_on_while_every_delivery_process_is_stopped(tmp_path, dns_server):
    """Acceptance does not wait for delivery: with the one delivery process SIGSTOPped (as if the
    kernel gave it no CPU at all), a burst on both pipelines still gets every 250, and nothing of it
    is delivered; SIGCONT, and the wakes the pipelines sent meanwhile deliver all of it, once. With the
    pipelines delivering themselves (delivery_workers = 0) there is no process to stop that leaves
    acceptance running."""
    publish_mx(dns_server, "dest.test")
    async with mail_sink() as sink:
        # No poll: the burst is claimed because the pipelines' wakes reach the delivery process.
        settings = overrides(dns_server, sink.port, {"daemon": {"delivery_workers": 1}, "delivery": {"poll_interval": 60.0}})
        gw = started(GatewayProcess(tmp_path, settings))
        try:
            admin = AdminHandle(gw)
            setup = await sending_setup(admin, dns_server)
            port = await admin.listener_port("submission")
            stop = asyncio.Event()
            first: list[tuple[str, str]] = []
            await submit_loop(port, setup, first, stop, 0, count=1)
            await sink.wait_until(lambda s: set(first) <= set(deliveries(s)), timeout=30)
            # Stopped once idle (its outcome recorded), so no write of its is under way.
            [courier] = await wait_for(lambda: [r for r in pipeline_rows(gw, "delivery") if r["status"]["delivery"]["in_flight"] == 0])
            assert courier["role"] == "deliver"
            os.kill(courier["pid"], signal.SIGSTOP)
            try:
                burst: list[tuple[str, str]] = []
                async with asyncio.timeout(60):
                    await asyncio.gather(*(submit_loop(port, setup, burst, stop, n + 1, count=10) for n in range(SESSIONS)))
                assert len(burst) == 10 * SESSIONS
                assert not set(burst) & set(deliveries(sink))  # nothing of it went out: delivery was stopped
            finally:
                os.kill(courier["pid"], signal.SIGCONT)
            await sink.wait_until(lambda s: set(burst) <= set(deliveries(s)), timeout=60)
            got = deliveries(sink)
            assert max(got.values()) == 1 and set(got) == set(first) | set(burst)
            await asyncio.to_thread(gw.stop)
        finally:
            gw.close()


def test_child_processes_import_the_installed_gateway_not_the_current_directorys(tmp_path):
    """Started in a directory holding a ``gateway`` package (a checkout of another version, say), the
    daemon's child processes run the gateway the daemon runs: ``python -m`` would put the current
    directory first on their import path."""
    other = tmp_path / "elsewhere"
    (other / "gateway").mkdir(parents=True)
    (other / "gateway" / "__init__.py").write_text('raise SystemExit("the gateway of the current directory")\n')
    gw = GatewayProcess(tmp_path, {"web": {"process": True}}, cwd=other)
    try:
        started(gw)  # the web worker is a child process: it must serve
        assert "current directory" not in gw.stderr
    finally:
        gw.close()
