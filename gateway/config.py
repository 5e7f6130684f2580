"""Configuration: TOML parsed into frozen, typed values, with every default in this file.

Each section is a frozen dataclass; a field's ``metadata`` carries its documentation and its
constraints (``doc``, ``choices``, ``min``, ``max``, ``kind``, ``secret``). The parser walks the
dataclasses, so adding a key is adding a field: the validator, ``gateway config show`` and
``gateway config example`` (which writes ``config.example.toml``) all follow.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

MASK = "********"


def setting(default: Any, doc: str, **constraints: Any) -> Any:
    """A config field: its default, the line that documents it, and its constraints."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **constraints})
    return field(default=default, metadata={"doc": doc, **constraints})


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    hostname: str = setting("localhost", "Name the gateway gives itself: EHLO, Received headers, Message-IDs without a domain.")
    shutdown_timeout: float = setting(30.0, "Seconds in-flight work gets to finish after SIGTERM before the daemon exits.", min=0.0)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = setting("info", "Lowest level logged.", choices=("debug", "info", "warning", "error"))
    format: str = setting("auto", "auto: readable on a terminal, JSON lines otherwise (journald).", choices=("auto", "console", "json"))


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    listen: str = setting("127.0.0.1:8025", "host:port of the HTTP server (/health, /metrics).", kind="hostport")


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    socket: str = setting("", "Path of the admin socket. Empty: $RUNTIME_DIRECTORY/admin.sock, else <state dir>/admin.sock.")
    max_request_bytes: int = setting(1024 * 1024, "Longest request line the admin socket accepts.", min=1024)


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    batch_max: int = setting(1000, "Most writes the writer commits in one transaction (group commit).", min=1)
    read_connections: int = setting(4, "Threads, each with its own read connection.", min=1, max=64)


@dataclass(frozen=True, kw_only=True)
class DnsConfig:
    nameservers: list[str] = setting([], "Resolvers to query (IP addresses). Empty: those of /etc/resolv.conf.")
    port: int = setting(53, "UDP/TCP port of the resolvers (tests point this at a local server).", min=1, max=65535)
    timeout: float = setting(5.0, "Seconds one DNS lookup may take before it is an error.", min=0.1)


@dataclass(frozen=True, kw_only=True)
class Config:
    daemon: DaemonConfig = section(DaemonConfig, "The daemon itself.")
    log: LogConfig = section(LogConfig, "Logging (structlog).")
    web: WebConfig = section(WebConfig, "HTTP server.")
    admin: AdminConfig = section(AdminConfig, "Admin socket that the gateway CLI talks to.")
    store: StoreConfig = section(StoreConfig, "SQLite store under the state directory.")
    dns: DnsConfig = section(DnsConfig, "DNS resolution (domain verification, MX lookups).")


# --------------------------------------------------------------------------- parsing

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true or false)"}


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _check_scalar(path: str, expected: type, value: Any, meta: dict, problems: list[str]) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        problems.append(f"{path}: expected {_TYPE_NAMES.get(expected, expected.__name__)}, got {_type_name(value)} {value!r}")
        return None
    if "choices" in meta and value not in meta["choices"]:
        problems.append(f"{path}: expected one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        problems.append(f"{path}: must be at least {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        problems.append(f"{path}: must be at most {meta['max']}, got {value!r}")
    if meta.get("kind") == "hostport":
        try:
            split_hostport(value)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    return value


def _parse_section(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        path = f"{prefix}{name}"
        value, expected, meta = data[name], hints[name], dict(f.metadata)
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a table [{path}], got {_type_name(value)}")
                continue
            values[name] = _parse_section(expected, value, f"{path}.", problems)
        elif typing.get_origin(expected) is list:
            (item_type,) = typing.get_args(expected)
            if not isinstance(value, list):
                problems.append(f"{path}: expected an array, got {_type_name(value)} {value!r}")
                continue
            items = [_check_scalar(f"{path}[{i}]", item_type, v, meta, problems) for i, v in enumerate(value)]
            values[name] = items
        elif typing.get_origin(expected) in (typing.Union, types.UnionType):
            inner = [t for t in typing.get_args(expected) if t is not type(None)][0]
            values[name] = _check_scalar(path, inner, value, meta, problems)
        else:
            values[name] = _check_scalar(path, expected, value, meta, problems)
    if problems:
        return None
    return cls(**values)


def parse_config(data: dict) -> Config:
    """Turn parsed TOML into a Config, or raise ConfigError listing every problem."""
    problems: list[str] = []
    config = _parse_section(Config, data, "", problems)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | os.PathLike | None) -> Config:
    """Load ``path``; with None, the embedded defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends in "(at line N, column M)".
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from None


def config_path_from(option: str | None) -> str | None:
    """--config wins, then $GATEWAY_CONFIG, then no file at all."""
    return option or os.environ.get("GATEWAY_CONFIG") or None


def split_hostport(value: str) -> tuple[str, int]:
    """'127.0.0.1:2525' or '[::1]:2525' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected a port number 0-65535, got {port!r}")
    return host, int(port)


# --------------------------------------------------------------------------- showing


def to_dict(config: Any, *, mask: bool = True, non_default: bool = False) -> dict:
    """The config as nested dicts; secrets masked; optionally only keys that differ from defaults."""
    default = type(config)()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            sub = to_dict(value, mask=mask, non_default=non_default)
            if sub or not non_default:
                out[f.name] = sub
            continue
        if non_default and value == getattr(default, f.name):
            continue
        if mask and f.metadata.get("secret") and value:
            value = MASK
        out[f.name] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_toml(data: dict, prefix: str = "") -> str:
    """Minimal TOML writer for config dicts (tables of scalars and arrays)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append(f"[{prefix}]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for name, sub in tables.items():
        if lines:
            lines.append("")
        lines.append(render_toml(sub, f"{prefix}.{name}" if prefix else name))
    return "\n".join(lines)


def render_example(cls: type = Config, prefix: str = "") -> str:
    """config.example.toml: every key, its documentation and its default."""
    lines: list[str] = []
    if not prefix:
        lines += [
            "# gateway configuration. Every key is shown with its default; the daemon runs with no file at all.",
            "# Check a file with `gateway config check --config FILE`.",
        ]
    scalars, tables = [], []
    for f in dataclasses.fields(cls):
        (tables if f.metadata.get("doc") and dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]) else scalars).append(f)
    for f in scalars:
        meta = f.metadata
        doc = meta.get("doc", "")
        if "choices" in meta:
            doc += f" One of: {', '.join(map(str, meta['choices']))}."
        lines.append(f"# {doc}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{f.name} = {_toml_value(default)}")
    for f in tables:
        name = f"{prefix}.{f.name}" if prefix else f.name
        lines += ["", f"# {f.metadata['doc']}", f"[{name}]"]
        lines.append(render_example(typing.get_type_hints(cls)[f.name], name))
    return "\n".join(line for line in lines if line is not None).rstrip() + ("\n" if not prefix else "")
