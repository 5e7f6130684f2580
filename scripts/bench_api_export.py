#!/usr/bin/env python3
"""The suppression CSV over the HTTP API with a large list: export time and the daemon's memory, import time.

    scripts/bench_api_export.py [--rows 1000000] [--import-rows 100000]

Fills one tenant's list with N entries (store.suppressions.fill, before the daemon starts), runs
`gateway run`, and GETs /v1/suppressions/export with an admin key, reading the stream as it comes.
Prints the rows and bytes received, the time, and the daemon's resident memory before and its peak
(VmHWM) after: the export reads 5,000 entries at a time, so the peak must not grow with N. Then
POSTs a CSV of M new rows to /v1/suppressions/import and prints its time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.store import Store  # noqa: E402

GATEWAY = str(Path(sys.executable).parent / "gateway")

_spec = importlib.util.spec_from_file_location("bench_submission", ROOT / "scripts" / "bench_submission.py")
sub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sub)   # its free_port and admin call
free_port, call = sub.free_port, sub.call


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def fill(db: Path, rows: int) -> float:
    store = await Store.open(db)
    try:
        tenant = (await store.tenants.add("bench"))["id"]
        started = time.perf_counter()
        await store.suppressions.fill(tenant, rows)
        return time.perf_counter() - started
    finally:
        await store.close()


async def export(base: str, token: str) -> tuple[int, int, float]:
    lines = size = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/v1/suppressions/export", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200, await resp.text()
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                lines += chunk.count(b"\n")
    return lines - 1, size, time.perf_counter() - started


async def import_csv(base: str, token: str, rows: int) -> tuple[dict, float]:
    body = ("address\n" + "".join(f"import-{i}@bench.example\n" for i in range(rows))).encode()
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/v1/suppressions/import", data=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "text/csv"}) as resp:
            result = await resp.json()
            assert resp.status == 200, result
    return result, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--import-rows", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "state").mkdir()
        took = asyncio.run(fill(work / "state" / "gateway.db", args.rows))
        print(f"filled {args.rows:,} entries in {took:.1f} s")
        api_port = free_port()
        (work / "config.toml").write_text("\n".join([
            "[log]", 'level = "warning"', "[web]", 'listen = "127.0.0.1:0"',
            "[submission]", 'listen = "127.0.0.1:0"', 'listen_tls = "127.0.0.1:0"', "[inbound]", 'listen = "127.0.0.1:0"',
            "[api]", f'listen = "127.0.0.1:{api_port}"', "max_body_bytes = 8388608"]) + "\n")
        environ = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "STATE_DIRECTORY", "GATEWAY_CONFIG"}}
        proc = subprocess.Popen([GATEWAY, "run", "--config", str(work / "config.toml"), "--state-dir", str(work / "state")],
                                env=environ, stdout=subprocess.DEVNULL, stderr=open(work / "daemon.log", "wb"))
        sock = work / "state" / "admin.sock"
        try:
            deadline = time.time() + 60
            while True:
                try:
                    call(sock, "ping")
                    socket.create_connection(("127.0.0.1", api_port), timeout=1).close()   # the API listener is up too
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.time() > deadline or proc.poll() is not None:
                        raise SystemExit("bench: the daemon did not start:\n" + (work / "daemon.log").read_text()[-2000:])
                    time.sleep(0.1)
            token = call(sock, "apikey.add", tenant="bench", role="admin", rate_limit=1000)["token"]
            base = f"http://127.0.0.1:{api_port}"
            before = memory_mb(proc.pid, "VmRSS")
            rows, size, seconds = asyncio.run(export(base, token))
            peak = memory_mb(proc.pid, "VmHWM")
            print(f"export: {rows:,} rows, {size / 1e6:.1f} MB in {seconds:.1f} s ({rows / seconds:,.0f} rows/s); "
                  f"daemon RSS {before:.0f} MB before, peak {peak:.0f} MB")
            result, seconds = asyncio.run(import_csv(base, token, args.import_rows))
            print(f"import: {args.import_rows:,} rows in {seconds:.1f} s ({args.import_rows / seconds:,.0f} rows/s): "
                  f"added {result['added']:,}, refused {result['refused_count']}; daemon peak {memory_mb(proc.pid, 'VmHWM'):.0f} MB")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
