"""Receiving set-ups written straight into a store (the addresses helper owns the CLI that makes them).

    dom = await receiving_domain(store, tenant_id, "acme.test", catchall=True)
    await channel_address(store, dom, "help@acme.test", direction="both", enabled=True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.store import Store


@dataclass(frozen=True)
class Domain:
    tenant_id: int
    id: int
    name: str
    usecase_id: int


async def receiving_domain(store: Store, tenant_id: int, name: str, *, state: str = "verified", inbound: bool = True,
                           catchall: bool = False, usecase: str | None = None) -> Domain:
    """A tenant domain in ``state`` with one use case; inbound on/off; the use case as catch-all or not."""
    def write(conn):
        cur = conn.execute("INSERT INTO domains (tenant_id, name, verification_token, state, created_at, inbound_enabled)"
                           " VALUES (?, ?, 't', ?, ?, ?)", (tenant_id, name, state, time.time(), int(inbound)))
        domain_id = cur.lastrowid
        cur = conn.execute("INSERT INTO usecases (tenant_id, domain_id, name, entity, kind, created_at)"
                           " VALUES (?, ?, ?, 'Test', 'transactional', ?)",
                           (tenant_id, domain_id, usecase or name.replace(".", "-"), time.time()))
        usecase_id = cur.lastrowid
        if catchall:
            conn.execute("UPDATE domains SET catchall_usecase_id = ? WHERE id = ?", (usecase_id, domain_id))
        return domain_id, usecase_id

    domain_id, usecase_id = await store.db.write(write)
    return Domain(tenant_id, domain_id, name, usecase_id)


async def channel_address(store: Store, domain: Domain, address: str, *, direction: str = "both", enabled: bool = True) -> int:
    def write(conn):
        now = time.time()
        return conn.execute("INSERT INTO channel_addresses (tenant_id, domain_id, usecase_id, address, direction, enabled,"
                            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (domain.tenant_id, domain.id, domain.usecase_id, address, direction, int(enabled), now, now)).lastrowid
    return await store.db.write(write)


async def set_tenant_enabled(store: Store, tenant_id: int, enabled: bool) -> None:
    await store.db.write(lambda conn: conn.execute("UPDATE tenants SET enabled = ? WHERE id = ?", (int(enabled), tenant_id)))


async def set_dmarc_reject(store: Store, tenant_id: int, on: bool) -> None:
    await store.db.write(lambda conn: conn.execute("UPDATE tenants SET dmarc_reject = ? WHERE id = ?", (int(on), tenant_id)))
