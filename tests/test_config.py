"""Configuration: parsing, every kind of mistake reported by `gateway config check` with exit 2,
and the committed config.example.toml kept equal to the defaults and to `gateway config example`."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path

import pytest

from gateway.config import Config, load_config, parse_config, render_example, render_reference, render_toml, restart_keys, to_dict
from gateway.errors import ConfigError
from gateway.paths import resolve_paths
from tests.support.process import run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += all_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def check(tmp_path: Path, text: str, expect: int = 2):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path, run_cli("config", "check", "--config", str(path), check=expect)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[web]\nlisen = "127.0.0.1:1"\n', "web.lisen: unknown key"),
        ('[nosuch]\nx = 1\n', "nosuch: unknown key"),
        ("[store]\nbatch_max = \"many\"\n", "store.batch_max: expected an integer, got string 'many'"),
        ("[store]\nbatch_max = true\n", "store.batch_max: expected an integer, got boolean True"),
        ("[daemon]\nshutdown_timeout = \"soon\"\n", "daemon.shutdown_timeout: expected a number, got string 'soon'"),
        ("web = 5\n", "web: expected a table [web], got integer"),
        ('[log]\nlevel = "loud"\n', "log.level: expected one of debug, info, warning, error, got 'loud'"),
        ("[store]\nbatch_max = 0\n", "store.batch_max: must be at least 1, got 0"),
        ("[store]\nread_connections = 1000\n", "store.read_connections: must be at most 64, got 1000"),
        ('[web]\nlisten = "localhost"\n', "web.listen: expected host:port, got 'localhost'"),
        ('[web]\nlisten = "localhost:99999"\n', "web.listen: expected a port number 0-65535, got '99999'"),
        # Arabic-Indic digits: str.isdigit and int() accept them, a port written so is a typo or a trick.
        ('[web]\nlisten = "127.0.0.1:\u0668\u0660\u0668\u0660"\n', "web.listen: expected a port number 0-65535, got '\u0668\u0660\u0668\u0660'"),
        ('[web]\nlisten = "127.0.0.1:\u00b2"\n', "web.listen: expected a port number 0-65535, got '\u00b2'"),
        ('[dns]\nnameservers = "1.1.1.1"\n', "dns.nameservers: expected an array, got string '1.1.1.1'"),
        ("[dns]\nnameservers = [1]\n", "dns.nameservers[0]: expected a string, got integer 1"),
    ],
)
def test_config_check_names_the_key_and_exits_2(tmp_path, text, message):
    path, result = check(tmp_path, text)
    assert result.stderr == f"gateway: config error: {path}: {message}\n"
    assert result.stdout == ""


def test_config_check_reports_every_problem(tmp_path):
    path, result = check(tmp_path, '[web]\nlisen = 1\n[log]\nlevel = "x"\nformat = 3\n')
    lines = result.stderr.splitlines()
    assert len(lines) == 3
    assert {line.split(": ")[3] for line in lines} == {"web.lisen", "log.level", "log.format"}


def test_malformed_toml_reports_the_line(tmp_path):
    path, result = check(tmp_path, '[daemon]\nhostname = "a"\nshutdown_timeout = \n')
    assert result.stderr.startswith(f"gateway: config error: {path}: malformed TOML: ")
    assert "line 3" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_missing_file_exits_2(tmp_path):
    result = run_cli("config", "check", "--config", str(tmp_path / "nope.toml"), check=2)
    assert result.stderr == f"gateway: config error: {tmp_path / 'nope.toml'}: no such file\n"


def test_good_file_and_no_file_pass(tmp_path):
    path, result = check(tmp_path, '[log]\nlevel = "debug"\n', expect=0)
    assert result.stdout == f"{path}: ok\n"
    assert run_cli("config", "check").stdout == "(embedded defaults): ok\n"
    # $GATEWAY_CONFIG selects the file when --config is absent.
    result = run_cli("config", "check", env={"GATEWAY_CONFIG": str(path)})
    assert result.stdout == f"{path}: ok\n"


def test_config_show_prints_the_effective_config(tmp_path):
    path, _ = check(tmp_path, '[log]\nlevel = "debug"\n', expect=0)
    shown = tomllib.loads(run_cli("config", "show", "--config", str(path)).stdout)
    assert shown == to_dict(load_config(path))
    assert shown["log"]["level"] == "debug"
    only = tomllib.loads(run_cli("config", "show", "--config", str(path), "--non-default").stdout)
    assert only == {"log": {"level": "debug"}}
    broken, _ = check(tmp_path, "[log]\nlevel = 1\n")
    run_cli("config", "show", "--config", str(broken), check=2)


def test_secrets_are_masked_in_show():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Section:
        user: str = dataclasses.field(default="me", metadata={"doc": "d"})
        password: str = dataclasses.field(default="", metadata={"doc": "d", "secret": True})

    shown = to_dict(Section(password="hunter2"))
    assert shown == {"user": "me", "password": "********"}
    assert to_dict(Section(password="hunter2"), mask=False)["password"] == "hunter2"
    assert to_dict(Section())["password"] == ""  # an empty secret is shown as empty, not as set


def test_example_parses_and_equals_the_defaults():
    assert parse_config(tomllib.loads(EXAMPLE.read_text())) == Config()
    assert load_config(EXAMPLE) == Config()


def test_example_is_what_config_example_prints():
    # Regenerate with: .venv/bin/gateway config example > config.example.toml
    assert run_cli("config", "example").stdout == EXAMPLE.read_text()
    assert render_example() == EXAMPLE.read_text()


def test_example_documents_every_key():
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for key in all_keys():
        section, _, name = key.rpartition(".")
        node = data
        for part in section.split(".") if section else []:
            node = node[part]
        assert name in node or f"# {name} =" in text, key


def test_show_output_round_trips():
    config = parse_config({"log": {"level": "warning"}, "dns": {"nameservers": ["127.0.0.1"], "port": 5353}})
    assert parse_config(tomllib.loads(render_toml(to_dict(config)))) == config


def test_restart_keys_names_what_a_reload_cannot_apply():
    old = Config()
    new = parse_config({"web": {"listen": "127.0.0.1:1"}, "log": {"level": "debug"}})
    assert restart_keys(old, new) == ["web.listen"]
    assert restart_keys(old, old) == []


def test_config_error_lists_problems():
    with pytest.raises(ConfigError) as exc:
        parse_config({"log": {"level": 5, "nope": 1}})
    assert sorted(exc.value.problems) == ["log.level: expected a string, got integer 5", "log.nope: unknown key"]


def test_paths_follow_systemd_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    paths = resolve_paths(Config())
    assert paths.state_dir == tmp_path / "var" and paths.socket == tmp_path / "var" / "admin.sock"
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{tmp_path / 'run'}:{tmp_path / 'other'}")
    paths = resolve_paths(Config())
    assert paths.state_dir == tmp_path / "state" and paths.socket == tmp_path / "run" / "admin.sock"
    assert resolve_paths(Config(), tmp_path / "opt").state_dir == tmp_path / "opt"
    custom = parse_config({"admin": {"socket": str(tmp_path / "x.sock")}})
    assert resolve_paths(custom).socket == tmp_path / "x.sock"


def test_readme_configuration_reference_is_current():
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    assert start in readme and end in readme
    section = readme[readme.index(start) + len(start):readme.index(end)]
    assert section == render_reference(), "README.md's configuration reference is stale: run scripts/update-docs"
    for key in all_keys():
        assert f"`{key}`" in section, key


def test_delivery_workers_reads_auto_or_a_count_and_counts_only_beside_pipelines():
    from gateway.config import delivery_workers_count

    def count(**daemon) -> int:
        return delivery_workers_count(parse_config({"daemon": daemon}).daemon)

    assert count() == 0                                   # one process: nothing beside it
    assert count(workers=2) == 2                          # auto: one per pipeline
    assert count(workers=3, delivery_workers=1) == 1
    assert count(workers=2, delivery_workers="0") == 0    # the pipelines deliver themselves
    assert count(workers=1, delivery_workers=4) == 0
    for bad in ("-1", "x", "65", 1.5):
        with pytest.raises(ConfigError, match="daemon.delivery_workers"):
            parse_config({"daemon": {"delivery_workers": bad}})
