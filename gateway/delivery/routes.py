"""Routes: how a use case's mail leaves (its MX directly, or one of the tenant's connectors), read
from the store and cached for a few seconds so a burst of mail costs one lookup per use case.

A use case that cannot be routed (deleted, unknown route, missing or disabled connector) gets a
``problem`` route: its recipients are held with the reason until an operator fixes it. A store
that fails while a route is read raises: the dispatcher releases those claims and tries later.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..domains.keyimport import missing_key
from ..errors import DeliveryError
from ..store import Store
from ..unsubscribe import carries_fields
from ..unsubscribe.links import UnsubscribeSpec
from .connectors import ConnectorSpec
from .dkim import SigningKey

ROUTE_TTL = 10.0


class RoutingProblem(DeliveryError):
    """The use case cannot be routed (missing or disabled connector...): held until an operator fixes it."""


@dataclass
class Route:
    kind: str                               # direct | smtp | sendgrid | problem
    tenant_id: int
    domain: str = ""                        # the use case's sending domain (DKIM d=, VERP)
    keys: list[SigningKey] = field(default_factory=list)
    connector: ConnectorSpec | None = None
    problem: str = ""                       # why this use case cannot be routed (kind 'problem')
    unsubscribe: UnsubscribeSpec | None = None  # its mail carries List-Unsubscribe (one copy per recipient)

    def destination(self, rcpt_domain: str) -> tuple:
        if self.kind == "direct":
            return ("direct", rcpt_domain)
        if self.connector is not None:
            return ("connector", self.connector.id)
        return ("problem", self.tenant_id)


async def load_route(store: Store, usecase_id: int, tenant_id: int) -> Route:
    info = await store.delivery.routing(usecase_id)
    if info is None:
        return Route("problem", tenant_id, problem=f"use case {usecase_id} no longer exists")
    for k in info["keys"]:
        if k["private_pem"] is None:   # a key from before the store held them, not imported (domains/keyimport.py)
            return Route("problem", tenant_id, problem=missing_key(info["domain"], k["selector"], k["key_path"]))
    keys = [SigningKey(info["domain"], k["selector"], k["algorithm"], k["private_pem"]) for k in info["keys"]]
    unsubscribe = UnsubscribeSpec(info["unsubscribe_scope"], info["id"] if info["unsubscribe_scope"] == "usecase" else info["domain_id"],
                                  info["id"]) if carries_fields(info["kind"], info["list_unsubscribe"]) else None
    route = info["route"] or "direct"
    if route == "direct":
        return Route("direct", tenant_id, info["domain"], keys, unsubscribe=unsubscribe)
    kind, _, name = route.partition(":")
    if kind != "connector" or not name:
        return Route("problem", tenant_id, problem=f"use case {info['name']!r} has an unknown route {route!r}")
    spec = await store.connectors.spec(tenant_id, name)
    if spec is None:
        return Route("problem", tenant_id, problem=f"route {route!r}: the tenant has no such connector")
    if not spec["enabled"]:
        return Route("problem", tenant_id, problem=f"route {route!r}: the connector is disabled")
    if spec["kind"] not in ("smtp", "sendgrid"):
        return Route("problem", tenant_id, problem=f"route {route!r}: a {spec['kind']} connector cannot send")
    connector = ConnectorSpec(spec["id"], spec["tenant_id"], spec["name"], spec["kind"], spec["enabled"], spec["settings"], spec["secret"])
    return Route(spec["kind"], tenant_id, info["domain"], keys, connector, unsubscribe=unsubscribe)


class Routes:
    """Routes by use case, each kept ``ttl`` seconds."""

    def __init__(self, store: Store, *, ttl: float = ROUTE_TTL, clock: Callable[[], float] = time.monotonic):
        self.store, self.ttl, self.clock = store, ttl, clock
        self._cache: dict[int, tuple[float, Route]] = {}

    async def get(self, usecase_id: int, tenant_id: int) -> Route:
        now = self.clock()
        hit = self._cache.get(usecase_id)
        if hit and hit[0] > now:
            return hit[1]
        route = await load_route(self.store, usecase_id, tenant_id)
        self._cache[usecase_id] = (now + self.ttl, route)
        return route

    def clear(self) -> None:
        self._cache.clear()
