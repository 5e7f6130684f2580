"""The daemon's HTTP server (aiohttp): /health, /metrics, and routes components contribute.

It runs inside the daemon (``web.process = false``) or in the web worker (gateway/webworker.py),
which serves it on the socket the daemon bound and answers /metrics with both processes' figures.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import split_hostport
from .errors import StartupError
from .lifecycle import Component, Listener, format_address
from .metrics import Metrics


async def start_site(runner: web.AppRunner, site: web.BaseSite, name: str, listen: str) -> str:
    """Start ``site``; the address it bound ('' when aiohttp shows none). A bind that fails cleans the
    runner up and is a StartupError naming the listener (the web server's and the API's, alike)."""
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"{name}: cannot listen on {listen}: {why}") from None
    sockets = site._server.sockets if site._server else []  # noqa: SLF001 - aiohttp exposes no public accessor
    return format_address(sockets[0].getsockname()) if sockets else ""


class WebServer(Component):
    name = "web"

    def __init__(self, listen: str, metrics: Metrics, health: Callable[[], Awaitable[tuple[bool, dict]]],
                 routes: list[web.RouteDef] | None = None, *, sock: socket.socket | None = None,
                 exposition: Callable[[], Awaitable[bytes]] | None = None):
        self.listen = listen
        self.metrics = metrics
        self.health = health
        self.extra_routes = routes or []
        self.sock = sock  # bound and listening already (the web worker's, inherited from the daemon)
        self.exposition = exposition or self._own_exposition
        self._runner: web.AppRunner | None = None
        self._address = listen

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_routes(self.extra_routes)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.sock is not None:
            site: web.BaseSite = web.SockSite(self._runner, self.sock)
        else:
            host, port = split_hostport(self.listen)
            site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            self._address = await start_site(self._runner, site, "web", self.listen) or self._address
        except StartupError:
            self._runner = None
            raise

    async def stop(self, deadline: float) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def listeners(self) -> list[Listener]:
        return [Listener("web", self._address, up=self._runner is not None)]

    async def _health(self, request: web.Request) -> web.Response:
        ok, detail = await self.health()
        status = 200 if ok else 503
        self.metrics.http_requests.labels(path="/health", status=str(status)).inc()
        return web.json_response({"ok": ok, **detail}, status=status)

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.http_requests.labels(path="/metrics", status="200").inc()
        body = await self.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _own_exposition(self) -> bytes:
        return generate_latest(self.metrics.registry)
