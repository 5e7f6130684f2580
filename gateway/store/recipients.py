"""What the recipient rules (gateway/inbound/recipients.py) need to know about one address, in one read.

``facts(address, domains)`` returns the channel address spelled ``address`` (if any) and the
domains among ``domains`` (the recipient's domain, and the tenant domain it would be the return-path
domain of) with their tenant's switch. Only facts: which of them wins, and what the client is told,
is decided by ``gateway.inbound.recipients.decide``, a pure function.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .db import Database

_DOMAINS = ("SELECT d.id, d.name, d.tenant_id, d.state, d.inbound_enabled, d.catchall_usecase_id,"
            " t.enabled AS tenant_enabled, t.dmarc_reject FROM domains d JOIN tenants t ON t.id = d.tenant_id WHERE d.name IN ({})")
_ADDRESS = ("SELECT a.id, a.tenant_id, a.domain_id, a.usecase_id, a.direction, a.enabled"
            " FROM channel_addresses a WHERE a.address = ?")


def _facts(conn: sqlite3.Connection, address: str, domains: Sequence[str]) -> dict[str, Any]:
    names = list(dict.fromkeys(domains))
    rows = conn.execute(_DOMAINS.format(", ".join("?" * len(names))), names).fetchall() if names else []
    found = conn.execute(_ADDRESS, (address,)).fetchone() if address else None
    return {"address": dict(found) if found is not None else None, "domains": {r["name"]: dict(r) for r in rows}}


class Recipients:
    def __init__(self, db: Database):
        self.db = db

    async def facts(self, address: str, domains: Sequence[str]) -> dict[str, Any]:
        """{"address": channel address row or None, "domains": {name: domain row}} for the names given.
        Two probes of unique indexes (a handful of names), on the caller's thread in one snapshot
        (``read_now_snapshot``): the hop to the reader pool costs the event loop more than the probes."""
        return self.db.read_now_snapshot(_facts, address, tuple(domains))
