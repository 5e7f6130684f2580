"""`gateway usecase ...`: use cases on verified domains, and their SMTP credentials."""

from __future__ import annotations

import click

from .. import validate
from .output import current_admin, details, emit_json, json_option, table

KEYS = ["name", "tenant", "domain", "domain_state", "kind", "entity", "senders", "unsubscribe_scope", "list_unsubscribe", "route", "rate_limit",
        "suppressed_action", "credentials"]
kind_choice = click.Choice(["transactional", "marketing"])
scope_choice = click.Choice(["usecase", "domain"])
list_unsubscribe_choice = click.Choice(["on", "off", "default"])
LIST_UNSUBSCRIBE_HELP = "List-Unsubscribe and one-click unsubscribe on its mail; default: on for marketing, off for transactional."


@click.group()
def usecase() -> None:
    """Manage use cases (how a tenant sends from a verified domain) and their SMTP credentials."""


def _show(record: dict, as_json: bool) -> None:
    emit_json(record) if as_json else details(record, [k for k in KEYS if k in record])


@usecase.command("add")
@click.argument("tenant")
@click.option("--domain", required=True, help="A verified domain of the tenant.")
@click.option("--name", required=True, help="Unique within the tenant.")
@click.option("--entity", required=True, help="Organisation or product the mail speaks for.")
@click.option("--kind", type=kind_choice, required=True)
@click.option("--from", "senders", multiple=True, required=True, help="Allowed sender address (repeat); on the domain or a subdomain.")
@click.option("--unsubscribe-scope", type=scope_choice, default="usecase", show_default=True)
@click.option("--list-unsubscribe", type=list_unsubscribe_choice, default="default", show_default=True, help=LIST_UNSUBSCRIBE_HELP)
@click.option("--suppressed", type=click.Choice(["refuse", "accept-drop"]), default="refuse", show_default=True,
              help="A suppressed recipient at RCPT: refused (550 5.7.1), or accepted and dropped (for apps that cannot handle a partial refusal).")
@click.option("--route", default="direct", show_default=True, help="direct, or connector:NAME.")
@click.option("--rate-limit", type=click.IntRange(0, validate.MAX_RATE_LIMIT), default=0, show_default=True, help="Messages per minute; 0 = unlimited.")
@json_option
def add(tenant, domain, name, entity, kind, senders, unsubscribe_scope, list_unsubscribe, suppressed, route, rate_limit, as_json) -> None:
    """Add a use case on a verified domain."""
    _show(current_admin().call("usecase.add", tenant=tenant, domain=domain, name=name, entity=entity, kind=kind, senders=list(senders),
                        unsubscribe_scope=unsubscribe_scope, route=route, rate_limit=rate_limit,
                        list_unsubscribe=list_unsubscribe, suppressed=suppressed), as_json)


@usecase.command("list")
@click.argument("tenant", required=False)
@json_option
def list_(tenant: str | None, as_json: bool) -> None:
    """List use cases (of one tenant when given)."""
    rows = current_admin().call("usecase.list", tenant=tenant)
    emit_json(rows) if as_json else table(rows, ["tenant", "name", "domain", "kind", "senders", "route"])


@usecase.command("show")
@click.argument("tenant")
@click.argument("name")
@json_option
def show(tenant: str, name: str, as_json: bool) -> None:
    """Show one use case."""
    _show(current_admin().call("usecase.show", tenant=tenant, name=name), as_json)


@usecase.command("update")
@click.argument("tenant")
@click.argument("name")
@click.option("--name", "new_name", default=None, help="Rename.")
@click.option("--entity", default=None)
@click.option("--kind", type=kind_choice, default=None)
@click.option("--from", "senders", multiple=True, help="Replace the sender addresses (repeat).")
@click.option("--add-from", "add_senders", multiple=True, help="Add a sender address (repeat).")
@click.option("--remove-from", "remove_senders", multiple=True, help="Remove a sender address (repeat).")
@click.option("--unsubscribe-scope", type=scope_choice, default=None)
@click.option("--list-unsubscribe", type=list_unsubscribe_choice, default=None, help=LIST_UNSUBSCRIBE_HELP)
@click.option("--suppressed", type=click.Choice(["refuse", "accept-drop"]), default=None)
@click.option("--route", default=None)
@click.option("--rate-limit", type=click.IntRange(0, validate.MAX_RATE_LIMIT), default=None)
@json_option
def update(tenant, name, new_name, entity, kind, senders, add_senders, remove_senders, unsubscribe_scope, list_unsubscribe, suppressed,
           route, rate_limit, as_json) -> None:
    """Change a use case."""
    _show(current_admin().call("usecase.update", tenant=tenant, name=name, new_name=new_name, entity=entity, kind=kind,
                        senders=list(senders) or None, add_senders=list(add_senders) or None,
                        remove_senders=list(remove_senders) or None, unsubscribe_scope=unsubscribe_scope, route=route,
                        rate_limit=rate_limit, list_unsubscribe=list_unsubscribe, suppressed=suppressed), as_json)


@usecase.command("delete")
@click.argument("tenant")
@click.argument("name")
@json_option
def delete(tenant: str, name: str, as_json: bool) -> None:
    """Delete a use case and its credentials."""
    record = current_admin().call("usecase.delete", tenant=tenant, name=name)
    emit_json(record) if as_json else click.echo(f"deleted use case {record['name']} of {record['tenant']}")


@usecase.group("credentials")
def credentials() -> None:
    """SMTP credentials of a use case."""


@credentials.command("add")
@click.argument("tenant")
@click.argument("usecase_name", metavar="USECASE")
@json_option
def credentials_add(tenant: str, usecase_name: str, as_json: bool) -> None:
    """Generate a username and password. The password is shown this once."""
    record = current_admin().call("usecase.credentials.add", tenant=tenant, usecase=usecase_name)
    if as_json:
        emit_json(record)
        return
    click.echo(f"username  {record['username']}")
    click.echo(f"password  {record['password']}")
    click.echo("the password is shown only now; the gateway keeps only its hash", err=True)


@credentials.command("list")
@click.argument("tenant")
@click.argument("usecase_name", metavar="USECASE")
@json_option
def credentials_list(tenant: str, usecase_name: str, as_json: bool) -> None:
    """List credentials (never their secrets)."""
    rows = current_admin().call("usecase.credentials.list", tenant=tenant, usecase=usecase_name)
    emit_json(rows) if as_json else table(rows, ["username", "created_at", "last_used_at", "revoked_at"], ["USERNAME", "CREATED", "LAST USED", "REVOKED"])


@credentials.command("revoke")
@click.argument("tenant")
@click.argument("usecase_name", metavar="USECASE")
@click.argument("username")
@json_option
def credentials_revoke(tenant: str, usecase_name: str, username: str, as_json: bool) -> None:
    """Revoke a credential: it stops working at the next AUTH."""
    record = current_admin().call("usecase.credentials.revoke", tenant=tenant, usecase=usecase_name, username=username)
    emit_json(record) if as_json else click.echo(f"revoked {record['username']}")
