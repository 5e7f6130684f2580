"""`gateway run`, `gateway status`, `gateway config ...`."""

from __future__ import annotations

import sys

import click

from ..config import config_path_from, load_config, render_example, render_reference, render_toml, to_dict
from ..errors import ConfigError
from .output import current_admin, details, emit_json, fail, format_time, json_option, table

config_option = click.option("--config", "config_option", metavar="PATH", help="Configuration file (default: $GATEWAY_CONFIG, else none).")


@click.command()
@config_option
@click.option("--state-dir", metavar="DIR", help="State directory (default: $STATE_DIRECTORY, else ./var).")
@click.pass_context
def run(ctx: click.Context, config_option: str | None, state_dir: str | None) -> None:
    """Run the daemon in the foreground."""
    from ..daemon import run_daemon  # the CLI's other commands stay quick to import

    root = ctx.find_root().obj
    sys.exit(run_daemon(config_path_from(config_option or root.get("config_option")), state_dir or root.get("state_dir")))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m")) if v) + f"{secs}s"


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Show the running daemon: version, uptime, listeners, queue."""
    result = current_admin().call("status")
    if as_json:
        emit_json(result)
        return
    click.echo(f"gateway {result['version']}  pid {result['pid']}  up {_duration(result['uptime_seconds'])}"
               f"  (since {format_time(result['started_at'])})")
    click.echo(f"state dir  {result['state_dir']}")
    click.echo(f"config     {result.get('config_path') or '(embedded defaults)'}  reloads {result['reloads']}")
    if result.get("node"):
        jobs = "  ".join(f"{name} {state}" for name, state in result.get("jobs", {}).items())
        click.echo(f"node       {result['node']}" + (f"  jobs: {jobs}" if jobs else ""))
    click.echo("")
    table(result["listeners"], ["name", "address", "up"])
    if result.get("workers"):
        click.echo("")
        click.echo("workers")
        for w in result["workers"]:
            state = f"pid {w['pid']}  up {_duration(w['uptime_seconds'] or 0)}" if w["up"] else f"DOWN (last exit {w['last_exit']})"
            live = w.get("status") or {}  # a pipeline worker's own sessions and deliveries
            # An accepting pipeline has sessions only, a delivery process deliveries only.
            doing = "".join([f"  sessions {live['submission']['connections']}" if "submission" in live else "",
                             f"  delivering {live['delivery']['in_flight']}" if "delivery" in live else ""])
            click.echo(f"  {w['name']}  {state}  restarts {w['restarts']}{doing}")
    store = result.get("store")
    if store:
        click.echo("")
        line = f"store      free {store['free_bytes'] / 1e6:,.0f} MB (reserve {store['min_free_bytes'] / 1e6:,.0f} MB)"
        if store["full"]:
            line += f"  FULL since {format_time(store['full_since'])}: {store['reason']}"
        click.echo(line)
    missing = result.get("dkim_keys", {}).get("missing", [])
    if missing:
        click.echo("")
        click.echo("DKIM keys that cannot sign (their mail is held)")
        for m in missing:
            click.echo(f"  {m['problem']}")
    if "queue" in result:
        click.echo("")
        click.echo("queue      " + "  ".join(f"{k} {v}" for k, v in result["queue"].items()))
    mailboxes = result.get("poller", {}).get("mailboxes", [])
    if mailboxes:
        click.echo("")
        click.echo("polled mailboxes")
        for m in mailboxes:
            line = f"  {m['tenant']}/{m['name']}  {m['mailbox']}  {m['state']}  fetched {m['fetched']}"
            if m["last_error"]:
                line += f"  ERROR {m['last_error']}"
                if m.get("backoff_until"):
                    line += f" (retry {format_time(m['backoff_until'])}, {m['failures']} failures in a row)"
            click.echo(line)


@click.group()
def config() -> None:
    """Check and show the configuration."""


@config.command("check")
@config_option
@click.pass_context
def config_check(ctx: click.Context, config_option: str | None) -> None:
    """Validate a configuration file; exit 2 on any error."""
    path = config_path_from(config_option or ctx.find_root().obj.get("config_option"))
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"gateway: config error: {problem}", err=True)
        sys.exit(2)
    click.echo(f"{path or '(embedded defaults)'}: ok")


@config.command("show")
@config_option
@click.option("--non-default", is_flag=True, help="Only the keys that differ from the defaults.")
@click.option("--running", is_flag=True, help="Ask the running daemon for the configuration it uses.")
@json_option
@click.pass_context
def config_show(ctx: click.Context, config_option: str | None, non_default: bool, running: bool, as_json: bool) -> None:
    """Print the effective configuration (secrets masked)."""
    if running:
        data = current_admin().call("config.show", non_default=non_default)
    else:
        try:
            path = config_path_from(config_option or ctx.find_root().obj.get("config_option"))
            data = to_dict(load_config(path), non_default=non_default)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"gateway: config error: {problem}", err=True)
            sys.exit(2)
    if as_json:
        emit_json(data)
    else:
        click.echo(render_toml(data) or "# every key has its default")


@config.command("example")
def config_example() -> None:
    """Print every key with its documentation and default (config.example.toml)."""
    click.echo(render_example(), nl=False)


@config.command("reference", hidden=True)
def config_reference() -> None:
    """Print the configuration reference as Markdown (the README's section; see scripts/update-docs)."""
    click.echo(render_reference(), nl=False)


__all__ = ["run", "status", "config", "details", "fail"]
