"""`gateway queue ...`, `gateway pause`, `gateway resume`."""

from __future__ import annotations

import click

from .output import current_admin, details, emit_json, fail, format_age, format_time, json_option, table

STATES = ("pending", "deferred", "delivered", "bounced", "held", "suppressed")


@click.group()
def queue() -> None:
    """Inspect and control the outbound queue."""


@queue.command("list")
@click.option("--tenant", metavar="T", help="Only this tenant's messages.")
@click.option("--state", type=click.Choice(STATES), help="Only messages with a recipient in this state.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Finished messages too (every recipient delivered or bounced).")
@json_option
def list_(tenant: str | None, state: str | None, limit: int, show_all: bool, as_json: bool) -> None:
    """List what is still to do (messages with a pending, deferred or held recipient), oldest first."""
    rows = current_admin().call("queue.list", tenant=tenant, state=state, limit=limit, all=show_all)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["age"] = format_age(r["created_at"])
        r["rcpts"] = f"{r['recipients']}" + "".join(f" {k[0]}{r[k]}" for k in STATES if r.get(k))
    table(rows, ["queue_id", "tenant", "usecase", "state", "mail_from", "rcpts", "size", "age"],
          ["QUEUE ID", "TENANT", "USECASE", "STATE", "FROM", "RECIPIENTS", "SIZE", "AGE"])


@queue.command("show")
@click.argument("queue_id")
@json_option
def show(queue_id: str, as_json: bool) -> None:
    """Show one message: envelope, recipients and their state, every attempt with the remote reply."""
    msg = current_admin().call("queue.show", queue_id=queue_id)
    if as_json:
        emit_json(msg)
        return
    msg["created"] = format_time(msg["created_at"])
    msg["expires"] = format_time(msg["expires_at"])
    details(msg, ["queue_id", "tenant", "usecase", "mail_from", "message_id", "thread_id", "size", "client", "created", "expires"])
    for r in msg["recipients"]:
        click.echo("")
        line = f"recipient {r['index']}: {r['rcpt']}  {r['state']}"
        if r["hold_reason"]:
            line += f" ({r['hold_reason']})"
        if r["in_flight"]:
            line += "  [delivery in progress]"
        if r["state"] in ("pending", "deferred"):
            line += f"  next attempt {format_time(r['next_attempt_at'])}"
        click.echo(line)
        for a in r["attempt_log"]:
            reply = " ".join(str(x) for x in (a["code"], a["enhanced"], a["reply"]) if x)
            click.echo(f"  {format_time(a['at'])}  {a['outcome']:<9}  {a['remote'] or '-'}  {reply}")
        if not r["attempt_log"]:
            click.echo("  (no attempts yet)")


def _action(name: str, verb: str, help_text: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("ids", nargs=-1, required=True, metavar="ID... | ALL")
    @click.option("--tenant", metavar="T", help="Only this tenant's messages (required with ALL unless --yes).")
    @click.option("--yes", is_flag=True, help="Confirm ALL across every tenant.")
    @json_option
    def command(ids: tuple[str, ...], tenant: str | None, yes: bool, as_json: bool) -> None:
        if "ALL" in ids and tenant is None and not yes:
            fail("ALL acts on every tenant's mail: add --tenant T, or --yes to confirm", 2)
        result = current_admin().call(f"queue.{name}", ids=list(ids), tenant=tenant, yes=yes)
        if as_json:
            emit_json(result)
            return
        in_flight = result.get("in_flight", {})
        for queue_id, n in result["changed"].items():
            after = "deleted once the current attempt is recorded" if name == "delete" else "held after the current attempt unless delivered"
            busy = f" ({in_flight[queue_id]} in flight: {after})" if queue_id in in_flight else ""
            click.echo(f"{queue_id}: {verb} {n} recipient(s){busy}")
        click.echo(f"{verb} {result['recipients']} recipient(s) of {result['messages']} message(s)")

    return command


queue.add_command(_action("hold", "held", "Hold messages: their pending and deferred recipients wait until released."))
queue.add_command(_action("release", "released", "Release held messages (not those a pause still holds)."))
queue.add_command(_action("retry", "scheduled now", "Retry messages now: pending and deferred recipients become due."))
queue.add_command(_action("delete", "deleted", "Delete messages from the queue (no DSN is sent)."))


@queue.command("flush")
@click.option("--tenant", metavar="T", help="Only this tenant's deferred mail.")
@json_option
def flush(tenant: str | None, as_json: bool) -> None:
    """Retry every deferred recipient now."""
    result = current_admin().call("queue.flush", tenant=tenant)
    emit_json(result) if as_json else click.echo(f"{result['flushed']} deferred recipient(s) due now")


@click.command()
@click.option("--tenant", metavar="T", help="Pause one tenant.")
@click.option("--usecase", metavar="U", help="Pause one use case of --tenant.")
@click.option("--list", "show_list", is_flag=True, help="Show the pauses in force.")
@json_option
def pause(tenant: str | None, usecase: str | None, show_list: bool, as_json: bool) -> None:
    """Pause outbound mail (everything, a tenant, or a use case). Paused mail is accepted and held."""
    if show_list:
        rows = current_admin().call("pause.list")
        if as_json:
            emit_json(rows)
        else:
            for r in rows:
                r["since"] = format_time(r["created_at"])
            table(rows, ["scope", "tenant", "usecase", "since", "held"])
        return
    if usecase and not tenant:
        fail("a use case is named within its tenant: add --tenant", 2)
    result = current_admin().call("pause", tenant=tenant, usecase=usecase)
    emit_json(result) if as_json else click.echo(f"paused {result['paused']}; {result['held']} queued recipient(s) held")


@click.command()
@click.option("--tenant", metavar="T", help="Resume one tenant.")
@click.option("--usecase", metavar="U", help="Resume one use case of --tenant.")
@json_option
def resume(tenant: str | None, usecase: str | None, as_json: bool) -> None:
    """Resume paused outbound mail; what the pause held flows again."""
    if usecase and not tenant:
        fail("a use case is named within its tenant: add --tenant", 2)
    result = current_admin().call("resume", tenant=tenant, usecase=usecase)
    if as_json:
        emit_json(result)
        return
    line = f"resumed {result['resumed']}; {result['released']} recipient(s) released"
    if result["still_paused"]:
        line += f", {result['still_paused']} still held by another pause"
    click.echo(line)
