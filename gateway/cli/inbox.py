"""`gateway inbox list|show|export|attachment|release`, `gateway thread show`, and
`gateway inbound forward add|list|delete`: received mail as operators see it.

Bytes (the stored .eml, an attachment) come over the socket base64 in pieces and are written as
bytes, to --output (created mode 0600: it is someone's mail) or to stdout when that is not a
terminal. What a sender wrote (subjects, names, bodies) is printed with terminal controls escaped.
"""

from __future__ import annotations

import os
import stat
import sys
import base64
from typing import Any, BinaryIO

import click

from .output import current_admin, details, emit_json, fail, format_time, json_option, printable, table

CHUNK = 1 << 20


@click.group()
def inbox() -> None:
    """Received mail: list, show, export the .eml, save an attachment, release a held message."""


@inbox.command("list")
@click.option("--tenant", metavar="T", help="Only this tenant's mail.")
@click.option("--thread", metavar="ID", help="Only this thread (the Message-ID that started it).")
@click.option("--kind", type=click.Choice(["message", "reply", "dsn", "arf", "auto_reply", "unsubscribe"]), help="Only this kind.")
@click.option("--state", type=click.Choice(["spooled", "processed", "held"]), help="Only this state.")
@click.option("--after", metavar="ID", help="Start after this inbound id (the last one of the previous page).")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@json_option
def list_(tenant: str | None, thread: str | None, kind: str | None, state: str | None, after: str | None, limit: int,
          as_json: bool) -> None:
    """Received messages, oldest first."""
    rows = current_admin().call("inbox.list", tenant=tenant, thread=thread, kind=kind, state=state, after=after, limit=limit)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["received"] = format_time(r["received_at"])
        r["what"] = r["kind"] or r["state"]
        r["subject"] = (r["subject"] or "")[:50]
    table(rows, ["inbound_id", "tenant", "received", "what", "usecase", "from_address", "subject", "attachments"],
          ["ID", "TENANT", "RECEIVED", "KIND", "USECASE", "FROM", "SUBJECT", "ATT"])


@inbox.command("show")
@click.argument("inbound_id")
@click.option("--tenant", metavar="T", help="The tenant it must belong to.")
@json_option
def show(inbound_id: str, tenant: str | None, as_json: bool) -> None:
    """One message: envelope, classification, thread, authentication results, bodies, attachments."""
    m = current_admin().call("inbox.show", id=inbound_id, tenant=tenant)
    if as_json:
        emit_json(m)
        return
    summary = m.get("summary") or {}
    auth = summary.get("auth") or {}
    m["received"] = format_time(m["received_at"])
    m["processed"] = format_time(m["processed_at"])
    m["message-id"] = m["header_message_id"]
    m["parent"] = m["parent_message_id"]
    m["spf"], m["dkim"], m["dmarc"] = auth.get("spf", "-"), auth.get("dkim", "-"), auth.get("dmarc", "-")
    m["authentication-results"] = auth.get("header") or m["auth_results"] or "-"
    m["to"], m["cc"] = summary.get("to", []), summary.get("cc", [])
    m["defects"] = summary.get("defects", [])
    details(m, ["inbound_id", "tenant", "state", "hold_reason", "kind", "source", "received", "processed", "mail_from",
                "recipients", "client", "from_address", "to", "cc", "subject", "message-id", "thread_id", "parent",
                "usecase", "address", "flags", "size", "spf", "dkim", "dmarc", "authentication-results", "defects"])
    if summary.get("stripped_text"):
        click.echo("\nreply (quoted text and signature stripped):")
        click.echo(printable(summary["stripped_text"][:4000]))
    elif summary.get("text"):
        click.echo("\ntext:")
        click.echo(printable(summary["text"][:4000]))
    click.echo("")
    rows = [a | {"inline": "inline" if a["inline"] else "-"} for a in m["attachments"]]
    table(rows, ["position", "filename", "content_type", "size", "inline"], ["#", "FILENAME", "TYPE", "SIZE", "INLINE"])


def _sink(output: str | None) -> BinaryIO:
    if output in (None, "-"):
        if sys.stdout.isatty():
            fail("binary output: give --output FILE or redirect stdout", 2)
        return click.get_binary_stream("stdout")
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # O_CREAT's mode applies to a new file only: an existing regular file is made 0600 as well
        # (what goes in is a customer's mail). Not a device or a pipe: /dev/stdout stays as it is.
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "wb")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}", 1)
        raise


def _copy(method: str, output: str | None, **params: Any) -> dict[str, Any]:
    """Fetch every piece over the socket and write it; returns the last answer (its metadata)."""
    admin = current_admin()
    first = admin.call(method, offset=0, length=CHUNK, **params)
    sink = _sink(output)
    try:
        answer, offset = first, 0
        while True:
            data = base64.b64decode(answer["data"])
            sink.write(data)
            offset += len(data)
            if not data or offset >= answer["size"]:
                break
            answer = admin.call(method, offset=offset, length=CHUNK, **params)
        sink.flush()
    finally:
        if sink is not click.get_binary_stream("stdout"):
            sink.close()
    return first


@inbox.command("export")
@click.argument("inbound_id")
@click.option("--tenant", metavar="T", help="The tenant it must belong to.")
@click.option("--output", "-o", metavar="FILE", help="Write the .eml here (default: stdout).")
def export(inbound_id: str, tenant: str | None, output: str | None) -> None:
    """The stored message (.eml, as received, with our Authentication-Results)."""
    got = _copy("inbox.export", output, id=inbound_id, tenant=tenant)
    if output not in (None, "-"):
        click.echo(f"wrote {got['size']} bytes to {output}", err=True)


@inbox.command("attachment")
@click.argument("inbound_id")
@click.argument("name")
@click.option("--tenant", metavar="T", help="The tenant it must belong to.")
@click.option("--output", "-o", metavar="FILE", help="Write the bytes here (default: stdout, unless a terminal).")
def attachment(inbound_id: str, name: str, tenant: str | None, output: str | None) -> None:
    """One attachment's bytes, named by its filename (or its # from `inbox show`)."""
    got = _copy("inbox.attachment", output, id=inbound_id, name=name, tenant=tenant)
    if output not in (None, "-"):
        click.echo(f"wrote {got['size']} bytes ({printable(got['content_type'], keep='')}) to {output}", err=True)


@inbox.command("release")
@click.argument("inbound_id")
@click.option("--tenant", metavar="T", help="The tenant it must belong to.")
@json_option
def release(inbound_id: str, tenant: str | None, as_json: bool) -> None:
    """Hand a held message to the processor again."""
    result = current_admin().call("inbox.release", id=inbound_id, tenant=tenant)
    emit_json(result) if as_json else click.echo(f"released {inbound_id} (was held: {printable(result['was'], keep='')})")


@click.group()
def thread() -> None:
    """Conversations: what was sent and received in one thread."""


@thread.command("show")
@click.argument("thread_id")
@click.option("--tenant", metavar="T", help="The tenant it must belong to.")
@json_option
def thread_show(thread_id: str, tenant: str | None, as_json: bool) -> None:
    """The whole conversation, both directions, oldest first (THREAD_ID: the Message-ID that started it)."""
    rows = current_admin().call("thread.show", id=thread_id, tenant=tenant)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["time"] = format_time(r["at"])
        r["dir"] = "->" if r["direction"] == "out" else "<-"
        r["to"] = [x["rcpt"] for x in r["recipients"]]
        r["subject"] = (r["subject"] or "")[:40]
    table(rows, ["time", "dir", "kind", "id", "message_id", "from", "to", "subject"],
          ["TIME", "", "KIND", "ID", "MESSAGE-ID", "FROM", "TO", "SUBJECT"])


@click.group()
def inbound() -> None:
    """Inbound mail handling of a tenant."""


@inbound.group("forward")
def forward() -> None:
    """Forward received mail of a use case or a channel address to another mailbox (over SMTP)."""


@forward.command("add")
@click.argument("tenant")
@click.option("--usecase", metavar="U", help="Mail received for this use case's addresses.")
@click.option("--address", metavar="A", help="Mail received at this channel address.")
@click.option("--to", "to", metavar="ADDR", required=True, help="Where the copies go.")
@json_option
def forward_add(tenant: str, usecase: str | None, address: str | None, to: str, as_json: bool) -> None:
    """Add a rule. Messages and replies (not bounces, complaints or auto-replies) are forwarded."""
    rule = current_admin().call("forward.add", tenant=tenant, usecase=usecase, address=address, to=to)
    emit_json(rule) if as_json else click.echo(
        f"rule {rule['id']}: mail of {rule['usecase'] or rule['address']} ({tenant}) is forwarded to {rule['to_address']}")


@forward.command("list")
@click.option("--tenant", metavar="T")
@json_option
def forward_list(tenant: str | None, as_json: bool) -> None:
    """Forwarding rules."""
    rows = current_admin().call("forward.list", tenant=tenant)
    if as_json:
        emit_json(rows)
        return
    table(rows, ["id", "tenant", "usecase", "address", "to_address", "created_at"], ["ID", "TENANT", "USECASE", "ADDRESS", "TO", "CREATED"])


@forward.command("delete")
@click.argument("tenant")
@click.argument("rule_id", type=int)
@json_option
def forward_delete(tenant: str, rule_id: int, as_json: bool) -> None:
    """Delete a rule (mail already queued still goes)."""
    rule = current_admin().call("forward.delete", tenant=tenant, id=rule_id)
    emit_json(rule) if as_json else click.echo(f"deleted rule {rule_id} (to {rule['to_address']})")
