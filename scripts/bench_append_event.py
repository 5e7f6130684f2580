#!/usr/bin/env python3
"""What appending an event costs the writer: CPU per ``append_event`` of a 'delivered' event.

    .venv/bin/python scripts/bench_append_event.py [--events 20000] [--rounds 5]

Four ways, interleaved, each inside one transaction of --events appends on a store with that many
messages: as delivery's record calls it (the message's use case handed in), with the use case looked
up from the message (what any other caller of a message event pays), a 'held' event (counts
nowhere: no daily_stats write), and the bare INSERT of the row
(the floor: what an event cost before it carried a use case and counted into daily_stats). Prints the
best round of each in microseconds of the thread's CPU time (time.thread_time), which a shared
machine's other processes disturb far less than the wall clock.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.store.db import migrate  # noqa: E402
from gateway.store.events import append_event  # noqa: E402
from gateway.store.queue import QueueIds  # noqa: E402

DATA = {"rcpt": "bob@dest.test", "code": 250, "enhanced": "2.0.0", "reply": "250 2.0.0 OK", "remote": "mx.dest.test", "delay": 0.2,
        "attempts": 1, "route": "direct"}


def bare(conn: sqlite3.Connection, qid: str) -> None:
    conn.execute("INSERT INTO events (created_at, tenant_id, kind, subject, data) VALUES (?, 1, 'delivered', ?, ?)",
                 (time.time(), qid, json.dumps(DATA, separators=(",", ":"))))
    conn.execute("INSERT INTO webhook_outbox (endpoint_id, event_id, created_at) SELECT id, 0, 0 FROM webhook_endpoints"
                 " INDEXED BY webhook_endpoints_live WHERE tenant_id = 1 AND enabled = 1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "gateway.db", isolation_level=None)
        conn.row_factory = sqlite3.Row
        migrate(conn)
        conn.execute("INSERT INTO tenants (name, created_at) VALUES ('bench', 0)")
        conn.execute("INSERT INTO domains (tenant_id, name, verification_token, state, created_at) VALUES (1, 'bench.test', 't', 'verified', 0)")
        conn.execute("INSERT INTO usecases (tenant_id, domain_id, name, entity, kind, created_at) VALUES (1, 1, 'u', 'e', 'transactional', 0)")
        ids = QueueIds()
        qids = [ids.new() for _ in range(args.events)]
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO messages (queue_id, tenant_id, usecase_id, mail_from, message_id, size, body, created_at, expires_at)"
                         " VALUES (?, 1, 1, 'app@bench.test', ?, 1, x'00', 0, 0)", [(q, q) for q in qids])
        conn.execute("COMMIT")
        ways = {
            "append_event, use case handed in (delivery's record)": lambda q: append_event(conn, 1, "delivered", q, DATA, message=(1, True)),
            "append_event, use case looked up": lambda q: append_event(conn, 1, "delivered", q, DATA),
            "append_event of a kind that counts nowhere ('held': no daily_stats write)":
                lambda q: append_event(conn, 1, "held", q, DATA, message=(1, True)),
            "bare INSERT of the row and the outbox probe (the floor)": lambda q: bare(conn, q),
        }
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for label, fn in ways.items():
                conn.execute("BEGIN")
                started = time.thread_time()
                for q in qids:
                    fn(q)
                took = (time.thread_time() - started) / len(qids)
                conn.execute("COMMIT")
                best[label] = min(best.get(label, took), took)
        for label, took in best.items():
            print(f"{label}: {took * 1e6:.1f} µs CPU an event")


if __name__ == "__main__":
    main()
