"""`gateway run` as a real subprocess, started the way systemd starts it, and the CLI beside it.

    with GatewayProcess(tmp_path, {"log": {"level": "debug"}}) as gw:   # waits for READY=1
        gw.cli("status", "--json")                                     # the real `gateway` command
        gw.reload()                                                    # SIGHUP, waits for its STATUS=
        gw.stop()                                                      # SIGTERM, returns the exit code

The test owns the NOTIFY_SOCKET: a datagram socket in the temp dir. Waiting reads datagrams with a
deadline (an event), never sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config import render_toml
from tests.support.daemon import TEST_OVERRIDES, merge

BIN = Path(sys.executable).parent
GATEWAY = str(BIN / "gateway")
# How long `gateway run` may take to become ready, or to exit when it must refuse to start: a guard
# against a hang, never a figure a test asserts (a passing test waits only for the event). A start
# costs ~2.5 s of CPU (imports, migrations, a TLS key); on 2 cores shared by xdist workers and other
# jobs (load 15) it took over 30 s.
START_TIMEOUT = 60.0


def gateway_env(**extra: str) -> dict[str, str]:
    """A clean environment: nothing systemd-ish leaks in from the one running the tests."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY", "RUNTIME_DIRECTORY",
                        "GATEWAY_CONFIG", "GATEWAY_SOCKET"}}
    env.update(extra)
    return env


def write_config(path: Path, overrides: dict | None = None) -> Path:
    path.write_text(render_toml(merge(TEST_OVERRIDES, overrides or {})) + "\n")
    return path


class NotifySocket:
    """The systemd side of sd_notify: a bound AF_UNIX datagram socket that records what arrives."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)  # left by an earlier process in the same test
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.bind(str(path))
        except OSError:
            self.sock.close()
            raise
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            raw = self.sock.recv(65536)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in raw.decode().splitlines() if "=" in line)
        self.messages.append(fields)
        return fields

    def wait_for(self, predicate, timeout: float = 15.0, process: subprocess.Popen | None = None) -> dict[str, str]:
        """Read datagrams until one satisfies ``predicate``; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.receive(min(left, 0.5) if process is not None else left)
            if msg is not None and predicate(msg):
                return msg
            if msg is None and process is not None and process.poll() is not None:
                raise AssertionError(f"gateway exited with {process.returncode} before the awaited notification: "
                                     f"{self.messages}")
        raise AssertionError(f"no matching notification within {timeout}s; got {self.messages}")

    def drain(self) -> list[dict[str, str]]:
        """Record whatever is queued already (e.g. after the process exited); returns every message."""
        self.sock.setblocking(False)
        try:
            while True:
                raw = self.sock.recv(65536)
                self.messages.append(dict(line.split("=", 1) for line in raw.decode().splitlines() if "=" in line))
        except BlockingIOError:
            pass
        return self.messages

    def close(self) -> None:
        self.sock.close()


class GatewayProcess:
    def __init__(self, tmp_path: Path, overrides: dict | None = None, *, env: dict[str, str] | None = None,
                 state_dir: Path | None = None, name: str = "gw", wrapper: list[str] | None = None, cwd: Path | None = None):
        self.dir = tmp_path / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = write_config(self.dir / "config.toml", overrides)
        self.state_dir = state_dir or self.dir / "state"
        self.socket_path = self.state_dir / "admin.sock"
        self.stderr_path = self.dir / "stderr.log"
        self.notify = NotifySocket(self.dir / "notify.sock")
        self.extra_env = env or {}
        self.wrapper = wrapper or []  # a command the daemon runs under (tests/support/sandbox.py)
        self.cwd = cwd  # the directory it is started in (the caller's by default)
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ life

    def start(self, wait_ready: bool = True) -> "GatewayProcess":
        env = gateway_env(NOTIFY_SOCKET=str(self.notify.path), **self.extra_env)
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [*self.wrapper, GATEWAY, "run", "--config", str(self.config_path), "--state-dir", str(self.state_dir)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr, cwd=self.cwd,
        )
        if wait_ready:
            try:
                self.notify.wait_for(lambda m: m.get("READY") == "1", timeout=START_TIMEOUT, process=self.proc)
            except BaseException:
                self.close()
                raise AssertionError(f"gateway did not become ready; its stderr:\n{self.stderr}") from None
        return self

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def reload(self, timeout: float = 15.0) -> dict[str, str]:
        """SIGHUP; returns the STATUS notification that says how the reload went."""
        self.signal(signal.SIGHUP)
        return self.notify.wait_for(
            lambda m: m.get("READY") == "1" and "reload" in m.get("STATUS", ""), timeout, process=self.proc
        )

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.notify.drain()
        return code

    def __enter__(self) -> "GatewayProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and not self._stderr.closed:
            self._stderr.close()
        if self.notify.sock.fileno() != -1:
            self.notify.drain()
            self.notify.close()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # ------------------------------------------------------------------ the CLI

    def cli(self, *args: str, check: int | None = 0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `gateway --socket <ours> ARGS`; ``check`` is the exit code expected (None: any)."""
        return run_cli("--socket", str(self.socket_path), *args, check=check, env=env)

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)


class AdminHandle:
    """What tests.support.tenancy needs of a daemon (``call``), over a subprocess daemon's admin socket."""

    def __init__(self, gw: "GatewayProcess"):
        self.gw = gw

    async def call(self, method: str, **params: Any) -> Any:
        import asyncio

        from gateway.admin.client import AdminClient

        def go() -> Any:
            with AdminClient(self.gw.socket_path, timeout=30) as client:
                return client.call(method, **params)

        return await asyncio.to_thread(go)

    async def listener_port(self, name: str) -> int:
        """The port a listener of the running daemon is bound to (listeners may be on port 0)."""
        status = await self.call("status")
        address = next(l["address"] for l in status["listeners"] if l["name"] == name)
        return int(address.rpartition(":")[2])


def run_cli(*args: str, check: int | None = 0, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    result = subprocess.run([GATEWAY, *args], env=gateway_env(**(env or {})), capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if check is not None:
        assert result.returncode == check, (
            f"gateway {' '.join(args)} exited {result.returncode}, expected {check}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


__all__ = ["GatewayProcess", "NotifySocket", "run_cli", "gateway_env", "write_config", "GATEWAY"]
