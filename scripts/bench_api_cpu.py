#!/usr/bin/env python3
"""The HTTP API's daemon CPU per request, route by route: the framework's own cost.

    .venv/bin/python scripts/bench_api_cpu.py [--connections 10] [--duration 5] [--only tenant,status,send,openapi]

Starts `gateway run` as bench_api.py does (a subprocess, uvloop; its setup: a tenant with a verified
domain, mail paused), sends a few messages, then loads each route with `wrk` (one C thread, keep-alive
connections) and prints requests/s and the daemon's CPU per request (user+system of all its threads
over the run / requests answered). On a shared machine the latency is other processes' turns; the
CPU per request is the figure to compare before/after a change.

    GET /v1/openapi.json      no key: aiohttp and the listener alone
    GET /v1/tenant            an owner key: the key check, the pipeline, one store read
    GET /v1/messages/{id}     a status read (a small store: the pipeline's share, not the index's depth)
    POST /v1/messages         a 4 KB JSON send, committed (as bench_api.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.dns import DnsServer  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_api", ROOT / "scripts" / "bench_api.py")
api = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(api)
sub = api.sub

GIL: list[str] = []
GET_LUA = """
wrk.headers["Authorization"] = "Bearer %(token)s"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, ' ..
    '"non2xx": %%d, "socket_errors": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def post(url: str, token: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def measure(pid: int, url: str, script: Path, connections: int, duration: float, profile: str = "") -> tuple[float, float, dict]:
    api.wrk(url, script, connections, 1)   # warm
    spy = None
    if profile:
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-o", profile, "--format", "raw",
                                "--pid", str(pid), "--rate", "250", "--nonblocking", "--threads", *GIL],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cpu0 = api.cpu_seconds(pid)
    result = api.wrk(url, script, connections, duration)
    cpu = api.cpu_seconds(pid) - cpu0
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
    n = max(result["requests"], 1)
    return result["requests"] / (result["duration_us"] / 1e6), cpu / n * 1e6, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs a route; the least CPU per request is printed (the others are other processes' noise)")
    parser.add_argument("--only", default="openapi,tenant,status,send")
    parser.add_argument("--gil", action="store_true", help="profile only the thread holding the GIL (Python's CPU, not waits)")
    parser.add_argument("--profile", metavar="TXT", help="py-spy collapsed stacks of the daemon over the (first) route's run")
    args = parser.parse_args()
    wanted = args.only.split(",")
    if args.gil:
        GIL.append("--gil")
    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        work = Path(tmp)
        port, tls_port, api_port = sub.free_port(), sub.free_port(), sub.free_port()
        sub.write_config(work / "config.toml", dns, port, tls_port, f'[api]\nlisten = "127.0.0.1:{api_port}"\nrate_limit = 1000000.0\n')
        proc, sock = sub.start_daemon(work)
        rows = []
        try:
            sub.setup(sock, dns)
            sender = sub.call(sock, "apikey.add", tenant="bench", role="sender", usecase="load")["token"]
            owner = sub.call(sock, "apikey.add", tenant="bench", role="owner")["token"]
            sub.call(sock, "pause")
            base = f"http://127.0.0.1:{api_port}"
            body = work / "body.json"
            body.write_bytes(api.request_body("app@bench.test", 4096))
            queue_id = post(f"{base}/v1/messages", sender, body.read_bytes())["queue_id"]
            get_owner = work / "get.lua"
            get_owner.write_text(GET_LUA % {"token": owner})
            send = work / "send.lua"
            send.write_text(api.LUA % {"token": sender, "body": body})
            plan = {"openapi": ("GET /v1/openapi.json", f"{base}/v1/openapi.json", get_owner),
                    "tenant": ("GET /v1/tenant", f"{base}/v1/tenant", get_owner),
                    "status": ("GET /v1/messages/{queue_id}", f"{base}/v1/messages/{queue_id}", get_owner),
                    "send": ("POST /v1/messages (4 KB JSON)", f"{base}/v1/messages", send)}
            for name in wanted:
                label, url, script = plan[name]
                profile, args.profile = args.profile, ""
                runs = [measure(proc.pid, url, script, args.connections, args.duration, profile or "")]
                runs += [measure(proc.pid, url, script, args.connections, args.duration) for _ in range(args.repeat - 1)]
                rate, cpu_us, result = min(runs, key=lambda r: r[1])
                rows.append((label, rate, cpu_us, result))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    import os
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; wrk -t1 -c{args.connections}, {args.duration:g} s a route")
    for label, rate, cpu_us, result in rows:
        print(f"{label:32s} {rate:7.0f} req/s  daemon CPU {cpu_us:6.0f} us/request  p99 {result['p99_us'] / 1000:.1f} ms"
              f"  non-2xx {result['non2xx']}")


if __name__ == "__main__":
    main()
