"""Prometheus metrics: one registry per daemon (no globals), conventional names and units.

Components that own a metric define it here, so every name is in one place and a test can list them.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.start_time = Gauge("gateway_start_time_seconds", "Unix time the daemon started.", registry=r)
        self.start_time.set(time.time())
        self.admin_requests = Counter(
            "gateway_admin_requests_total", "Admin socket requests by method and outcome.", ["method", "outcome"], registry=r
        )
        self.config_reloads = Counter(
            "gateway_config_reloads_total", "Configuration reloads (SIGHUP) by outcome.", ["outcome"], registry=r
        )
        self.http_requests = Counter(
            "gateway_http_requests_total", "HTTP requests by path and status.", ["path", "status"], registry=r
        )
        # The HTTP API (gateway/api/server.py): route is the template ("GET /v1/domains/{domain}"), never the path.
        self.api_requests = Counter("gateway_api_requests_total", "HTTP API requests by route and status.", ["route", "status"], registry=r)
        self.api_seconds = Histogram("gateway_api_request_seconds", "Seconds an HTTP API request took, by method (key check to reply).", ["method"],
                                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10), registry=r)
        # Delivery (gateway/delivery/scheduler.py): one count per recipient outcome.
        self.delivered = Counter("gateway_messages_delivered_total", "Recipients delivered, by route kind.", ["route"], registry=r)
        self.deferred = Counter("gateway_messages_deferred_total", "Recipient attempts deferred (temporary failure), by route kind.", ["route"], registry=r)
        self.bounced = Counter("gateway_messages_bounced_total", "Recipients bounced (permanent failure or expiry), by route kind.", ["route"], registry=r)
        self.held = Counter("gateway_messages_held_total", "Recipients moved to held by an internal failure.", registry=r)
        self.dsns = Counter("gateway_dsn_sent_total", "Delivery status notifications queued.", registry=r)
        # Claim leases (gateway/store/delivery.py) and job leases (gateway/singleton.py).
        self.claims_taken_over = Counter("gateway_delivery_claims_taken_over_total",
                                         "Claimed recipients this process took over after their holder's lease ran out (it died or hung).", registry=r)
        self.records_ignored = Counter("gateway_delivery_records_ignored_total",
                                       "Outcomes this process could not record because its claim had been taken over meanwhile.", registry=r)
        self.jobs_held = Gauge("gateway_job_lease_held", "1 while this process holds the job's lease and runs it, else 0.", ["job"], registry=r)
        # Webhooks (gateway/webhooks/sender.py).
        self.webhook_posts = Counter("gateway_webhook_posts_total", "Webhook POSTs by outcome (ok: 2xx).", ["outcome"], registry=r)
        self.webhook_events = Counter("gateway_webhook_events_delivered_total", "Events a webhook endpoint took (2xx).", registry=r)
        self.delivery_duration = Histogram(
            "gateway_delivery_duration_seconds", "Time from queued to delivered, per recipient.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 432000), registry=r,
        )

        # Mailbox polling (gateway/inbound/poller.py).
        self.mailbox_messages = Counter(
            "gateway_mailbox_messages_total",
            "Messages found in polled mailboxes, by protocol and outcome (spooled; duplicate: spooled before; skipped: over poller.max_message_size).",
            ["protocol", "outcome"], registry=r)
        self.mailbox_failures = Counter("gateway_mailbox_poll_failures_total", "Mailbox sessions that failed (connect, TLS, login, a command, the store), by protocol.",
                                        ["protocol"], registry=r)

        # Retention (gateway/sweeper.py).
        self.swept = Counter("gateway_swept_rows_total", "Rows the sweeper aged out, by kind (bodies, messages, attempts, events, threads).",
                             ["kind"], registry=r)
        self.sweep_batch_seconds = Histogram(
            "gateway_sweep_batch_seconds", "Seconds one sweep batch held the store writer.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r,
        )

        # Inbound processing (gateway/inbound/processor.py).
        self.inbound_processed = Counter("gateway_inbound_processed_total", "Inbound messages processed, by kind (message, reply, dsn, arf, auto_reply, unsubscribe).",
                                         ["kind"], registry=r)
        self.inbound_held = Counter("gateway_inbound_held_total", "Inbound messages the processor could not handle and held (with the reason; `gateway inbox release` retries).",
                                    registry=r)
        self.inbound_processing_seconds = Histogram(
            "gateway_inbound_processing_seconds", "Seconds from reading a spooled message to its finish write.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0), registry=r,
        )

        # Submission (gateway/submission).
        self.messages_received = Counter(
            "gateway_messages_received_total", "Messages accepted on the submission ports and committed to the queue.", registry=r
        )
        self.submission_refusals = Counter(
            "gateway_submission_refusals_total", "Submission commands refused, by SMTP step and reply code.", ["step", "code"], registry=r
        )
        self.submission_auth = Counter(
            "gateway_submission_auth_total", "AUTH attempts by outcome (ok, failed, cooldown, error).", ["outcome"], registry=r
        )
        self.submission_accept_seconds = Histogram(
            "gateway_submission_accept_seconds", "Seconds from the final dot to the 250 (checks, preparation, durable commit).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r
        )
        self.message_size = Histogram(
            "gateway_message_size_bytes", "Size of each accepted message as queued (after header preparation).",
            buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864), registry=r
        )
        self.submission_connections = Gauge(
            "gateway_submission_connections", "Open connections on the submission listeners.", registry=r
        )
        # The MX listener (gateway/inbound/server.py).
        self.inbound_received = Counter(
            "gateway_inbound_received_total", "Messages accepted on the MX listener and committed to the inbound spool.", registry=r
        )
        self.inbound_refusals = Counter(
            "gateway_inbound_refusals_total", "MX listener commands refused, by SMTP step and reply code.", ["step", "code"], registry=r
        )
        self.inbound_accept_seconds = Histogram(
            "gateway_inbound_accept_seconds", "Seconds from the final dot to the MX listener's 250 (checks, durable spool).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r
        )
        self.inbound_connections = Gauge(
            "gateway_inbound_connections", "Open connections on the MX listener.", registry=r
        )
        # The in-flight memory budget (gateway/budget.py); its levels are read on scrape (budget_families).
        self.memory_refusals = Counter(
            "gateway_memory_refusals_total", "Messages refused with 452 4.3.1 because the in-flight memory budget was spent.", registry=r
        )

    def add_collector(self, collect: Callable[[], list[Any]]) -> None:
        """Register a function that yields metric families on each scrape (for values read on demand)."""

        class _Collector:
            def collect(self_inner) -> list[Any]:  # noqa: N805
                return collect()

            def describe(self_inner) -> list[Any]:  # noqa: N805
                return []

        self.registry.register(_Collector())


def store_families(db: Any) -> list[Any]:
    commits = CounterMetricFamily("gateway_store_commits", "Transactions the store writer committed.")
    commits.add_metric([], db.commits)
    writes = CounterMetricFamily("gateway_store_writes", "Writes committed (several share one commit).")
    writes.add_metric([], db.writes)
    up = GaugeMetricFamily("gateway_store_writer_up", "1 while the store writer thread runs.")
    up.add_metric([], 1 if db.writer_alive else 0)
    full = GaugeMetricFamily("gateway_store_full", "1 during a disk-full episode (new mail gets 452 4.3.1).")
    full.add_metric([], 1 if db.full else 0)
    episodes = CounterMetricFamily("gateway_store_full_episodes", "Disk-full episodes since start.")
    episodes.add_metric([], db.episodes)
    free = GaugeMetricFamily("gateway_store_free_bytes", "Free bytes on the state directory's filesystem (last measured).")
    free.add_metric([], db.space.free())
    families = [commits, writes, up, full, episodes, free]
    if hasattr(db, "replays"):  # PostgreSQL (store/pg.py)
        trips = CounterMetricFamily("gateway_store_round_trips", "PostgreSQL: the writer's waits for the server (a statement, or a pipeline sync).")
        trips.add_metric([], db.round_trips)
        replays = CounterMetricFamily("gateway_store_replays", "PostgreSQL: write batches that failed pipelined and ran again a statement at a time.")
        replays.add_metric([], db.replays)
        families += [trips, replays]
    return families


def budget_families(budget: Any) -> list[Any]:
    limit = GaugeMetricFamily("gateway_memory_budget_bytes", "The in-flight memory budget (daemon.memory_budget).")
    limit.add_metric([], budget.limit)
    in_use = GaugeMetricFamily("gateway_memory_in_use_bytes", "Bytes of the in-flight memory budget held now (submission and delivery).")
    in_use.add_metric([], budget.in_use)
    peak = GaugeMetricFamily("gateway_memory_peak_bytes", "Most bytes of the in-flight memory budget held at once since start.")
    peak.add_metric([], budget.peak)
    return [limit, in_use, peak]


__all__ = ["Metrics", "store_families", "budget_families", "Histogram"]


# Gauges of something each process holds (its connections, its bytes in memory): the daemon's
# figure is the sum over its processes. Every other gauge is the daemon's own state.
ADDITIVE_GAUGES = frozenset({"gateway_submission_connections", "gateway_inbound_connections", "gateway_memory_in_use_bytes"})


def merged_exposition(daemon_text: str, *others: CollectorRegistry | str) -> bytes:
    """The daemon's exposition with the figures of ``others`` (other processes': a registry, or an
    exposition text) added: one scrape target for the whole daemon. Counters and histograms of the
    same name and labels are summed (a total over the processes), and so are ADDITIVE_GAUGES; other
    gauges are the daemon's (its own state: start time, store, budget), but a family only another
    process has is kept whole."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(daemon_text)}
    for other in others:
        collected = text_string_to_metric_families(other) if isinstance(other, str) else other.collect()
        for family in collected:
            ours = families.get(family.name)
            if ours is None:
                families[family.name] = family
                continue
            summed = family.type in ("counter", "histogram", "summary") or family.name in ADDITIVE_GAUGES
            if not summed or ours.type != family.type:
                continue
            index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(ours.samples)}
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # the daemon's creation time stands for the family
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key in index:
                    i = index[key]
                    ours.samples[i] = ours.samples[i]._replace(value=ours.samples[i].value + sample.value)
                else:
                    index[key] = len(ours.samples)
                    ours.samples.append(sample)

    class _Families:
        def collect(self) -> list[Any]:
            return list(families.values())

    return generate_latest(_Families())  # type: ignore[arg-type]


def worker_families(workers: list[Any]) -> list[Any]:
    """The daemon's child processes (gateway/workers.py), one label value per worker."""
    up = GaugeMetricFamily("gateway_worker_up", "1 while a worker process runs and serves.", labels=["worker"])
    restarts = CounterMetricFamily("gateway_worker_restarts", "Worker processes restarted after they died.", labels=["worker"])
    pid = GaugeMetricFamily("gateway_worker_pid", "Process id of each running worker process.", labels=["worker"])
    for worker in workers:
        up.add_metric([worker.name], 1 if worker.alive else 0)
        restarts.add_metric([worker.name], worker.restarts)
        if worker.alive:
            pid.add_metric([worker.name], worker.proc.pid)
    return [up, restarts, pid]
