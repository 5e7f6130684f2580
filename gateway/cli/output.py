"""How the CLI talks to the daemon and prints what comes back.

Exit codes: 0 ok, 1 operational error (daemon not running, not found, conflict), 2 usage or
config error (click's own usage errors, invalid values). Every error is one line on stderr.

Where the daemon is: each of socket, state directory and config file is taken from its flag, else
its environment variable, else the config file, else the default; and an explicit flag beats every
environment variable, so `--state-dir X` acts on the daemon of X even with $GATEWAY_SOCKET set.
After a command that changes something, one line on stderr names the daemon that did it (not with
--json, whose callers parse the output).

Human output prints times as ISO 8601 UTC and escapes control characters from any value (a stored
terminal escape is shown as \x1b, never sent to the terminal); --json prints the values as the
daemon sent them (times as Unix seconds).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from .. import validate
from ..admin.client import AdminClient, AdminError, DaemonNotRunning
from ..config import Config, config_path_from, load_config
from ..errors import ConfigError, InvalidArgument
from ..paths import resolve_paths

USAGE_CODES = {"invalid", "invalid_params", "invalid_request", "parse_error", "method_not_found", "too_deep", "too_large"}
# Methods that change nothing; after any other, the CLI names the daemon that acted.
READ_ONLY = {"status", "ping", "config.show", "tenant.list", "tenant.show", "domain.list", "domain.show", "domain.records",
             "usecase.list", "usecase.show", "usecase.credentials.list", "connector.list", "connector.show", "connector.test",
             "queue.list", "queue.show", "queue.counts", "pause.list", "address.list", "address.show"}


# click >= 8.2 raises this (a UsageError whose message is the whole help) for a group given no command.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class GatewayGroup(click.Group):
    """The root command: click's usage errors become one line (and exit 2) like every other error."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        try:
            # Returns the code of ctx.exit(code) (--help, --version); commands here return None.
            code = super().main(args, prog_name, standalone_mode=False, **extra)
        except NO_ARGS_IS_HELP as exc:
            exc.show()  # `gateway` or `gateway tenant` alone: the help, as it is
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            fail(printable(exc.format_message()) + where, 2)
        except click.ClickException as exc:
            fail(printable(exc.format_message()), exc.exit_code)
        except click.Abort:
            fail("aborted", 1)
        sys.exit(code if isinstance(code, int) else 0)


class CliContext:
    def __init__(self, socket_path: Any):
        self.socket_path = socket_path

    def call(self, method: str, **params: Any) -> Any:
        """One admin call; on failure print one line and exit with the right code."""
        params = {k: v for k, v in params.items() if v is not None}
        try:
            for name, value in params.items():
                validate.boundary(name, value)  # the daemon checks again; this refuses before connecting
        except InvalidArgument as exc:
            fail(exc.message, 2)
        ctx = click.get_current_context(silent=True)
        as_json = ctx is not None and ctx.params.get("as_json")
        try:
            with AdminClient(self.socket_path) as client:
                result = client.call(method, **params)
                if method not in READ_ONLY and not as_json:  # --json callers parse output, often 2>&1
                    pid = f" (pid {client.peer_pid})" if client.peer_pid else ""
                    click.echo(f"gateway: acted on the daemon at {self.socket_path}{pid}", err=True)
        except DaemonNotRunning as exc:
            fail(str(exc), 1)
        except AdminError as exc:
            fail(exc.message, 2 if exc.code in USAGE_CODES else 1)
        except OSError as exc:
            fail(f"admin socket {self.socket_path}: {exc}", 1)
        return result if as_json else printable_values(result)


def socket_path(socket_option: str | None, state_dir: str | None, config_option: str | None) -> str:
    """The admin socket: --socket; else, when --state-dir or --config is given, where that daemon
    listens (an explicit flag beats the environment); else $GATEWAY_SOCKET; else where the daemon
    of $GATEWAY_CONFIG / $STATE_DIRECTORY / the defaults listens."""
    if socket_option:
        return socket_option
    if not (state_dir or config_option) and os.environ.get("GATEWAY_SOCKET"):
        return os.environ["GATEWAY_SOCKET"]
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
    click.echo(f"gateway: {printable(message, keep='')}", err=True)
    sys.exit(code)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def printable(text: str, keep: str = "\n") -> str:
    """``text`` with every character a terminal would act on (C0/C1 controls, DEL, bidi overrides,
    line separators, lone surrogates) written as a Python escape; characters in ``keep`` stay."""
    if validate.unprintable(text.replace(keep, "") if keep else text) is None:
        return text
    return "".join(c if c in keep or validate.unprintable(c) is None else repr(c)[1:-1] for c in text)


def printable_values(value: Any) -> Any:
    """Every string in a reply made printable (newlines kept: zone text and remote replies have them)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [printable_values(v) for v in value]
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: printable_values(v) for k, v in value.items()}
    return value


def format_time(ts: float | None) -> str:
    """A Unix time for people: ISO 8601 in UTC, to the second (2026-12-01 09:30:00Z)."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def format_age(ts: float | None) -> str:
    """How long ago a Unix time was, in its largest unit: 40s, 12m, 5h, 3d."""
    if not ts:
        return "-"
    secs = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def format_cell(value: Any, key: str = "") -> str:
    """One value on one line: a table cell or a 'key: value' line. Keys ending in _at are times."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(format_cell(v) for v in value) or "-"
    if key.endswith("_at") and isinstance(value, (int, float)):
        return format_time(value)
    return printable(str(value), keep="")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> None:
    """Print rows as an aligned text table."""
    headers = list(headers or [c.upper() for c in columns])
    cells = [[format_cell(row.get(c), c) for c in columns] for row in rows]
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
            click.echo(f"{k.ljust(width)}  {format_cell(record[k], k)}")


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
