"""`gateway address ...`: channel addresses (the addresses a tenant's channel receives at and sends from)."""

from __future__ import annotations

from pathlib import Path

import click

from .output import current_admin, details, emit_json, fail, json_option, table

KEYS = ["address", "tenant", "domain", "domain_state", "usecase", "display_name", "direction", "enabled", "reply_copy",
        "header_text", "header_html", "footer_text", "footer_html", "vcard", "created_at", "updated_at"]
direction_choice = click.Choice(["inbound", "outbound", "both"])
MAX_FILE = 64 * 1024   # a header or footer file read for @FILE (the daemon takes 4,000 characters of it)
TEXT_HELP = "Text, or @FILE to read it from a file (UTF-8); '' clears it."


@click.group()
def address() -> None:
    """Manage channel addresses: receive at them on the MX, send from them through their use case."""


def _show(record: dict, as_json: bool) -> None:
    emit_json(record) if as_json else details(record, [k for k in KEYS if k in record])


def _text(value: str | None, option: str) -> str | None:
    """The option's value, or the content of the file it names with a leading '@'."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        if path.stat().st_size > MAX_FILE:
            fail(f"{option}: {path} is larger than {MAX_FILE} bytes", 2)
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{option}: cannot read {path}: {exc.__class__.__name__}", 2)
    return None


def _decorations(opts: dict) -> dict:
    return {name: _text(opts[name], "--" + name.replace("_", "-")) for name in ("header_text", "header_html", "footer_text", "footer_html")}


def decoration_options(fn):
    for name in ("footer_html", "footer_text", "header_html", "header_text"):
        fn = click.option("--" + name.replace("_", "-"), name, default=None, metavar="TEXT|@FILE", help=TEXT_HELP)(fn)
    return fn


@address.command("add")
@click.argument("tenant")
@click.argument("address_", metavar="ADDRESS")
@click.option("--usecase", required=True, help="The use case it belongs to (of the address's domain).")
@click.option("--display-name", default="", help="Name shown in its vCard.")
@click.option("--direction", type=direction_choice, default="both", show_default=True,
              help="inbound: only receives; outbound: only sends; both.")
@click.option("--disabled", is_flag=True, help="Add it disabled: refused at RCPT and MAIL until enabled.")
@click.option("--reply-copy", default="", metavar="ADDR", help="Added as Bcc and Reply-To to mail sent from it.")
@decoration_options
@click.option("--vcard/--no-vcard", default=False, show_default=True, help="Attach a vCard to the first message of each new thread.")
@json_option
def add(tenant, address_, usecase, display_name, direction, disabled, reply_copy, vcard, as_json, **texts) -> None:
    """Add a channel address to a tenant."""
    decorations = {k: v or "" for k, v in _decorations(texts).items()}
    _show(current_admin().call("address.add", tenant=tenant, address=address_, usecase=usecase, display_name=display_name,
                               direction=direction, enabled=not disabled, reply_copy=reply_copy, vcard=vcard, **decorations), as_json)


@address.command("list")
@click.argument("tenant")
@json_option
def list_(tenant: str, as_json: bool) -> None:
    """List a tenant's channel addresses."""
    rows = current_admin().call("address.list", tenant=tenant)
    emit_json(rows) if as_json else table(rows, ["address", "usecase", "direction", "enabled", "reply_copy", "vcard"])


@address.command("show")
@click.argument("tenant")
@click.argument("address_", metavar="ADDRESS")
@json_option
def show(tenant: str, address_: str, as_json: bool) -> None:
    """Show one channel address."""
    _show(current_admin().call("address.show", tenant=tenant, address=address_), as_json)


@address.command("update")
@click.argument("tenant")
@click.argument("address_", metavar="ADDRESS")
@click.option("--usecase", default=None, help="Move it to another use case of its domain.")
@click.option("--display-name", default=None)
@click.option("--direction", type=direction_choice, default=None)
@click.option("--enabled/--disabled", default=None, help="Enable or disable it.")
@click.option("--reply-copy", default=None, metavar="ADDR", help="'' removes it.")
@decoration_options
@click.option("--vcard/--no-vcard", default=None)
@json_option
def update(tenant, address_, usecase, display_name, direction, enabled, reply_copy, vcard, as_json, **texts) -> None:
    """Change a channel address."""
    _show(current_admin().call("address.update", tenant=tenant, address=address_, usecase=usecase, display_name=display_name,
                               direction=direction, enabled=enabled, reply_copy=reply_copy, vcard=vcard,
                               **_decorations(texts)), as_json)


@address.command("delete")
@click.argument("tenant")
@click.argument("address_", metavar="ADDRESS")
@json_option
def delete(tenant: str, address_: str, as_json: bool) -> None:
    """Delete a channel address: mail to it is refused from then on (unless a catch-all takes it)."""
    record = current_admin().call("address.delete", tenant=tenant, address=address_)
    emit_json(record) if as_json else click.echo(f"deleted channel address {record['address']} of {record['tenant']}")
