"""Admin methods about the daemon itself: status, health, metrics, config (gateway/daemon.py answers)."""

from __future__ import annotations

from typing import Any

from ..admin.registry import admin_method
from ..config import to_dict


class DaemonService:
    """Admin methods about the daemon itself."""

    def __init__(self, daemon: Any):  # gateway.daemon.Daemon (which builds this service)
        self.daemon = daemon

    @admin_method("status")
    async def status(self) -> dict[str, Any]:
        return await self.daemon.live_status()

    @admin_method("daemon.health")
    async def health(self) -> dict[str, Any]:
        """What /health answers: {ok, problems, ...} (the web worker serves it from here)."""
        ok, detail = await self.daemon.health()
        return {"ok": ok, **detail}

    @admin_method("daemon.metrics")
    async def metrics(self) -> str:
        """The daemon's /metrics exposition text, its pipeline workers' included (the web worker adds its own)."""
        return (await self.daemon.exposition()).decode()

    @admin_method("ping")
    async def ping(self) -> str:
        return "pong"

    @admin_method("config.show")
    async def config_show(self, non_default: bool = False) -> dict[str, Any]:
        return to_dict(self.daemon.config, non_default=non_default)

    @admin_method("config.reload")
    async def config_reload(self) -> bool:
        return await self.daemon.reload()
