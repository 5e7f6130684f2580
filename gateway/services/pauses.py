"""Pausing outbound mail: everywhere, for one tenant, or for one use case of a tenant.

Paused mail is still accepted on the submission ports and queued, held with reason 'paused'; on
resume it flows again. See store/pauses.py for how overlapping pauses combine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from .. import validate
from ..admin.registry import admin_method
from ..errors import InvalidArgument
from ..store import Store

log = structlog.get_logger("queue")


def _check(tenant: str | None, usecase: str | None) -> None:
    validate.optional_name(tenant, "tenant")
    validate.optional_name(usecase, "use case")
    if usecase is not None and tenant is None:
        raise InvalidArgument("a use case is named within its tenant: add --tenant")


class PauseService:
    def __init__(self, store: Store, *, wake: Callable[[], Any] | None = None, on_change: Callable[[], Any] | None = None):
        self.store = store
        self.wake = wake
        self.on_change = on_change

    @admin_method("pause")
    async def pause(self, tenant: str | None = None, usecase: str | None = None) -> dict[str, Any]:
        _check(tenant, usecase)
        result = await self.store.pauses.pause(tenant, usecase)
        log.info("paused", scope=result["scope"], what=result["paused"], held=result["held"])
        if self.on_change is not None:
            self.on_change()
        return result

    @admin_method("resume")
    async def resume(self, tenant: str | None = None, usecase: str | None = None) -> dict[str, Any]:
        _check(tenant, usecase)
        result = await self.store.pauses.resume(tenant, usecase)
        log.info("resumed", scope=result["scope"], what=result["resumed"], released=result["released"],
                 still_paused=result["still_paused"])
        if self.wake is not None and result["released"]:
            self.wake()
        if self.on_change is not None:
            self.on_change()
        return result

    @admin_method("pause.list")
    async def list(self) -> list[dict[str, Any]]:
        return await self.store.pauses.list()
