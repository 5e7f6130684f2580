"""Events and webhook endpoints, as operators see them (`gateway events ...`, `gateway webhook ...`).

A webhook's signing secret is made here, returned once by ``webhook.add`` and never again: list,
show and the log carry the endpoint without it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import structlog

from ..admin.registry import admin_method
from ..errors import InvalidArgument
from ..store import Store
from ..suppression import normalise_address
from ..webhooks.signing import new_secret
from ..webhooks.urls import check_url

log = structlog.get_logger("webhooks")

KIND = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_KINDS = 50
MAX_EVENTS_PAGE = 10000

Post = Callable[[str, str, bytes, list[int]], Awaitable[dict[str, Any]]]


def check_kinds(kinds: list[str] | None) -> list[str] | None:
    """None (every event) for no list, '*' or 'all'; else the distinct kinds, each checked."""
    if not kinds or any(k in ("*", "all") for k in kinds):
        return None
    if len(kinds) > MAX_KINDS:
        raise InvalidArgument(f"at most {MAX_KINDS} event types per webhook")
    for k in kinds:
        if not KIND.match(k):
            raise InvalidArgument(f"invalid event type {k!r}: lower-case letters, digits and '_', e.g. delivered,bounced")
    return sorted(set(kinds))


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidArgument(f"invalid webhook name {name!r}: 1-63 lower-case letters, digits, '.', '-' or '_'")
    return name


class WebhookService:
    def __init__(self, store: Store, *, allow_loopback: Callable[[], bool], post: Post | None = None,
                 on_change: Callable[[], Any] | None = None):
        self.store = store
        self.allow_loopback = allow_loopback
        self.post = post
        self.on_change = on_change

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    @admin_method("webhook.add")
    async def add(self, tenant: str, url: str, events: list[str] | None = None, name: str | None = None,
                  usecase: str | None = None, address: str | None = None) -> dict[str, Any]:
        """Add an endpoint; the result carries the signing secret, this once. With ``usecase`` or
        ``address`` it gets only the events naming that use case or channel address (the
        ``received`` events of inbound mail)."""
        check_url(url, allow_loopback=self.allow_loopback())
        if name is None:
            name = re.sub(r"[^a-z0-9._-]", "-", (urlsplit(url).hostname or "webhook").lower()).strip("-._")[:63] or "webhook"
        check_name(name)
        secret = new_secret()
        if address is not None:
            address = normalise_address(address)
        endpoint = await self.store.webhooks.add(tenant, name, url, secret, check_kinds(events), usecase=usecase, address=address)
        log.info("webhook_added", tenant=tenant, endpoint=name, url=url, events=endpoint["events"])
        self._changed()
        return endpoint | {"secret": secret}

    @admin_method("webhook.list")
    async def list(self, tenant: str | None = None, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
        """Endpoints by name; a tenant's page on from ``after`` (at most ``limit``, -1 all)."""
        if after:
            check_name(after)
        return await self.store.webhooks.list(tenant, after=after, limit=limit)

    @admin_method("webhook.update")
    async def update(self, tenant: str, name: str, url: str | None = None, events: list[str] | None = None,
                     usecase: str | None = None, address: str | None = None, unset: list[str] | None = None,
                     enabled: bool | None = None) -> dict[str, Any]:
        """Change an endpoint: its URL (the same rules as add), events ('*' for every one), narrowing
        to a use case or channel address (``unset`` usecase/address removes it), enabled state."""
        if url is not None:
            check_url(url, allow_loopback=self.allow_loopback())
        bad = [k for k in unset or [] if k not in ("usecase", "address")]
        if bad:
            raise InvalidArgument(f"cannot unset {', '.join(repr(k[:40]) for k in bad[:5])}: only usecase and address")
        if address is not None:
            address = normalise_address(address)
        endpoint = await self.store.webhooks.update(tenant, name, url=url, kinds=False if events is None else check_kinds(events),
                                                    usecase=usecase, address=address, unset=unset, enabled=enabled)
        log.info("webhook_updated", tenant=tenant, endpoint=name, url=endpoint["url"], events=endpoint["events"])
        self._changed()
        return endpoint

    @admin_method("webhook.log")
    async def log(self, tenant: str, name: str, before_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The endpoint's delivery attempts, newest first (older than ``before_id`` when given)."""
        if not 1 <= limit <= 1000:
            raise InvalidArgument("limit is 1-1000")
        return await self.store.webhooks.log(tenant, name, before_id=before_id, limit=limit)

    @admin_method("webhook.show")
    async def show(self, tenant: str, name: str, log_limit: int = 20) -> dict[str, Any]:
        """The endpoint, its backlog and its latest attempts (newest first)."""
        if not 1 <= log_limit <= 1000:
            raise InvalidArgument("log_limit is 1-1000")
        return await self.store.webhooks.show(tenant, name, log_limit)

    @admin_method("webhook.test")
    async def test(self, tenant: str, name: str) -> dict[str, Any]:
        """POST a signed ``webhook_test`` event now (outside the outbox); status and latency."""
        if self.post is None:
            raise InvalidArgument("the webhook sender is not running")
        endpoint, secret = await self.store.webhooks.secret_of(tenant, name)
        now = time.time()
        event = {"id": 0, "type": "webhook_test", "created_at": now, "tenant": tenant, "subject": name,
                 "data": {"message": "a test event from `gateway webhook test`"}}
        body = json.dumps({"events": [event]}, separators=(",", ":")).encode()
        attempt = await self.post(endpoint["url"], secret, body, [0])
        return {"endpoint": name, "url": endpoint["url"], **attempt}

    @admin_method("webhook.enable")
    async def enable(self, tenant: str, name: str) -> dict[str, Any]:
        endpoint = await self.store.webhooks.set_enabled(tenant, name, True)
        self._changed()
        return endpoint

    @admin_method("webhook.disable")
    async def disable(self, tenant: str, name: str) -> dict[str, Any]:
        endpoint = await self.store.webhooks.set_enabled(tenant, name, False, "operator")
        self._changed()
        return endpoint

    @admin_method("webhook.delete")
    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        result = await self.store.webhooks.delete(tenant, name)
        log.info("webhook_deleted", tenant=tenant, endpoint=name, undelivered=result["undelivered"])
        self._changed()
        return result


class EventService:
    def __init__(self, store: Store):
        self.store = store

    @admin_method("events.list")
    async def list(self, tenant: str | None = None, type: str | None = None, since: float | None = None,
                   after_id: int = 0, limit: int = 100, newest: bool = False) -> list[dict[str, Any]]:
        """Events in id order: after ``after_id`` / at or after ``since``; with ``newest`` the last ``limit``."""
        if not 1 <= limit <= MAX_EVENTS_PAGE:
            raise InvalidArgument(f"limit is 1-{MAX_EVENTS_PAGE}")
        if type is not None and not KIND.match(type):
            raise InvalidArgument(f"invalid event type {type!r}")
        tenant_id = (await self.store.tenants.get(tenant))["id"] if tenant is not None else None
        return await self.store.events.list(tenant_id=tenant_id, kind=type, since=since, after_id=max(after_id, 0),
                                            limit=limit, newest=newest)
