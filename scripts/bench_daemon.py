#!/usr/bin/env python3
"""Daemon figures: start to READY=1, admin round trip, CLI wall time.

    .venv/bin/python scripts/bench_daemon.py [--starts 7] [--pings 1000] [--cli-runs 10]

(a) `gateway run` until READY=1 arrives on a NOTIFY_SOCKET made here, median of --starts runs, both
    on a fresh state dir (migrations, generated TLS pair included) and restarted on that state; < 1 s.
(b) `ping` round trips over one admin-socket connection, p50/p99 of --pings calls; target < 5 ms.
(c) `gateway status` wall time as an operator runs it, median of --cli-runs; target < 400 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.admin.client import AdminClient  # noqa: E402

GATEWAY = str(Path(sys.executable).parent / "gateway")
CONFIG = '[web]\nlisten = "127.0.0.1:0"\n'


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC", "STATE_DIRECTORY",
                                                               "RUNTIME_DIRECTORY", "GATEWAY_CONFIG", "GATEWAY_SOCKET"}}
    env.update(extra)
    return env


def start(workdir: Path) -> tuple[subprocess.Popen, float, Path]:
    """Start a daemon; return it, the seconds until READY=1, and its socket."""
    notify_path = workdir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    (workdir / "config.toml").write_text(CONFIG)
    began = time.perf_counter()
    proc = subprocess.Popen([GATEWAY, "run", "--config", str(workdir / "config.toml"), "--state-dir", str(workdir / "state")],
                            env=clean_env(NOTIFY_SOCKET=str(notify_path)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            msg = notify.recv(65536).decode()
            if "READY=1" in msg.splitlines():
                return proc, time.perf_counter() - began, workdir / "state" / "admin.sock"
    except TimeoutError:
        proc.kill()
        raise SystemExit("bench: the daemon did not become ready within 30 s")
    finally:
        notify.close()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    if proc.wait(30) != 0:
        raise SystemExit(f"bench: the daemon exited {proc.returncode}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=7)
    ap.add_argument("--pings", type=int, default=1000)
    ap.add_argument("--cli-runs", type=int, default=10)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        tmp = Path(tmp)
        ready, restart = [], []
        for i in range(args.starts):
            run_dir = tmp / f"start{i}"
            run_dir.mkdir()
            proc, seconds, _ = start(run_dir)  # first start: creates the database, TLS pair...
            ready.append(seconds)
            stop(proc)
            (run_dir / "notify.sock").unlink()
            proc, seconds, _ = start(run_dir)  # a restart on existing state, as systemd does
            restart.append(seconds)
            stop(proc)

        run_dir = tmp / "main"
        run_dir.mkdir()
        proc, _, sock = start(run_dir)
        try:
            rtts = []
            with AdminClient(sock) as client:
                for _ in range(50):  # warm up
                    client.call("ping")
                for _ in range(args.pings):
                    t0 = time.perf_counter()
                    client.call("ping")
                    rtts.append(time.perf_counter() - t0)
            rtts.sort()
            p50, p99 = rtts[len(rtts) // 2], rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]

            cli = []
            for _ in range(args.cli_runs):
                t0 = time.perf_counter()
                subprocess.run([GATEWAY, "--socket", str(sock), "status"], env=clean_env(), check=True, stdout=subprocess.DEVNULL)
                cli.append(time.perf_counter() - t0)
        finally:
            stop(proc)

    rows = [
        ("restart -> READY=1", f"median {ms(statistics.median(restart))}  (min {ms(min(restart))}, max {ms(max(restart))}, n={len(restart)})",
         "< 1 s", statistics.median(restart) < 1.0),
        ("first run -> READY=1", f"median {ms(statistics.median(ready))}  (min {ms(min(ready))}, max {ms(max(ready))}, n={len(ready)})", "< 1 s",
         statistics.median(ready) < 1.0),
        ("admin round trip (ping)", f"p50 {ms(p50)}  p99 {ms(p99)}  (n={len(rtts)}, one connection)", "< 5 ms", p99 < 0.005),
        ("gateway status wall time", f"median {ms(statistics.median(cli))}  (min {ms(min(cli))}, n={len(cli)})", "< 400 ms",
         statistics.median(cli) < 0.4),
    ]
    for name, figure, target, ok in rows:
        print(f"{name:26} {figure:62} target {target:8} {'ok' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
