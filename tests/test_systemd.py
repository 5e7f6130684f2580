"""The systemd unit, the install script and the notify protocol."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.systemd import Notifier

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "gateway.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_the_hardening_and_lifecycle_the_issue_asks_for():
    s = unit_settings()
    expected = {
        "Type": "notify",
        "User": "gateway",
        "Group": "gateway",
        "StateDirectory": "gateway",
        "RuntimeDirectory": "gateway",
        "ConfigurationDirectory": "gateway",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "PrivateDevices": "true",
        "NoNewPrivileges": "true",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "UMask": "0027",
        "LimitNOFILE": "65536",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "ExecStart": "/opt/gateway/.venv/bin/gateway run --config /etc/gateway/config.toml",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    # The unit must give in-flight work longer than the daemon's own shutdown timeout.
    assert int(s["TimeoutStopSec"][0]) > 30


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify checks that ExecStart exists; point it at this checkout's binary. The file keeps its
    # name: verify derives the unit name from it.
    copy = tmp_path / "gateway.service"
    copy.write_text(UNIT.read_text().replace("/opt/gateway/.venv/bin/gateway", str(Path(sys.executable).parent / "gateway")))
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # In a container verify may note that systemd itself is not running; nothing about our unit.
    assert "gateway.service" not in result.stderr, result.stderr


@pytest.mark.parametrize("script", ["install-systemd", "setup", "run", "test", "update-docs"])
def test_scripts_parse(script):
    path = ROOT / "scripts" / script
    assert os.access(path, os.X_OK)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)


def test_ci_calls_the_test_script():
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_notifier_sends_datagrams_to_path_and_abstract_sockets(tmp_path):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(f"\0gateway-test-{os.getpid()}")
    try:
        receiver.settimeout(5)
        abstract.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}).notify(READY="1", STATUS="up")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
        assert Notifier({"NOTIFY_SOCKET": f"@gateway-test-{os.getpid()}"}).notify(STOPPING="1")
        assert abstract.recv(4096) == b"STOPPING=1"
    finally:
        receiver.close()
        abstract.close()


def test_notifier_without_socket_and_watchdog_interval(tmp_path):
    assert Notifier({}).notify(READY="1") is False
    assert Notifier({}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 0.1
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    # A socket path that does not exist: notify fails quietly, the daemon keeps going.
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).notify(READY="1") is False
