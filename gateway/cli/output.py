"""How the CLI talks to the daemon and prints what comes back.

Exit codes: 0 ok, 1 operational error (daemon not running, not found, conflict), 2 usage or
config error (click's own usage errors, invalid values).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from ..admin.client import AdminClient, AdminError, DaemonNotRunning
from ..config import Config, config_path_from, load_config
from ..errors import ConfigError
from ..paths import resolve_paths

USAGE_CODES = {"invalid", "invalid_params", "invalid_request", "parse_error", "method_not_found"}


class CliContext:
    def __init__(self, socket_path: Any):
        self.socket_path = socket_path

    def call(self, method: str, **params: Any) -> Any:
        """One admin call; on failure print one line and exit with the right code."""
        try:
            with AdminClient(self.socket_path) as client:
                return client.call(method, **{k: v for k, v in params.items() if v is not None})
        except DaemonNotRunning as exc:
            fail(str(exc), 1)
        except AdminError as exc:
            fail(exc.message, 2 if exc.code in USAGE_CODES else 1)
        except OSError as exc:
            fail(f"admin socket {self.socket_path}: {exc}", 1)


def socket_path(socket_option: str | None, state_dir: str | None, config_option: str | None) -> str:
    """--socket, $GATEWAY_SOCKET, then what the daemon itself would use."""
    if socket_option or os.environ.get("GATEWAY_SOCKET"):
        return socket_option or os.environ["GATEWAY_SOCKET"]
    config = Config()
    path = config_path_from(config_option)
    if path:
        try:
            config = load_config(path)
        except ConfigError:
            pass  # the socket path falls back to the default; `config check` reports the problem
    return str(resolve_paths(config, state_dir).socket)


def current_admin() -> CliContext:
    """The admin connection for this invocation (resolved lazily, once)."""
    root = click.get_current_context().find_root()
    if "admin" not in root.obj:
        root.obj["admin"] = CliContext(socket_path(root.obj.get("socket_option"), root.obj.get("state_dir"), root.obj.get("config_option")))
    return root.obj["admin"]


def fail(message: str, code: int = 1) -> None:
    click.echo(f"gateway: {message}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(format_cell(v) for v in value) or "-"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> None:
    """Print rows as an aligned text table."""
    headers = list(headers or [c.upper() for c in columns])
    cells = [[format_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    if not rows:
        click.echo("(none)")


def details(record: dict[str, Any], keys: Sequence[str] | None = None) -> None:
    """Print one record as 'key: value' lines."""
    keys = list(keys or record.keys())
    width = max((len(k) for k in keys), default=0)
    for k in keys:
        if k in record:
            click.echo(f"{k.ljust(width)}  {format_cell(record[k])}")


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
