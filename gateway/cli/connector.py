"""`gateway connector ...`: a tenant's external mail servers (SMTP relay, SendGrid API).

Secrets never go on the command line (other users see it in `ps`): --secret-stdin reads the
password or API token from standard input, --secret-env NAME from an environment variable.
"""

from __future__ import annotations

import os
import sys

import click

from .output import current_admin, details, emit_json, fail, json_option, table

COLUMNS = ["tenant", "name", "kind", "enabled", "has_secret"]


@click.group()
def connector() -> None:
    """Manage connectors (SMTP relay or SendGrid API routes for outbound mail)."""


def _secret(stdin: bool, env: str | None) -> str | None:
    if stdin and env:
        fail("use either --secret-stdin or --secret-env", 2)
    if stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            fail("no secret on standard input", 2)
        return value
    if env:
        if not os.environ.get(env):
            fail(f"environment variable {env} is empty or not set", 2)
        return os.environ[env]
    return None


def _show(record: dict, as_json: bool) -> None:
    if as_json:
        emit_json(record)
        return
    details(record, ["tenant", "name", "kind", "direction", "enabled", "has_secret"])
    for key, value in sorted(record.get("settings", {}).items()):
        click.echo(f"{key.ljust(10)}  {value}")


def settings_options(fn):
    for option in reversed([
        click.option("--host", default=None, help="smtp: relay host name or address."),
        click.option("--port", type=click.IntRange(1, 65535), default=None, help="smtp: port (default by --tls: 587, 465, 25)."),
        click.option("--tls", type=click.Choice(["none", "starttls", "implicit"]), default=None, help="smtp: TLS mode (default starttls)."),
        click.option("--no-verify-tls", "no_verify", is_flag=True, default=None, help="smtp: do not check the relay's certificate."),
        click.option("--username", default=None, help="smtp: AUTH user name (password via --secret-stdin/--secret-env)."),
        click.option("--sender", default=None, help="Envelope sender (smtp) or From (sendgrid) to use instead of the message's."),
        click.option("--reply-to", default=None, help="Reply-To to add when the message has none."),
        click.option("--base-url", default=None, help="sendgrid: API base URL (default https://api.sendgrid.com)."),
        click.option("--secret-stdin", is_flag=True, help="Read the password or API token from standard input."),
        click.option("--secret-env", metavar="NAME", default=None, help="Read the password or API token from this environment variable."),
    ]):
        fn = option(fn)
    return fn


@connector.command("add")
@click.argument("tenant")
@click.argument("name")
@click.option("--kind", type=click.Choice(["smtp", "sendgrid"]), required=True)
@settings_options
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@json_option
def add(tenant, name, kind, host, port, tls, no_verify, username, sender, reply_to, base_url, secret_stdin, secret_env,
        disabled, as_json) -> None:
    """Add a connector NAME to TENANT."""
    record = current_admin().call("connector.add", tenant=tenant, name=name, kind=kind, host=host, port=port, tls=tls,
                           verify_tls=False if no_verify else None, username=username, secret=_secret(secret_stdin, secret_env),
                           sender=sender, reply_to=reply_to, base_url=base_url, enabled=not disabled)
    _show(record, as_json)


@connector.command("list")
@click.option("--tenant", default=None, help="Only this tenant's connectors.")
@json_option
def list_(tenant: str | None, as_json: bool) -> None:
    """List connectors (secrets are never shown)."""
    rows = current_admin().call("connector.list", tenant=tenant)
    emit_json(rows) if as_json else table(rows, COLUMNS, ["TENANT", "NAME", "KIND", "ENABLED", "SECRET SET"])


@connector.command("show")
@click.argument("tenant")
@click.argument("name")
@json_option
def show(tenant: str, name: str, as_json: bool) -> None:
    """Show one connector."""
    _show(current_admin().call("connector.show", tenant=tenant, name=name), as_json)


@connector.command("update")
@click.argument("tenant")
@click.argument("name")
@settings_options
@click.option("--enable/--disable", "enabled", default=None, help="Enable or disable it.")
@click.option("--unset", multiple=True, type=click.Choice(["username", "sender", "reply_to", "base_url", "verify_tls"]),
              help="Remove a setting (repeatable).")
@json_option
def update(tenant, name, host, port, tls, no_verify, username, sender, reply_to, base_url, secret_stdin, secret_env,
           enabled, unset, as_json) -> None:
    """Change a connector's settings or secret."""
    record = current_admin().call("connector.update", tenant=tenant, name=name, host=host, port=port, tls=tls,
                           verify_tls=False if no_verify else None, username=username, secret=_secret(secret_stdin, secret_env),
                           sender=sender, reply_to=reply_to, base_url=base_url, enabled=enabled, unset=list(unset) or None)
    _show(record, as_json)


@connector.command("test")
@click.argument("tenant")
@click.argument("name")
@json_option
def test(tenant: str, name: str, as_json: bool) -> None:
    """Connect for real (EHLO, STARTTLS, AUTH; or an authenticated API call) and report each step."""
    result = current_admin().call("connector.test", tenant=tenant, name=name)
    if as_json:
        emit_json(result)
    else:
        for step in result["steps"]:
            click.echo(f"{'ok  ' if step['ok'] else 'FAIL'}  {step['step']:<9} {step['detail']}")
        click.echo(f"connector {tenant}/{name}: {'works' if result['ok'] else 'does not work'}")
    if not result["ok"]:
        sys.exit(1)


@connector.command("delete")
@click.argument("tenant")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really delete it.")
@json_option
def delete(tenant: str, name: str, yes: bool, as_json: bool) -> None:
    """Delete a connector; refused while a use case routes through it."""
    if not yes:
        fail(f"deleting connector {tenant}/{name} needs --yes", 2)
    record = current_admin().call("connector.delete", tenant=tenant, name=name)
    emit_json(record) if as_json else click.echo(f"deleted connector {tenant}/{record['name']}")
