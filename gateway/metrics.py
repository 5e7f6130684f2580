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
    return [commits, writes, up]


__all__ = ["Metrics", "store_families", "Histogram"]
