#!/usr/bin/env python3
"""CPU of the small per-message steps of submission -> delivery, each on its own (issue 11).

    .venv/bin/python scripts/bench_cpu.py [--rounds 5] [--n 20000]

Each step is called --n times, --rounds times over; the best round's thread CPU per call is
printed (the minimum: the machine is shared, and load only ever adds). What the steps are:

    loop_guard     LoopGuard.refusal for the MX address, with the daemon's four listeners
    log_queued     the "queued" info line (eleven fields) through logs.get_logger and the JSON chain to /dev/null
    log_debug      a debug call filtered out at info
    received       the Received field of a TLS session (prepare.received_header + the TLS facts)
    tls_read_new   a 26-byte command decrypted as after STARTTLS through TlsReader (read into the
                   connection's buffer, the bytes copied out)
    tls_read_old   the same as uvloop reads for a plain Protocol: SSLObject.read(262144), a new
                   256 KiB bytes object per read (mmap, mremap, munmap); three threads sleep and
                   wake meanwhile, as the daemon's store and signing threads do. glibc's mmap
                   threshold is pinned at its default (128 KiB), where strace shows the daemon's:
                   a process that once freed a large mapped block has it raised, and reads from
                   the heap instead

The end-to-end figures (CPU per message of the whole daemon) come from scripts/bench_e2e.py and
../shared/bench/side_by_side.py; these say which step a change moved, and by how much.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gateway import logs
from gateway.config import LogConfig
from gateway.delivery.loops import LoopGuard
from gateway.submission import prepare
from gateway.submission.tls import ensure_self_signed
from gateway.tlsreader import TlsReader


def _listeners() -> list[str]:
    # As the daemon's own_addresses lambda builds them: from the listener records, on every call.
    records = [{"name": "submission", "address": "127.0.0.1:2587"}, {"name": "mx", "address": "0.0.0.0:2525"},
               {"name": "web", "address": "127.0.0.1:8025"}, {"name": "admin", "address": "/run/gateway/admin.sock"}]
    return [r["address"] for r in records]


def _tls_pair() -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.SSLObject, ssl.MemoryBIO]:
    """(client, its outgoing BIO, server, its incoming BIO) of a finished TLS 1.3 handshake in memory."""
    cert, key = ensure_self_signed(Path(tempfile.mkdtemp(prefix="bench-cpu-")), "bench.test")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server, client = server_ctx.wrap_bio(s_in, s_out, server_side=True), client_ctx.wrap_bio(c_in, c_out)
    for _ in range(10):
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return client, c_out, server, s_in


class _Sink:
    def data_received(self, data: bytes) -> None:
        self.last = data


def _background_threads(n: int = 3) -> None:
    def nap() -> None:
        while True:
            time.sleep(0.0005)
    for _ in range(n):
        threading.Thread(target=nap, daemon=True).start()


def steps() -> dict[str, Callable[[], object]]:
    guard = LoopGuard(allow_loopback=True, own=_listeners)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    logs.configure(LogConfig(level="info", format="json"), stream=devnull)
    log = logs.get_logger("submission")   # as the submission and delivery modules log

    def log_queued() -> None:
        log.info("queued", queue_id="01JEXAMPLE0QUEUEID", tenant="acme", usecase="alerts", mail_from="app@bench.test",
                 recipients=1, size=4312, message_id="01JEXAMPLE0QUEUEID@bench.test", client="127.0.0.1", source="smtp",
                 held=None, delay=0.0123)

    def log_debug() -> None:
        log.debug("submission_command", client="127.0.0.1", line="RCPT TO:<bob@dest.test>")

    def received() -> bytes:
        return prepare.received_header(helo="client.bench.test", client_ip="127.0.0.1", hostname="gw.bench.test",
                                       queue_id="01JEXAMPLE0QUEUEID", tls="version=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384",
                                       recipients=["bob@dest.test"], now=time.time())

    client, c_out, server, s_in = _tls_pair()
    reader = TlsReader(_Sink())  # type: ignore[arg-type]
    command = b"RCPT TO:<bob@dest.test>\r\n"
    _background_threads()

    def tls_read_new() -> None:
        client.write(command)
        s_in.write(c_out.read())
        reader.buffer_updated(server.read(len(reader.get_buffer(-1)), reader.get_buffer(-1)))

    def tls_read_old() -> bytes:
        client.write(command)
        s_in.write(c_out.read())
        return server.read(262144)

    return {
        "loop_guard": lambda: guard.refusal("127.0.0.1", 2600, "dest.test"),
        "log_queued": log_queued,
        "log_debug": log_debug,
        "received": received,
        "tls_read_new": tls_read_new,
        "tls_read_old": tls_read_old,
    }


def measure(fn: Callable[[], object], n: int, rounds: int) -> float:
    """Best round's thread CPU per call, in microseconds."""
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - start) / n * 1e6)
    return best


def _default_mmap_threshold() -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)   # M_MMAP_THRESHOLD
    except OSError:
        pass   # not glibc: nothing to pin


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("only", nargs="*", help="steps to run (default: all)")
    args = ap.parse_args()
    _default_mmap_threshold()
    for name, fn in steps().items():
        if args.only and name not in args.only:
            continue
        print(f"{name:14s} {measure(fn, args.n, args.rounds):8.2f} us/call")


if __name__ == "__main__":
    main()
