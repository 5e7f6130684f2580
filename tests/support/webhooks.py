"""A real HTTP receiver for webhooks: an aiohttp server on 127.0.0.1 in a thread of its own, so
in-process daemons and subprocess daemons alike POST to it.

    with WebhookReceiver() as rx:
        rx.script("/a", [500, 500])          # the first two POSTs to /a get 500, then 200s
        rx.hang("/slow")                      # POSTs to /slow never get an answer
        url = rx.url("/a")
        rx.wait(lambda posts: len(posts) >= 3)   # waits on a condition, never sleeps
        rx.events("/a")                       # the events of every 2xx'd POST, in arrival order

Every POST is recorded (path, headers, body, status given, arrival time) before it is answered.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web


class WebhookReceiver:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._scripts: dict[str, list[int]] = {}
        self._hanging: set[str] = set()
        self._delay: dict[str, float] = {}
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="webhook-receiver", daemon=True)
        self.port = 0

    # ------------------------------------------------------------------ the switches

    def script(self, path: str, statuses: list[int]) -> None:
        """The next POSTs to ``path`` get these statuses in turn; 200 after them."""
        with self._cond:
            self._scripts[path] = list(statuses)

    def hang(self, path: str, on: bool = True) -> None:
        with self._cond:
            (self._hanging.add if on else self._hanging.discard)(path)
            self._cond.notify_all()

    def delay(self, path: str, seconds: float) -> None:
        """Answer POSTs to ``path`` after ``seconds`` (a slow receiver)."""
        with self._cond:
            self._delay[path] = seconds

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # ------------------------------------------------------------------ what arrived

    def wait(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.posts):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"webhook receiver: condition not met within {timeout}s; "
                                         f"{len(self.posts)} POSTs: {[(p['path'], p['status']) for p in self.posts][-20:]}")
                self._cond.wait(left)
            return list(self.posts)

    def of(self, path: str, ok_only: bool = True) -> list[dict[str, Any]]:
        with self._cond:
            return [p for p in self.posts if p["path"] == path and (not ok_only or p["status"] == 200)]

    def events(self, path: str) -> list[dict[str, Any]]:
        """Events of the POSTs to ``path`` that were answered 200, in arrival order."""
        return [e for p in self.of(path) for e in json.loads(p["body"])["events"]]

    # ------------------------------------------------------------------ the server

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path
        with self._cond:
            script = self._scripts.get(path)
            status = script.pop(0) if script else 200
            hanging = path in self._hanging
            delay = self._delay.get(path, 0.0)
            if hanging:
                status = 0
            self.posts.append({"path": path, "headers": dict(request.headers), "body": body, "status": status,
                               "at": time.time()})
            self._cond.notify_all()
        if hanging:
            await self._stop.wait()  # held until the receiver stops or the client gives up
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=status, text="ok" if status == 200 else "receiver says no")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("webhook receiver did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


__all__ = ["WebhookReceiver"]
