"""Fixtures shared by every test module."""

from __future__ import annotations

import pytest

from tests.support.dns import DnsServer
from tests.support.dovecot import dovecot  # noqa: F401 - the `dovecot` fixture, for every test module
from tests.support.postgres import pg_store_database, pg_store_url, pg_url, postgres, store_url  # noqa: F401 - a real PostgreSQL (session), a database per test, the store on both backends


@pytest.fixture
def dns_server():
    """An authoritative DNS server on 127.0.0.1 (UDP+TCP, free port); see tests/support/dns.py."""
    with DnsServer() as server:
        yield server
