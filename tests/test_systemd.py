"""The systemd unit, the install script and the notify protocol."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gateway.systemd import Notifier
from tests.support.sandbox import unit_settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "gateway.service"


def test_unit_has_the_hardening_and_lifecycle_the_issue_asks_for():
    s = unit_settings(UNIT)
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
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "MemoryDenyWriteExecute": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
        "SystemCallErrorNumber": "EPERM",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], key
    assert s["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert "IPAddressDeny" not in s and "PrivateUsers" not in s  # a mail daemon talks to any MX, binds low ports
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


def exposure(unit: Path) -> float:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=60)
    line = next(l for l in result.stdout.splitlines() if "Overall exposure level" in l)
    return float(line.split(":")[1].split()[0])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_exposure_rating_is_at_most_2(tmp_path):
    # 3.4 before the system call filter, address families, /proc, W^X, IPC and mount settings.
    assert exposure(UNIT) <= 2.0
    # The check can fail: the same unit without its system call filter rates worse.
    weaker = tmp_path / "gateway.service"
    weaker.write_text("\n".join(l for l in UNIT.read_text().splitlines() if not l.startswith(("SystemCallFilter", "ProcSubset"))))
    assert exposure(weaker) > exposure(UNIT)


NOBODY = 65534


def confinement_available() -> bool:
    if shutil.which("systemd-analyze") is None or os.geteuid() != 0:
        return False
    import ctypes.util

    return ctypes.util.find_library("seccomp") is not None and shutil.which("setpriv") is not None


def free_privileged_port() -> int:
    """A loopback port below 1024 nobody listens on: only CAP_NET_BIND_SERVICE lets a non-root user bind it."""
    for port in range(900, 1024):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024 on 127.0.0.1")


@pytest.mark.skipif(not confinement_available(), reason="needs root (mount namespace), libseccomp and systemd-analyze")
async def test_daemon_starts_binds_and_delivers_under_the_units_confinement(dns_server):
    """Not systemd itself (this machine does not boot with it): tests/support/sandbox.py applies the
    unit's system call filter, address families, W^X, capabilities (as user nobody with only the
    ambient CAP_NET_BIND_SERVICE), read-only file system, empty homes, private /dev and /proc subset
    as the kernel sees them, then execs the daemon."""
    import aiohttp
    import aiosmtplib

    from gateway.submission import client_tls_context
    from tests.support.daemon import merge
    from tests.support.delivery import FAST_RETRIES, message, publish_mx
    from tests.support.dns import dns_overrides
    from tests.support.process import AdminHandle, GatewayProcess
    from tests.support.sink import mail_sink
    from tests.support.tenancy import sending_setup

    # The daemon runs as nobody (User= in the unit is gateway): pytest's own temp dirs are root's only.
    base = Path(tempfile.mkdtemp(prefix="gateway-unit-"))
    try:
        async with mail_sink() as sink:
            publish_mx(dns_server, "dest.test")
            low = free_privileged_port()  # the web listener, as the real ports 25/465/587 would need
            overrides = merge(dns_overrides(dns_server), {"delivery": {**FAST_RETRIES, "remote_port": sink.port},
                                                          "web": {"listen": f"127.0.0.1:{low}", "process": True}})
            base.chmod(0o755)
            state = base / "gw" / "state"
            state.mkdir(parents=True)
            os.chown(state, NOBODY, NOBODY)
            wrapper = [sys.executable, "-m", "tests.support.sandbox", str(UNIT), "--rw", str(state), "--user", f"{NOBODY}:{NOBODY}", "--"]
            gw = GatewayProcess(base, overrides, wrapper=wrapper, state_dir=state)
            gw.notify.path.chmod(0o777)  # systemd's notify socket takes datagrams from the service's user
            with gw:
                assert state.stat().st_uid == NOBODY and (state / "gateway.db").stat().st_uid == NOBODY
                admin = AdminHandle(gw)
                status = await admin.call("status")
                up = {l["name"]: l["up"] for l in status["listeners"]}
                assert all(up.get(name) for name in ("submission", "submissions", "web", "admin")), up
                assert any(l["name"] == "web" and l["address"] == f"127.0.0.1:{low}" for l in status["listeners"])
                # The web worker (the default) runs under the same confinement and serves the daemon's port.
                [worker] = status["workers"]
                assert worker["up"] and worker["pid"] != gw.proc.pid
                async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{low}/health") as resp:
                    assert resp.status == 200 and (await resp.json())["ok"] is True
                setup = await sending_setup(admin, dns_server)
                port = await admin.listener_port("submission")
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=client_tls_context(), timeout=10)
                async with smtp:
                    await smtp.login(setup["username"], setup["password"])
                    await smtp.sendmail(setup["sender"], ["bob@dest.test"], message(setup["sender"], ["bob@dest.test"]))
                (received,) = await sink.wait_for(1)
                assert received.rcpt_tos == ["bob@dest.test"] and b"DKIM-Signature:" in received.data
                assert gw.stop() == 0
            log = gw.stderr
            assert "Operation not permitted" not in log and "Traceback" not in log and "sandbox:" not in log, log[-3000:]
    finally:
        shutil.rmtree(base)
