"""The `gateway` CLI as operators run it (a subprocess) against a running daemon (a subprocess):
tenants, output forms and exit codes (0 ok, 1 operational, 2 usage or invalid value)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from gateway.store import Store
from tests.support.process import GatewayProcess, run_cli


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    with GatewayProcess(tmp_path_factory.mktemp("cli")) as process:
        yield process
        assert process.stop() == 0


def err_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_tenant_lifecycle(gw):
    added = gw.cli("tenant", "add", "acme", "--display-name", "Acme Inc", "--quota", "1000")
    assert added.stdout.splitlines()[0].split() == ["name", "acme"]
    assert "Acme Inc" in added.stdout
    assert gw.cli_json("tenant", "add", "globex")["name"] == "globex"

    rows = gw.cli_json("tenant", "list")
    assert [(r["name"], r["display_name"], r["enabled"], r["monthly_quota"]) for r in rows] == [
        ("acme", "Acme Inc", True, 1000), ("globex", "", True, 0)]
    table = gw.cli("tenant", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "DISPLAY", "NAME", "ENABLED", "OUTBOUND", "QUOTA"]
    assert table[1].split()[0] == "acme" and table[2].split()[0] == "globex"

    shown = gw.cli_json("tenant", "show", "acme")
    assert shown["owns"] == [] and shown["enabled"] is True and shown["outbound_enabled"] is True

    assert gw.cli_json("tenant", "disable", "acme", "--outbound")["outbound_enabled"] is False
    assert gw.cli_json("tenant", "disable", "acme")["enabled"] is False
    assert "enabled           no" in gw.cli("tenant", "show", "acme").stdout
    assert gw.cli_json("tenant", "enable", "acme")["enabled"] is True
    assert gw.cli_json("tenant", "enable", "acme", "--outbound")["outbound_enabled"] is True
    assert gw.cli_json("tenant", "update", "acme", "--quota", "5")["monthly_quota"] == 5

    assert gw.cli("tenant", "delete", "globex").stdout == "deleted tenant globex\n"
    assert [r["name"] for r in gw.cli_json("tenant", "list")] == ["acme"]


def test_exit_codes_and_one_line_errors(gw):
    gw.cli("tenant", "add", "dup")
    assert err_line(gw.cli("tenant", "add", "dup", check=1)) == "gateway: a tenant named 'dup' already exists"
    assert err_line(gw.cli("tenant", "show", "ghost", check=1)) == "gateway: no tenant named 'ghost'"
    for verb in ("enable", "disable", "delete"):
        assert err_line(gw.cli("tenant", verb, "ghost", check=1)) == "gateway: no tenant named 'ghost'"
    assert err_line(gw.cli("tenant", "add", "Not Valid", check=2)).startswith("gateway: invalid tenant name 'Not Valid'")
    # click's own usage errors: exit 2 as well.
    assert "Invalid value for '--quota'" in gw.cli("tenant", "add", "x", "--quota", "-1", check=2).stderr
    assert "Missing argument 'NAME'" in gw.cli("tenant", "add", check=2).stderr
    assert "No such command" in gw.cli("tenant", "explode", check=2).stderr
    assert "No such option" in gw.cli("status", "--bogus", check=2).stderr


def test_empty_list_says_none(tmp_path):
    with GatewayProcess(tmp_path) as fresh:
        assert fresh.cli_json("tenant", "list") == []
        assert fresh.cli("tenant", "list").stdout.splitlines()[-1] == "(none)"
        assert fresh.stop() == 0


async def test_delete_refuses_while_the_tenant_owns_something(gw):
    gw.cli("tenant", "add", "owner")
    tenant_id = gw.cli_json("tenant", "show", "owner")["id"]
    # A domain row, written through the store beside the running daemon (SQLite in WAL mode).
    # The domains service is not this test's business; the row only has to exist.
    store = await Store.open(gw.state_dir / "gateway.db")
    try:
        await store.db.write(lambda c: c.execute(
            "INSERT INTO domains (tenant_id, name, verification_token, created_at) VALUES (?, 'owner.example.com', 't', ?)",
            (tenant_id, time.time())))
        assert gw.cli_json("tenant", "show", "owner")["owns"] == ["domain owner.example.com"]
        result = gw.cli("tenant", "delete", "owner", check=1)
        assert err_line(result) == ("gateway: tenant 'owner' still owns: domain owner.example.com; delete those first")
        assert gw.cli_json("tenant", "show", "owner")["name"] == "owner"
        await store.db.write(lambda c: c.execute("DELETE FROM domains WHERE tenant_id = ?", (tenant_id,)))
    finally:
        await store.close()
    assert gw.cli_json("tenant", "delete", "owner")["name"] == "owner"
    gw.cli("tenant", "show", "owner", check=1)


def test_socket_found_from_state_dir_and_environment(gw):
    # --state-dir: the socket is where the daemon puts it by default.
    assert run_cli("--state-dir", str(gw.state_dir), "status", "--json").returncode == 0
    assert run_cli("status", "--json", env={"GATEWAY_SOCKET": str(gw.socket_path)}).returncode == 0
    assert run_cli("status", "--json", env={"STATE_DIRECTORY": str(gw.state_dir)}).returncode == 0


def test_status_human_and_json(gw):
    status = gw.cli_json("status")
    assert set(status) >= {"version", "pid", "started_at", "uptime_seconds", "state_dir", "socket", "listeners", "reloads"}
    text = gw.cli("status").stdout
    assert text.startswith(f"gateway {status['version']}  pid {status['pid']}  up ")
    assert f"state dir  {gw.state_dir}" in text
    # The node (gateway/node.py: made at the first start, kept in the state dir) and its leased jobs.
    assert status["node"] == (gw.state_dir / "node-id").read_text().strip()
    assert f"node       {status['node']}  jobs: domains.reverify running  inbound.processor running  sweeper running" in text


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("gateway, version ")
    helptext = run_cli("--help").stdout
    bare = run_cli(check=None)  # no command: the help, not a one-line error
    assert "Commands:" in bare.stdout + bare.stderr and "\\n" not in bare.stdout + bare.stderr
    for command in ("run", "status", "config", "tenant"):
        assert f"  {command}" in helptext


def test_cli_import_stays_light():
    # The CLI is run for every operator command: it must not pay for the daemon's libraries.
    code = ("import sys, gateway.cli; heavy = ['aiohttp', 'structlog', 'sqlite3', 'prometheus_client', 'aiosmtpd', "
            "'aiosmtplib', 'dkim', 'dns', 'cryptography', 'argon2', 'uvloop']; "
            "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def hostile_cases():
    return [
        (["tenant", "add", "big", "--quota", str(2**64)], "--quota"),
        (["tenant", "add", "big", "--quota", "1000000001"], "--quota"),
        (["tenant", "update", "acme", "--quota", str(-(2**70))], "--quota"),
        (["usecase", "add", "acme", "--domain", "acme.test", "--name", "u", "--entity", "Acme", "--kind", "transactional",
          "--from", "a@acme.test", "--rate-limit", str(2**70)], "--rate-limit"),
        (["tenant", "add", "evil", "--display-name", "\x1b]0;pwned\x07\x1b[2J"], "display name"),
        (["tenant", "add", "evil", "--display-name", "two\nlines"], "display name"),
        (["tenant", "add", "evil", "--display-name", "right\u202eleft"], "display name"),
        (["tenant", "add", "evil", "--display-name", "x" * 100_000], "display name"),
        (["tenant", "add", os.fsdecode(b"caf\xe9")], "UTF-8"),
        (["tenant", "update", "acme", "--display-name", os.fsdecode(b"\xff\xfe")], "UTF-8"),
        (["connector", "add", "acme", "relay", "--kind", "smtp", "--host", "a" * 100_000], "host"),
        (["connector", "add", "acme", "relay", "--kind", "smtp", "--host", "relay\x1b.test"], "host"),
        (["usecase", "add", "acme", "--domain", "acme.test", "--name", "u", "--entity", "E\x1b[1m", "--kind", "transactional",
          "--from", "a@acme.test"], "entity"),
        (["domain", "reverify", "--older-than", "nan"], "older"),
        (["domain", "reverify", "--older-than", "inf"], "older"),
        (["domain", "add", "acme", "d" * 100_000 + ".test"], "domain"),
    ]


def test_hostile_arguments_get_one_line_and_exit_2(gw):
    gw.cli("tenant", "add", "acme", check=None)
    before = gw.cli_json("tenant", "show", "acme")
    for args, names in hostile_cases():
        result = gw.cli(*args, check=None)
        assert result.returncode == 2, (args[:3], result.stdout, result.stderr[-500:])
        line = err_line(result)
        assert line.startswith("gateway: ") and names in line and len(line) < 300, (args[:3], line)
        assert "internal error" not in line and "\x1b" not in line
    # Nothing of it reached the store.
    assert [r["name"] for r in gw.cli_json("tenant", "list") if r["name"] in ("big", "evil")] == []
    assert gw.cli_json("tenant", "show", "acme") == before


async def test_stored_control_characters_are_printed_escaped(gw):
    # Written by an older version (or by hand) straight into the database: the CLI must not pass
    # a terminal escape through to the operator's terminal.
    gw.cli("tenant", "add", "legacy")
    store = await Store.open(gw.state_dir / "gateway.db")
    try:
        await store.db.write(lambda c: c.execute("UPDATE tenants SET display_name = ? WHERE name = 'legacy'",
                                                 ("Evil\x1b]0;owned\x07\x1b[2J\nfake row\u202e",)))
    finally:
        await store.close()
    for args in (["tenant", "show", "legacy"], ["tenant", "list"]):
        out = gw.cli(*args).stdout
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "fake row" in out
        assert "Evil\\x1b]0;owned\\x07\\x1b[2J\\nfake row\\u202e" in out
        assert not any(line.startswith("fake row") for line in out.splitlines())
    # --json keeps the stored value exactly (JSON escapes it).
    assert gw.cli_json("tenant", "show", "legacy")["display_name"] == "Evil\x1b]0;owned\x07\x1b[2J\nfake row\u202e"
    assert "\x1b" not in gw.cli("tenant", "show", "legacy", "--json").stdout


def test_explicit_flags_beat_the_environment_and_mutations_name_the_daemon(gw, tmp_path):
    # A second daemon that $GATEWAY_SOCKET points at: an explicit --state-dir or --config must win.
    with GatewayProcess(tmp_path, name="other") as other:
        env = {"GATEWAY_SOCKET": str(other.socket_path)}
        ours = gw.cli_json("status")["pid"]
        added = run_cli("--state-dir", str(gw.state_dir), "tenant", "add", "by-state-dir", env=env)
        assert added.stderr == f"gateway: acted on the daemon at {gw.socket_path} (pid {ours})\n"
        config = tmp_path / "points-at-gw.toml"
        config.write_text(f'[admin]\nsocket = "{gw.socket_path}"\n')
        run_cli("--config", str(config), "tenant", "add", "by-config", env=env)
        # The environment still counts when no flag says otherwise; then the other daemon acts, and says so.
        theirs = other.cli_json("status")["pid"]
        added = run_cli("tenant", "add", "by-env", env=env)
        assert added.stderr == f"gateway: acted on the daemon at {other.socket_path} (pid {theirs})\n"
        assert [t["name"] for t in other.cli_json("tenant", "list")] == ["by-env"]
        assert other.stop() == 0
    names = {t["name"] for t in gw.cli_json("tenant", "list")}
    assert {"by-state-dir", "by-config"} <= names and "by-env" not in names
    # Read-only commands and --json output say nothing extra.
    assert gw.cli("tenant", "list").stderr == ""
    assert gw.cli("tenant", "add", "quiet-json", "--json").stderr == ""


def test_listings_show_human_utc_times_and_json_keeps_seconds(gw):
    import re

    gw.cli("tenant", "add", "paused")
    gw.cli("pause", "--tenant", "paused")
    try:
        rows = gw.cli_json("pause", "--list")
        assert isinstance(rows[0]["created_at"], float)
        text = gw.cli("pause", "--list").stdout
        since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(rows[0]["created_at"]))
        assert re.search(rf"{since}:\d\dZ", text), text
        assert str(rows[0]["created_at"]) not in text and str(int(rows[0]["created_at"])) not in text
        status = gw.cli("status").stdout
        assert re.search(r"\(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\)", status), status
    finally:
        gw.cli("resume", "--tenant", "paused")
