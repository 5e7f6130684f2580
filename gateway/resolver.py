"""The DNS resolver every lookup goes through, built from the [dns] section: the configured
nameservers and port (tests point them at a local server), one timeout for the whole lookup."""

from __future__ import annotations

import dns.asyncresolver

from .config import DnsConfig


def make_resolver(config: DnsConfig) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
    if config.nameservers:
        resolver.nameservers = list(config.nameservers)
    resolver.port = config.port
    resolver.timeout = config.timeout
    resolver.lifetime = config.timeout
    return resolver
