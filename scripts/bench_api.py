#!/usr/bin/env python3
"""POST /v1/messages: durable msg/s, latency and daemon CPU per message over the HTTP API.

    .venv/bin/python scripts/bench_api.py [--connections 50] [--duration 10] [--size 4096] [--workers N] [--profile out.svg]

Starts `gateway run` as users do (a subprocess, uvloop), sets up a tenant with a domain verified
against a local DNS server (the submission benchmark's setup), makes a sender key and pauses all
mail (accepted and committed, held, not delivered: acceptance alone is measured). The load comes
from `wrk` (Debian package wrk; a C client, one thread, so it does not eat the daemon's core), with
--connections keep-alive connections each POSTing one JSON message of --size bytes (text body)
after another. Every 202 means the message is committed (synchronous=FULL, group commit). Prints
msg/s, p50/p99/max latency (wrk's), non-202 answers, daemon CPU per message (user+system of all
its threads over the run / messages queued; with --workers N, of its pipeline worker processes too,
which serve the API then). Target: >= 1,500 msg/s, p99 < 30 ms with 50 clients.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import http.client
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dns import DnsServer  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_submission", ROOT / "scripts" / "bench_submission.py")
sub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sub)   # its daemon start, admin calls, domain setup

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"non2xx": %%d, "socket_errors": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def cpu_seconds(pid: int) -> float:
    """User + system seconds of ``pid`` and its living child processes (the pipeline workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue   # gone meanwhile
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Until the API answers (with --workers the parent binds its sockets and the admin socket answers
    seconds before the workers, interpreters importing the gateway, serve them)."""
    deadline = time.time() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v1/openapi.json")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"bench_api: the API did not answer (daemon exit {proc.poll()})") from None
            time.sleep(0.1)


def request_body(sender: str, size: int) -> bytes:
    """A JSON send request of about ``size`` bytes: one recipient, a subject, a text body."""
    line = "The quick brown fox jumps over the lazy dog; a receipt line with a number 0123456789.\n"
    shell = {"from": {"address": sender, "name": "Bench App"}, "to": ["someone@example.com"], "subject": "Your receipt", "text": ""}
    room = max(0, size - len(json.dumps(shell)))
    shell["text"] = (line * (room // len(line) + 1))[:room]
    return json.dumps(shell).encode()


def wrk(url: str, script: Path, connections: int, duration: float) -> dict:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--size", type=int, default=4096, help="bytes of the JSON request")
    parser.add_argument("--toml", default="", help='more configuration, e.g. "[daemon]\\ngil_switch_interval = 0.0005"')
    parser.add_argument("--workers", type=int, default=1, help="daemon.workers (>= 2: the API is served by every pipeline worker)")
    parser.add_argument("--profile", metavar="SVG", help="record the daemon with py-spy: a flame graph (.svg) or collapsed stacks (.txt)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench_api: needs wrk (apt-get install wrk)")

    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        work = Path(tmp)
        port, tls_port, api_port = sub.free_port(), sub.free_port(), sub.free_port()
        # The per-key request limit is the API's, not what is measured here.
        sub.write_config(work / "config.toml", dns, port, tls_port, f'[api]\nlisten = "127.0.0.1:{api_port}"\nrate_limit = 1000000.0\n'
                         + (f"[daemon]\nworkers = {args.workers}\n" if args.workers != 1 else "") + args.toml.replace("\\n", "\n") + "\n")
        proc, sock = sub.start_daemon(work)
        spy = None
        try:
            try:
                sub.setup(sock, dns)
            except Exception:
                print((work / "daemon.log").read_text()[-3000:], file=sys.stderr)
                raise
            try:
                wait_listening(api_port, proc)
            except SystemExit:
                print((work / "daemon.log").read_text()[-3000:], file=sys.stderr)
                raise
            token = sub.call(sock, "apikey.add", tenant="bench", role="sender", usecase="load")["token"]
            sub.call(sock, "pause")  # committed and held, not delivered
            body = work / "body.json"
            body.write_bytes(request_body("app@bench.test", args.size))
            script = work / "send.lua"
            script.write_text(LUA % {"token": token, "body": body})
            url = f"http://127.0.0.1:{api_port}/v1/messages"
            if args.warmup:
                wrk(url, script, args.connections, args.warmup)
            load = os.getloadavg()
            before_msgs = sub.call(sock, "queue.counts")["messages"]
            if args.profile:
                fmt = ["--format", "raw"] if args.profile.endswith(".txt") else []
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o", args.profile, *fmt,
                                        "--pid", str(proc.pid), "--rate", "200", "--nonblocking", "--threads", "--subprocesses"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            cpu0 = cpu_seconds(proc.pid)
            try:
                result = wrk(url, script, args.connections, args.duration)
            except subprocess.CalledProcessError as exc:
                raise SystemExit(f"bench_api: wrk failed: {exc.stdout}{exc.stderr}\n" + (work / "daemon.log").read_text()[-3000:]) from None
            if result["socket_errors"]:
                print((work / "daemon.log").read_text()[-3000:], file=sys.stderr)
            cpu = cpu_seconds(proc.pid) - cpu0
            queued = sub.call(sock, "queue.counts")["messages"] - before_msgs
            rss = sub.rss_mb(proc.pid)
        finally:
            if spy is not None:
                spy.send_signal(2)
                spy.wait(timeout=60)
            proc.terminate()
            proc.wait(timeout=60)
    seconds = result["duration_us"] / 1e6
    rate = result["requests"] / seconds
    p50, p99 = result["p50_us"] / 1000, result["p99_us"] / 1000
    print(f"workers     {args.workers}")
    print(f"connections {args.connections}  requests {result['requests']} x {args.size} B JSON  ({seconds:.1f} s, wrk -t1)")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  cores: {os.cpu_count()}")
    print(f"throughput  {rate:8.0f} msg/s   queued {queued}   non-202 {result['non2xx']}   socket errors {result['socket_errors']}")
    print(f"latency     p50 {p50:.1f} ms   p99 {p99:.1f} ms   max {result['max_us'] / 1000:.1f} ms  (request -> 202, wrk)")
    print(f"daemon CPU  {cpu / max(queued, 1) * 1e6:.0f} us per message ({cpu:.1f} s over the run; RSS {rss:.0f} MB)")
    ok = rate >= 1500 and p99 < 30 and result["non2xx"] == 0
    print("targets     " + ("met" if ok else "NOT met") + " (>= 1,500 msg/s, p99 < 30 ms, every answer 202)")


if __name__ == "__main__":
    main()
