"""Fixtures shared by every test module, and how the suite splits across xdist workers.

scripts/test runs the suite on several workers (pytest-xdist, ``--dist loadgroup``): every test is its
own unit of work, except the tests of a module that share a module- or class-scoped fixture (a fuzz
pass, a daemon subprocess, a key pair), which go to one worker together so the fixture is built once.
Session fixtures (PostgreSQL, see tests/support/postgres.py) are per worker: each worker is a session.
``-n0`` runs everything in one process, as before.
"""

from __future__ import annotations

import pytest

from tests.support.dns import DnsServer
from tests.support.dovecot import dovecot  # noqa: F401 - the `dovecot` fixture, for every test module
from tests.support.postgres import pg_store_database, pg_store_url, pg_url, postgres, store_url  # noqa: F401 - a real PostgreSQL (session), a database per test, the store on both backends

_SHARED_SCOPES = {"module", "class", "package"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses a fixture shared by its module or class joins its module's xdist group."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group"):
            continue
        if any(defs and defs[-1].scope in _SHARED_SCOPES for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))
    if getattr(config.option, "loadgroup", False):  # set by xdist in its workers under --dist loadgroup
        for item in items:
            _name_group(item)


def _name_group(item: pytest.Item) -> None:
    """Suffix the item's id with its xdist group, the way xdist's scheduler reads groups.

    pytest-xdist 3.8 writes the suffix to ``item._nodeid``; pytest 9.2 keeps the id in ``item._id``
    (a NodeId) and no longer reads ``_nodeid``, so without this every group is silently split up.
    On a pytest that still has ``_nodeid`` xdist's own hook does it (it runs after this one)."""
    from _pytest.nodeid import NodeId  # only where item._id exists, i.e. pytest >= 9.2

    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})
    if names and "_id" in dir(item) and "@" not in item.nodeid.rpartition("]")[2]:
        item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


@pytest.fixture
def dns_server():
    """An authoritative DNS server on 127.0.0.1 (UDP+TCP, free port); see tests/support/dns.py."""
    with DnsServer() as server:
        yield server
