"""An in-process daemon on free loopback ports, for integration tests.

    async with running_daemon(tmp_path, {"dns": {"port": 5353}}) as d:
        await d.call("tenant.add", name="acme")      # through the real admin socket
        d.address("submission")                       # '127.0.0.1:40123'
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from gateway.admin.client import AdminClient, AdminError
from gateway.config import Config, parse_config
from gateway.daemon import Daemon
from gateway.paths import Paths

# Every listener on an ephemeral loopback port, so tests never collide; the test sinks, MXs and
# smarthosts live on 127.0.0.1 too, so the loop guard lets loopback through (tests of the guard turn it off).
TEST_OVERRIDES: dict[str, Any] = {
    # The web server in the daemon's process: a child per test costs ~1 s of CPU. The web tests run
    # both ways (WEB_PROCESS below); so do the e2e tests of tests/test_webworker.py.
    "web": {"listen": "127.0.0.1:0", "process": False},
    "api": {"listen": "127.0.0.1:0"},
    "submission": {"listen": "127.0.0.1:0", "listen_tls": "127.0.0.1:0"},
    "inbound": {"listen": "127.0.0.1:0"},
    "daemon": {"shutdown_timeout": 5.0},
    "delivery": {"allow_loopback": True},
    "webhooks": {"allow_loopback": True},
}


# For tests of the web endpoints: pytest.mark.parametrize("web", WEB_PROCESS) and merge(overrides, web).
WEB_PROCESS = [pytest.param({"web": {"process": False}}, id="web-in-daemon"),
               pytest.param({"web": {"process": True}}, id="web-worker")]


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def make_config(overrides: dict | None = None) -> Config:
    return parse_config(merge(TEST_OVERRIDES, overrides or {}))


class DaemonHandle:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    @property
    def store(self):
        return self.daemon.store

    def address(self, name: str) -> str:
        for listener in self.daemon.listeners():
            if listener["name"] == name:
                return listener["address"]
        raise KeyError(f"no listener named {name!r}: {self.daemon.listeners()}")

    def hostport(self, name: str) -> tuple[str, int]:
        host, _, port = self.address(name).rpartition(":")
        return host.strip("[]"), int(port)

    async def call(self, method: str, **params: Any) -> Any:
        """One request over the real admin socket (raises AdminError on an error reply)."""

        def go() -> Any:
            with AdminClient(self.daemon.paths.socket, timeout=30) as client:
                return client.call(method, **params)

        return await asyncio.to_thread(go)


@contextlib.asynccontextmanager
async def running_daemon(tmp_path: Path, overrides: dict | None = None) -> AsyncIterator[DaemonHandle]:
    state = tmp_path / "state"
    paths = Paths(state_dir=state, socket=state / "admin.sock")
    daemon = Daemon(make_config(overrides), paths)
    await daemon.start()
    try:
        yield DaemonHandle(daemon)
    finally:
        await daemon.stop()


__all__ = ["running_daemon", "make_config", "DaemonHandle", "AdminError", "merge", "WEB_PROCESS"]
