"""`gateway connector ...`: a tenant's external mail servers (SMTP relay, SendGrid API out; IMAP or
POP3 mailboxes the gateway polls).

Secrets never go on the command line (other users see it in `ps`): --secret-stdin reads the
password or API token from standard input, --secret-env NAME from an environment variable.
"""

from __future__ import annotations

import os
import sys

import click

from .output import current_admin, details, emit_json, fail, format_time, json_option, table

COLUMNS = ["tenant", "name", "kind", "direction", "enabled", "has_secret"]


@click.group()
def connector() -> None:
    """Manage connectors (SMTP relay or SendGrid API routes for outbound mail, IMAP/POP3 mailboxes polled for inbound)."""


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
    details(record, ["tenant", "name", "kind", "direction", "enabled", "has_secret", "has_incoming_secret"])
    settings = dict(record.get("settings", {}))
    incoming = settings.pop("incoming", None)
    for key, value in sorted(settings.items()):
        click.echo(f"{key.ljust(10)}  {value}")
    if incoming is not None:
        click.echo("")
        click.echo("incoming")
        for key, value in sorted(incoming.items()):
            click.echo(f"  {key.ljust(12)}  {value}")
        status = record.get("incoming_status") or {}
        click.echo("")
        click.echo("incoming status")
        click.echo(f"  last poll     {format_time(status.get('last_poll_at')) if status.get('last_poll_at') else 'never'}")
        click.echo(f"  last ok       {format_time(status.get('last_ok_at')) if status.get('last_ok_at') else 'never'}")
        click.echo(f"  last error    {status.get('last_error') or '-'}")
        if status.get("backoff_until"):
            click.echo(f"  backoff until {format_time(status['backoff_until'])}  ({status.get('failures', 0)} failures in a row)")
        click.echo(f"  fetched       {status.get('fetched', 0)}  duplicates {status.get('duplicates', 0)}"
                   f"  skipped {status.get('skipped', 0)}")
        if status.get("last_skipped"):
            click.echo(f"  last skipped  {status['last_skipped']}")


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


def incoming_options(fn):
    for option in reversed([
        click.option("--folder", default=None, help="imap: the folder polled (default INBOX)."),
        click.option("--after", default=None, metavar="seen|delete|move:FOLDER",
                     help="What to do with a message once it is safely stored (default seen; pop3 seen keeps it)."),
        click.option("--usecase", default=None, help="Use case the polled mail belongs to."),
        click.option("--address", default=None, help="Channel address the polled mail is for (instead of or beside --usecase)."),
        click.option("--insecure-plaintext", is_flag=True, help="Allow --tls none: the mailbox password crosses the network in clear."),
    ]):
        fn = option(fn)
    return fn


@connector.command("add")
@click.argument("tenant")
@click.argument("name")
@click.option("--kind", type=click.Choice(["smtp", "sendgrid", "imap", "pop3"]), required=True,
              help="smtp/sendgrid: outbound route; imap/pop3: a mailbox polled for inbound mail (host, port, tls, username and secret are the mailbox's).")
@settings_options
@incoming_options
@click.option("--disabled", is_flag=True, help="Create it disabled.")
@json_option
def add(tenant, name, kind, host, port, tls, no_verify, username, sender, reply_to, base_url, secret_stdin, secret_env,
        folder, after, usecase, address, insecure_plaintext, disabled, as_json) -> None:
    """Add a connector NAME to TENANT."""
    extra = {}
    if kind in ("imap", "pop3"):
        extra = {"folder": folder, "after": after, "usecase": usecase, "address": address, "insecure_plaintext": insecure_plaintext}
    elif any(v is not None for v in (folder, after, usecase, address)) or insecure_plaintext:
        fail("--folder, --after, --usecase, --address and --insecure-plaintext are incoming settings: "
             "use `gateway connector incoming` for an smtp or sendgrid connector", 2)
    record = current_admin().call("connector.add", tenant=tenant, name=name, kind=kind, host=host, port=port, tls=tls,
                           verify_tls=False if no_verify else None, username=username, secret=_secret(secret_stdin, secret_env),
                           sender=sender, reply_to=reply_to, base_url=base_url, enabled=not disabled, **extra)
    _show(record, as_json)


@connector.command("incoming")
@click.argument("tenant")
@click.argument("name")
@click.option("--protocol", type=click.Choice(["imap", "pop3"]), default=None, help="How the mailbox is read.")
@click.option("--host", default=None, help="Mailbox server host name or address.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default by protocol and --tls: 993/143, 995/110).")
@click.option("--tls", type=click.Choice(["implicit", "starttls", "none"]), default=None, help="TLS mode (default implicit).")
@click.option("--no-verify-tls", "no_verify", is_flag=True, default=None, help="Do not check the server's certificate.")
@click.option("--username", default=None, help="Mailbox login (password via --secret-stdin/--secret-env).")
@click.option("--secret-stdin", is_flag=True, help="Read the mailbox password from standard input.")
@click.option("--secret-env", metavar="NAME", default=None, help="Read the mailbox password from this environment variable.")
@incoming_options
@click.option("--enable/--disable", "enabled", default=None, help="Poll the mailbox or not (the connector's other settings stay).")
@click.option("--unset", multiple=True, type=click.Choice(["usecase", "address"]), help="Remove a setting (repeatable).")
@click.option("--remove", is_flag=True, help="Remove the incoming settings, their password and the mailbox checkpoint.")
@json_option
def incoming(tenant, name, protocol, host, port, tls, no_verify, username, secret_stdin, secret_env, folder, after, usecase,
             address, insecure_plaintext, enabled, unset, remove, as_json) -> None:
    """Set a connector's incoming mailbox (IMAP or POP3), beside its outgoing settings; or --remove it."""
    record = current_admin().call("connector.incoming", tenant=tenant, name=name, protocol=protocol, host=host, port=port,
                                  tls=tls, insecure_plaintext=insecure_plaintext, verify_tls=False if no_verify else None,
                                  username=username, secret=_secret(secret_stdin, secret_env), folder=folder, after=after,
                                  usecase=usecase, address=address, enabled=enabled, unset=list(unset) or None, remove=remove)
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
    """Connect for real (EHLO, STARTTLS, AUTH; an authenticated API call; for incoming settings connect,
    TLS, login and the folder) and report each step."""
    result = current_admin().call("connector.test", tenant=tenant, name=name)
    if as_json:
        emit_json(result)
    else:
        for step in result["steps"]:
            click.echo(f"{'ok  ' if step['ok'] else 'FAIL'}  {step['step']:<12} {step['detail']}")
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
