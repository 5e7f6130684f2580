#!/usr/bin/env python3
"""One-click unsubscribe under load: POST /u/TOKEN latency at a fixed request rate while submission runs.

    .venv/bin/python scripts/bench_unsubscribe.py [--rate 500] [--seconds 10] [--submit-sessions 8] [--submit-rate 300]
                                                  [--web-process both|true|false]

Starts `gateway run` as users do (a subprocess, uvloop), sets up a tenant as bench_submission.py does
(domain verified against a local DNS server, a transactional use case and a credential) plus a
marketing use case, and takes a global pause (mail is committed and held: the same durable writes,
no delivery). Tokens are minted here with the daemon's key (read from its database, read-only) for
distinct addresses, as delivery would put them in List-Unsubscribe.

Then, at once: a separate process submits mail over STARTTLS + AUTH (--submit-sessions sessions,
--submit-rate msg/s in all; 0 = as fast as they can), and this process POSTs the RFC 8058 body
(List-Unsubscribe=One-Click) with aiohttp at --rate requests/s, open loop: request i is due at
start + i/rate and its latency runs from that moment to the full response, so a stalled server
cannot hide behind a slower client (no coordinated omission). Every POST is a new suppression (one
durable write). Prints p50/p99/max and what submission achieved beside it. Target: p99 < 20 ms at 500/s.

--web-process both (the default) runs it twice, one daemon after the other in the same run: with the
web server inside the daemon (web.process = false), then in its own worker process (true). The
daemon's CPU counts its worker's too.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_submission import call, free_port, make_payload, logged_in, pct, setup, start_daemon, write_config  # noqa: E402
from gateway.unsubscribe import tokens  # noqa: E402
from tests.support.dns import DnsServer  # noqa: E402


def submission_load(port: int, cred: dict, sessions: int, rate: float, seconds: float, out) -> None:
    """Child process: ``sessions`` logged-in sessions sending 4 KiB messages for ``seconds``."""
    import uvloop

    async def run() -> tuple[int, float]:
        payload = make_payload(4096)
        sent = 0
        began = time.perf_counter()
        stop = began + seconds

        async def one(k: int) -> None:
            nonlocal sent
            c, writer = await logged_in(port, cred["username"], cred["password"], False)
            i = 0
            while time.perf_counter() < stop:
                if rate:
                    due = began + (i * sessions + k) / rate
                    if due > time.perf_counter():
                        await asyncio.sleep(due - time.perf_counter())
                await c.cmd(b"MAIL FROM:<app@bench.test>", b"250")
                await c.cmd(b"RCPT TO:<rcpt%d@example.org>" % i, b"250")
                await c.cmd(b"DATA", b"354")
                writer.write(payload)
                await c.cmd(b".", b"250")
                sent += 1
                i += 1
            await c.cmd(b"QUIT", b"221")
            writer.close()

        await asyncio.gather(*(one(k) for k in range(sessions)))
        return sent, time.perf_counter() - began

    out.send(uvloop.run(run()))


async def post_load(base: str, token_list: list[str], rate: float) -> tuple[list[float], dict[int, int], float]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=200, force_close=False)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
        # Warm the connection pool (and the daemon's keyring) with a few GETs, not counted.
        await asyncio.gather(*(http.get(f"{base}/u/{token_list[-1 - i]}") for i in range(20)))
        began = time.perf_counter()

        async def one(i: int, token: str) -> None:
            due = began + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            async with http.post(f"{base}/u/{token}", data=b"List-Unsubscribe=One-Click",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1
            latencies.append(time.perf_counter() - due)

        await asyncio.gather(*(one(i, t) for i, t in enumerate(token_list[:-20])))
        return latencies, statuses, time.perf_counter() - began


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included) and of its live children
    (the web worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def commit_floor(directory: Path, n: int = 200) -> tuple[float, float]:
    """p50 and p99 of one-row WAL commits with synchronous=FULL in ``directory``: the disk's fsync
    cost right now, which every durable POST waits for at least once."""
    path = directory / "floor.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (x)")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - t0)
    conn.close()
    return statistics.median(times), pct(times, 0.99)


def store_counts(web_port: int) -> tuple[float, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("gateway_store_")}
    return values.get("gateway_store_commits_total", 0.0), values.get("gateway_store_writes_total", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=500.0, help="unsubscribe POSTs per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--submit-sessions", type=int, default=8)
    parser.add_argument("--submit-rate", type=float, default=300.0, help="messages per second in all (0: as fast as possible)")
    parser.add_argument("--web-process", choices=("both", "true", "false"), default="both",
                        help="web.process for the daemon: both runs false, then true")
    args = parser.parse_args()
    modes = {"both": [False, True], "true": [True], "false": [False]}[args.web_process]
    for i, web_process in enumerate(modes):
        if i:
            print()
        print(f"== web.process = {'true' if web_process else 'false'}")
        run_once(args, web_process)


def run_once(args: argparse.Namespace, web_process: bool) -> None:
    import uvloop

    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        work = Path(tmp)
        port, tls_port, web_port = free_port(), free_port(), free_port()
        # The MX and API listeners on free ports too: a default port may be taken on a shared machine.
        write_config(work / "config.toml", dns, port, tls_port, '[api]\nlisten = "127.0.0.1:0"\n')
        text = (work / "config.toml").read_text().replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{web_port}"', 1)
        text = text.replace("[web]\n", f"[web]\nprocess = {'true' if web_process else 'false'}\n", 1)
        (work / "config.toml").write_text(text)
        proc, sock = start_daemon(work)
        try:
            cred = setup(sock, dns)
            news = call(sock, "usecase.add", tenant="bench", domain="bench.test", name="news", entity="Bench news",
                        kind="marketing", senders=["news@bench.test"])
            call(sock, "pause")
            [key] = [k for k in call(sock, "unsubscribe.keys") if k["state"] == "signing"]
            with sqlite3.connect(f"file:{work / 'state' / 'gateway.db'}?mode=ro", uri=True) as db:
                secret = db.execute("SELECT secret FROM unsubscribe_keys WHERE id = ?", (key["id"],)).fetchone()[0]
            count = int(args.rate * args.seconds) + 20
            now = int(time.time())
            token_list = [tokens.mint(tokens.Claim(key["id"], news["tenant_id"], "usecase", news["id"], news["id"], now,
                                                   f"subscriber{i}@example.org"), secret) for i in range(count)]

            parent, child = multiprocessing.Pipe()
            loader = multiprocessing.Process(target=submission_load, daemon=True,
                                             args=(port, cred, args.submit_sessions, args.submit_rate, args.seconds + 1.0, child))
            load = os.getloadavg()
            loader.start()
            time.sleep(1.0)  # submission is under way before the first POST
            cpu0 = cpu_seconds(proc.pid)
            counts0 = store_counts(web_port)
            lat, statuses, elapsed = uvloop.run(post_load(f"http://127.0.0.1:{web_port}", token_list, args.rate))
            cpu = cpu_seconds(proc.pid) - cpu0
            commits, writes = (b - a for a, b in zip(counts0, store_counts(web_port)))
            sent, submit_elapsed = parent.recv()
            loader.join(timeout=30)
            events = call(sock, "status")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        floor = commit_floor(work)
    print(f"unsubscribe POSTs  {len(lat)} at {args.rate:.0f}/s target, {len(lat) / elapsed:.0f}/s achieved ({elapsed:.2f} s)  statuses {statuses}")
    print(f"submission beside  {sent} messages in {submit_elapsed:.1f} s = {sent / submit_elapsed:.0f} msg/s "
          f"({args.submit_sessions} sessions, target {args.submit_rate or 'max'})")
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}  cores: {os.cpu_count()}  daemon pid was {events['pid']}")
    print(f"daemon CPU {cpu:.2f} s over the POST phase = {cpu / elapsed * 100:.0f}% of one core, "
          f"{cpu / len(lat) * 1000:.2f} ms per POST if the POSTs were all of it")
    print(f"store      {commits:.0f} commits for {writes:.0f} writes ({writes / max(commits, 1):.1f} per commit); "
          f"a bare fsync'd commit here now: p50 {floor[0] * 1000:.1f} ms  p99 {floor[1] * 1000:.1f} ms")
    print(f"latency  p50 {statistics.median(lat) * 1000:.1f} ms   p99 {pct(lat, 0.99) * 1000:.1f} ms   max {max(lat) * 1000:.1f} ms"
          "  (due time -> full response)")
    ok = pct(lat, 0.99) < 0.020 and statuses.get(200, 0) == len(lat)
    print("target   " + ("met" if ok else "NOT met") + " (p99 < 20 ms, every POST 200)")


if __name__ == "__main__":
    main()
