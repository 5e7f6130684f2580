"""What the daemon starts and stops: components.

A component is anything with a lifetime inside the daemon: a listener, a worker pool, the web
server, the admin socket. The daemon starts them in order, reports their listeners in
``gateway status`` and ``/health``, hands them a new Config on SIGHUP, and stops them in reverse
order on SIGTERM, giving in-flight work until ``deadline`` (a ``loop.time()`` value).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from .config import Config


@dataclass
class Listener:
    name: str
    address: str
    up: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "up": self.up}


class Component:
    """Base with do-nothing defaults; subclasses override what they need."""

    name = "component"

    async def start(self) -> None:
        """Bind, spawn tasks. Raise StartupError with one clear line when it cannot."""

    async def stop(self, deadline: float) -> None:
        """Stop accepting new work, let in-flight work finish until ``deadline``, release resources."""

    async def reload(self, config: "Config") -> None:
        """Take a new configuration; new work sees the new values."""

    def listeners(self) -> list[Listener]:
        return []

    def status(self) -> dict[str, Any]:
        """Extra keys merged into `gateway status` (e.g. queue counts)."""
        return {}

    def problems(self) -> list[str]:
        """What is wrong right now, one line each naming the component ("delivery: ..."); any line
        makes /health answer 503. Cheap and synchronous: /health asks on every probe."""
        return []

    def web_routes(self) -> list["web.RouteDef"]:
        """HTTP routes this component serves on the daemon's web server."""
        return []


def format_address(sockname: Any) -> str:
    """A bound socket's name as host:port (IPv6 in brackets) or a path."""
    if isinstance(sockname, str):
        return sockname
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (the daemon and its workers run on it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
