#!/usr/bin/env python3
"""Memory under large mail: peak RSS of the daemon while many sessions send big messages at once.

    .venv/bin/python scripts/bench_memory.py [--sessions 20] [--size 24000000] [--rounds 3] [--budget BYTES]

Starts `gateway run` as users do (a subprocess, the setup of bench_submission), pauses delivery (the
figure is the submission side: mail is committed and held), then for each round opens --sessions
concurrent sessions (STARTTLS + AUTH PLAIN, all logged in before the baseline is read: a password
check has a memory cost of its own), each then sending one message of --size bytes. A message
refused with 452 (the in-flight budget is spent) is sent again after a short pause, until every
message is accepted. The daemon's RSS is sampled every 20 ms; its peak is the kernel's high-water
mark (VmHWM, reset before each round through /proc/PID/clear_refs). After each round the daemon
is left idle for --settle seconds and its RSS read again (what stays after large mail).

Prints per round: baseline RSS, peak RSS, budget, refusals, messages accepted, seconds; and
whether the peak stayed under budget + 100 MB (the target of issue 7 item 8). --env passes
variables to the daemon (e.g. --env MALLOC_ARENA_MAX=2) to compare allocator settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_e2e import connect  # noqa: E402
from bench_submission import Client, call, free_port, make_payload, setup, start_daemon, write_config  # noqa: E402
from tests.support.dns import DnsServer  # noqa: E402

MB = 1024 * 1024


def proc_status(pid: int, key: str) -> int:
    """A /proc/PID/status value in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS (VmHWM) to the current RSS


class Tally:
    def __init__(self) -> None:
        self.accepted = 0
        self.refused_at_data = 0    # 452 instead of 354: nothing sent
        self.refused_after = 0      # 452 after the final dot
        self.other: list[bytes] = []


async def send_one(c: Client, writer: asyncio.StreamWriter, payload: bytes, tally: Tally, retry_pause: float) -> None:
    while True:
        await c.cmd(b"MAIL FROM:<app@bench.test> SIZE=%d" % len(payload), b"250")
        await c.cmd(b"RCPT TO:<big@example.org>", b"250")
        writer.write(b"DATA\r\n")
        reply = await c.reply()
        if reply.startswith(b"452"):
            tally.refused_at_data += 1
            await c.cmd(b"RSET", b"250")
            await asyncio.sleep(retry_pause)
            continue
        if not reply.startswith(b"354"):
            raise RuntimeError(f"DATA -> {reply!r}")
        writer.write(payload)
        writer.write(b".\r\n")
        await writer.drain()
        reply = await c.reply()
        if reply.startswith(b"250"):
            tally.accepted += 1
            break
        if reply.startswith(b"452"):
            tally.refused_after += 1
            await asyncio.sleep(retry_pause)
            continue
        tally.other.append(reply)
        break
    await c.cmd(b"QUIT", b"221")
    writer.close()


async def watch(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(proc_status(pid, "VmRSS"))
        try:
            await asyncio.wait_for(stop.wait(), 0.02)
        except asyncio.TimeoutError:
            pass


async def one_round(pid: int, port: int, cred: dict, sessions: int, payload: bytes, retry_pause: float) -> dict:
    """Every session logs in first (AUTH's password hash costs memory of its own, not the messages'):
    the baseline is read and the peak reset after that, then all send at once."""
    clients = await asyncio.gather(*(connect(port, cred["username"], cred["password"]) for _ in range(sessions)))
    await asyncio.sleep(1.0)  # let the AUTH threads' memory go back before the baseline is read
    baseline = proc_status(pid, "VmRSS")
    reset_peak(pid)
    tally = Tally()
    samples: list[int] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch(pid, samples, stop))
    began = time.perf_counter()
    await asyncio.gather(*(send_one(c, w, payload, tally, retry_pause) for c, w in clients))
    elapsed = time.perf_counter() - began
    stop.set()
    await watcher
    return {"tally": tally, "elapsed": elapsed, "baseline": baseline, "peak": max(proc_status(pid, "VmHWM"), *samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=24_000_000, help="bytes per message")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=None, help="daemon.memory_budget (default: the daemon's default)")
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds after each round before reading RSS")
    parser.add_argument("--retry-pause", type=float, default=0.25, help="seconds a refused client waits before sending again")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment for the daemon")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, DnsServer() as dns:
        work = Path(tmp)
        port, tls_port = free_port(), free_port()
        extra = "[daemon]\n" + (f"memory_budget = {args.budget}\n" if args.budget else "")
        write_config(work / "config.toml", dns, port, tls_port, extra)
        proc, sock = start_daemon(work, dict(item.split("=", 1) for item in args.env))
        try:
            cred = setup(sock, dns)
            call(sock, "pause")  # the submission side alone: mail is committed and held
            budget = call(sock, "config.show")["daemon"]["memory_budget"]
            payload = make_payload(args.size)
            print(f"sessions {args.sessions} x one message of {len(payload) / MB:.1f} MiB per round, "
                  f"budget {budget / MB:.0f} MiB, env {args.env or '-'}")
            peaks: list[int] = []
            for n in range(1, args.rounds + 1):
                run = asyncio.run(one_round(proc.pid, port, cred, args.sessions, payload, args.retry_pause))
                tally, elapsed, baseline, peak = run["tally"], run["elapsed"], run["baseline"], run["peak"]
                time.sleep(args.settle)
                settled = proc_status(proc.pid, "VmRSS")
                ok = peak <= budget + 100 * MB
                peaks.append(peak)
                print(f"round {n}: baseline {baseline / MB:.0f} MB  peak {peak / MB:.0f} MB  settled {settled / MB:.0f} MB  "
                      f"accepted {tally.accepted}/{args.sessions}  refused 452 at DATA {tally.refused_at_data}, "
                      f"after the dot {tally.refused_after}  other {len(tally.other)}  {elapsed:.1f} s  "
                      f"peak {'<=' if ok else '>'} budget + 100 MB")
                for reply in tally.other[:3]:
                    print("   other reply:", reply)
            print("queue", call(sock, "queue.counts"))
            print(f"highest peak {max(peaks) / MB:.0f} MB, budget + 100 MB = {(budget + 100 * MB) / MB:.0f} MB: "
                  + ("met" if max(peaks) <= budget + 100 * MB else "NOT met"))
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
