"""The daemon's lifecycle in process: start order, reverse stop within the deadline, failures at
start undoing what started, reload handing the new config to components."""

from __future__ import annotations

import asyncio
import os

import pytest

from gateway.daemon import STOP_GRACE, Daemon
from gateway.errors import StartupError
from gateway.lifecycle import Component
from gateway.paths import Paths
from gateway.statelock import StateLock
from tests.support.daemon import make_config
from tests.support.process import write_config


class Recorder(Component):
    def __init__(self, name: str, journal: list[str], *, fail_start: bool = False, stop_hangs: bool = False,
                 inflight: float = 0.0):
        self.name, self.journal = name, journal
        self.fail_start, self.stop_hangs, self.inflight = fail_start, stop_hangs, inflight
        self.configs: list = []

    async def start(self) -> None:
        if self.fail_start:
            raise StartupError(f"{self.name}: cannot listen on 127.0.0.1:1: address already in use")
        self.journal.append(f"start {self.name}")

    async def stop(self, deadline: float) -> None:
        if self.stop_hangs:
            await asyncio.Event().wait()  # ignores the deadline: the daemon must cut it off
        if self.inflight:
            await asyncio.sleep(self.inflight)  # stands in for in-flight work that finishes in time
        self.journal.append(f"stop {self.name}")

    async def reload(self, config) -> None:
        self.configs.append(config)


class ExtendedDaemon(Daemon):
    def __init__(self, *args, extra: list[Component], **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = extra

    def _build(self) -> None:
        super()._build()
        self.components.extend(self.extra)  # after web and admin, as the real workers go


def make_daemon(tmp_path, extra, overrides=None, config_path=None) -> ExtendedDaemon:
    state = tmp_path / "state"
    return ExtendedDaemon(make_config(overrides), Paths(state_dir=state, socket=state / "admin.sock"), extra=extra,
                      config_path=config_path)


async def test_components_start_in_order_and_stop_in_reverse(tmp_path):
    journal: list[str] = []
    daemon = make_daemon(tmp_path, [Recorder("a", journal), Recorder("b", journal, inflight=0.05)])
    await daemon.start()
    try:
        names = [c.name for c in daemon.components]
        assert names[:2] == ["web", "admin"] and names[-2:] == ["a", "b"]
    finally:
        await daemon.stop()
    assert journal == ["start a", "start b", "stop b", "stop a"]  # b's in-flight work finished before a stopped


async def test_a_failed_start_stops_what_started_and_releases_the_lock(tmp_path):
    journal: list[str] = []
    daemon = make_daemon(tmp_path, [Recorder("a", journal), Recorder("b", journal, fail_start=True)])
    with pytest.raises(StartupError, match="b: cannot listen"):
        await daemon.start()
    assert journal == ["start a", "stop a"]
    assert daemon.store is None
    StateLock(tmp_path / "state" / "gateway.lock").acquire().release()  # free again


async def test_a_stop_that_overruns_the_deadline_is_cut_off(tmp_path):
    journal: list[str] = []
    daemon = make_daemon(tmp_path, [Recorder("a", journal), Recorder("stuck", journal, stop_hangs=True)],
                         {"daemon": {"shutdown_timeout": 0.1}})
    await daemon.start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await daemon.stop()
    assert loop.time() - began < 0.1 + STOP_GRACE + 1
    assert journal == ["start a", "start stuck", "stop a"]  # the others still stopped, the store flushed
    assert daemon.store is None


async def test_reload_hands_the_new_config_to_components(tmp_path):
    journal: list[str] = []
    rec = Recorder("a", journal)
    path = write_config(tmp_path / "config.toml")
    daemon = make_daemon(tmp_path, [rec], config_path=str(path))
    await daemon.start()
    try:
        write_config(path, {"daemon": {"hostname": "new.example"}, "admin": {"max_request_bytes": 4096}})
        assert await daemon.reload() is True
        assert rec.configs[-1].daemon.hostname == "new.example"
        assert daemon.config.daemon.hostname == "new.example"
        admin = next(c for c in daemon.components if c.name == "admin")
        assert admin.max_request_bytes == 4096
        path.write_text("[daemon]\nhostname = 1\n")
        assert await daemon.reload() is False
        assert daemon.config.daemon.hostname == "new.example" and len(rec.configs) == 1
        assert daemon.reloads == 1
        applied = daemon.metrics.registry.get_sample_value("gateway_config_reloads_total", {"outcome": "applied"})
        refused = daemon.metrics.registry.get_sample_value("gateway_config_reloads_total", {"outcome": "refused"})
        assert (applied, refused) == (1, 1)
    finally:
        await daemon.stop()


async def test_state_lock_names_the_holder(tmp_path):
    lock = StateLock(tmp_path / "gateway.lock").acquire()
    try:
        with pytest.raises(StartupError) as exc:
            StateLock(tmp_path / "gateway.lock").acquire()
        assert str(exc.value) == f"another gateway (pid {os.getpid()}) is already running on state directory {tmp_path}"
    finally:
        lock.release()
