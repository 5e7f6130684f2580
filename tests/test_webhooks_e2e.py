"""End to end: `gateway run` as a subprocess, webhooks added with the real CLI, SIGKILL while a POST
is in flight, restart: every event arrives at least once and in order. `gateway events list|tail`
through the real CLI, tail --follow ended by Ctrl-C and by its reader going away."""

from __future__ import annotations

import json
import re
import queue
import signal
import subprocess
import threading
import time

from gateway.admin.client import AdminClient
from gateway.webhooks.signing import HEADER, verify
from tests.support.process import GATEWAY, GatewayProcess, gateway_env
from tests.support.webhooks import WebhookReceiver

CONFIG = {"webhooks": {"poll_interval": 0.02, "backoff_base": 0.05, "backoff_max": 0.2, "batch_max": 4}}


def make_events(gw: GatewayProcess, n: int, start: int = 0) -> None:
    with AdminClient(gw.socket_path, timeout=30) as client:
        for i in range(start, start + n):
            client.call("tenant.update", name="acme", display_name=f"Acme {i}")


class Lines:
    """The CLI's stdout lines, read by a thread (a pipe's buffering hides lines from select)."""

    def __init__(self, proc: subprocess.Popen):
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in proc.stdout], daemon=True).start()

    def next(self, timeout: float = 10.0) -> str:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no line from the CLI in time") from None


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f is not None and not f.closed:
            try:
                f.close()
            except OSError:
                pass


def test_order_and_at_least_once_across_sigkill(tmp_path):
    with WebhookReceiver() as rx:
        gw = GatewayProcess(tmp_path, CONFIG).start()
        try:
            gw.cli("tenant", "add", "acme")
            out = gw.cli("webhook", "add", "acme", rx.url("/a"), "--events", "tenant_updated", "--name", "a").stdout
            secret = re.search(r"(whsec_\S+)", out).group(1)
            gw.cli("webhook", "add", "acme", rx.url("/b"), "--events", "tenant_updated", "--name", "b")
            assert secret not in gw.cli("webhook", "show", "acme", "a").stdout
            rx.delay("/a", 0.02)
            make_events(gw, 30)
            rx.wait(lambda posts: sum(p["path"] == "/a" and p["status"] == 200 for p in posts) >= 2)
            rx.hang("/a")   # the next POST to /a is in flight, unanswered, when the daemon dies
            rx.wait(lambda posts: any(p["path"] == "/a" and p["status"] == 0 for p in posts))
            gw.proc.send_signal(signal.SIGKILL)
            gw.proc.wait(10)
            rx.hang("/a", False)
            in_flight = [json.loads(p["body"]) for p in rx.of("/a", ok_only=False) if p["status"] == 0][0]["events"]
            gw.close()
            first_log = gw.stderr
            gw = GatewayProcess(tmp_path, CONFIG).start()
            make_events(gw, 10, start=30)
            with AdminClient(gw.socket_path) as client:
                ids = [e["id"] for e in client.call("events.list", type="tenant_updated", limit=1000)]
            assert len(ids) == 40
            for path in ("/a", "/b"):
                rx.wait(lambda posts, path=path: set(ids) <= {e["id"] for e in rx.events(path)}, timeout=30)
                got = [e["id"] for e in rx.events(path)]
                # In order: each POST's events ascend, and the first arrivals of the ids ascend; a
                # batch may come again after the restart (at-least-once), never one out of order.
                first = list(dict.fromkeys(got))
                assert first == sorted(first) == ids, path
                for p in rx.of(path):
                    batch = [e["id"] for e in json.loads(p["body"])["events"]]
                    assert batch == sorted(batch)
            # What was in flight at the kill arrived after the restart.
            assert {e["id"] for e in in_flight} <= {e["id"] for e in rx.events("/a")}
            for p in rx.of("/a"):
                assert verify(secret, p["headers"][HEADER], p["body"], now=time.time())
            listed = gw.cli("webhook", "list", "--tenant", "acme").stdout
            assert re.search(r"acme\s+a\s+http://127\.0\.0\.1:\d+/a\s+tenant_updated\s+-\s+enabled", listed), listed
            assert re.match(r"http://127\.0\.0\.1:\d+/a: HTTP 200 in \d+\.\d ms", gw.cli("webhook", "test", "acme", "a").stdout)
            rx.script("/b", [500])
            failed = gw.cli("webhook", "test", "acme", "b", check=1)
            assert "HTTP 500" in failed.stdout and "did not answer 2xx" in failed.stderr
            assert "disabled" in gw.cli("webhook", "disable", "acme", "b").stdout
            assert "disabled (operator)" in gw.cli("webhook", "show", "acme", "b").stdout
            assert "0 undelivered" in gw.cli("webhook", "delete", "acme", "b").stdout
            assert gw.cli("webhook", "show", "acme", "b", check=1).stderr.startswith("gateway: tenant 'acme' has no webhook")
            assert gw.stop() == 0
            assert "webhook_added" in first_log and secret not in first_log + gw.stderr   # never in the daemon's log
        finally:
            gw.close()


def test_events_list_and_tail_through_the_cli(tmp_path):
    with GatewayProcess(tmp_path) as gw:
        gw.cli("tenant", "add", "acme")
        gw.cli("tenant", "add", "other")
        make_events(gw, 3)
        rows = gw.cli_json("events", "list", "--tenant", "acme", "--type", "tenant_updated")
        assert [r["data"]["display_name"] for r in rows] == ["Acme 0", "Acme 1", "Acme 2"]
        assert {r["tenant"] for r in rows} == {"acme"}
        assert [r["kind"] for r in gw.cli_json("events", "list", "--limit", "1")] == ["tenant_updated"]
        assert len(gw.cli_json("events", "list", "--since", "1h")) == 5
        assert gw.cli_json("events", "list", "--since", "2099-01-01T00:00") == []
        human = gw.cli("events", "list", "--tenant", "acme").stdout.splitlines()
        assert human[0].split() == ["ID", "TIME", "TENANT", "TYPE", "SUBJECT", "DETAILS"]
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+acme\s+tenant_updated\s+acme\s+display_name=Acme 2", human[-1])
        assert "expected e.g." in gw.cli("events", "list", "--since", "yesterday", check=2).stderr

        cmd = [GATEWAY, "--socket", str(gw.socket_path), "events", "tail", "--follow", "--tenant", "acme",
               "--type", "tenant_updated", "-n", "1", "--interval", "0.05"]
        env = gateway_env()
        # Ctrl-C ends it quietly.
        proc = subprocess.Popen(cmd + ["--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            lines = Lines(proc)
            assert json.loads(lines.next())["data"]["display_name"] == "Acme 2"
            make_events(gw, 2, start=3)
            assert [json.loads(lines.next())["data"]["display_name"] for _ in range(2)] == ["Acme 3", "Acme 4"]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
            assert "Traceback" not in proc.stderr.read()
        finally:
            stop(proc)
        # Its reader goes away (`| head -1`): it stops at the next line, without a traceback.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            assert b"display_name=Acme 4" in proc.stdout.readline()
            proc.stdout.close()
            make_events(gw, 3, start=5)
            assert proc.wait(10) == 0
            assert b"Traceback" not in proc.stderr.read()
        finally:
            stop(proc)
