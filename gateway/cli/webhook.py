"""`gateway webhook add|list|show|update|test|enable|disable|delete`: a tenant's signed event endpoints."""

from __future__ import annotations

import click

from .output import current_admin, details, emit_json, fail, format_time, json_option, table


def _kinds(value: str | None) -> list[str] | None:
    return [k.strip() for k in value.split(",") if k.strip()] if value else None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


@click.group()
def webhook() -> None:
    """Webhook endpoints: events POSTed as signed JSON to a tenant's URL."""


@webhook.command("add")
@click.argument("tenant")
@click.argument("url")
@click.option("--events", "kinds", metavar="K,K...", help="Event types to send (e.g. delivered,bounced,complained). Default: all.")
@click.option("--name", metavar="N", help="Name of the endpoint within the tenant (default: the URL's host).")
@click.option("--usecase", metavar="U", help="Only events of this use case (received mail of its addresses).")
@click.option("--address", metavar="A", help="Only events of this channel address (mail received at it).")
@json_option
def add(tenant: str, url: str, kinds: str | None, name: str | None, usecase: str | None, address: str | None, as_json: bool) -> None:
    """Add an endpoint. Its signing secret is printed now, and never again."""
    result = current_admin().call("webhook.add", tenant=tenant, url=url, events=_kinds(kinds), name=name,
                                  usecase=usecase, address=address)
    if as_json:
        emit_json(result)
        return
    only = "".join(f", {k} {result[k]}" for k in ("usecase", "address") if result.get(k))
    click.echo(f"added webhook {result['name']} of {tenant}: {result['url']} (events: {','.join(result['events'])}{only})")
    click.echo(f"signing secret (shown once; keep it where the receiver can read it): {result['secret']}")


@webhook.command("list")
@click.option("--tenant", metavar="T", help="Only this tenant's endpoints.")
@json_option
def list_(tenant: str | None, as_json: bool) -> None:
    """List endpoints with their backlog and last outcome."""
    rows = current_admin().call("webhook.list", tenant=tenant)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["state"] = "enabled" if r["enabled"] else "disabled"
        r["last"] = r["last_status"] if r["last_error"] == "" else (r["last_error"][:40] or r["last_status"])
        r["failing"] = format_time(r["failing_since"]) if r["failing_since"] else "-"
        r["only"] = ",".join(f"{k} {r[k]}" for k in ("usecase", "address") if r.get(k)) or "-"
    table(rows, ["tenant", "name", "url", "events", "only", "state", "backlog", "last", "failing"],
          ["TENANT", "NAME", "URL", "EVENTS", "ONLY", "STATE", "BACKLOG", "LAST", "FAILING SINCE"])


@webhook.command("show")
@click.argument("tenant")
@click.argument("name")
@click.option("--log", "log_limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="Attempts shown.")
@json_option
def show(tenant: str, name: str, log_limit: int, as_json: bool) -> None:
    """Show one endpoint and its latest attempts (the secret is never shown)."""
    ep = current_admin().call("webhook.show", tenant=tenant, name=name, log_limit=log_limit)
    if as_json:
        emit_json(ep)
        return
    ep["state"] = "enabled" if ep["enabled"] else f"disabled ({ep['disabled_reason']})"
    ep["created"] = format_time(ep["created_at"])
    ep["failing since"] = format_time(ep["failing_since"])
    ep["next attempt"] = format_time(ep["next_attempt_at"]) if ep["failures"] else "-"
    ep["last success"] = format_time(ep["last_success_at"])
    details(ep, ["tenant", "name", "url", "events", "usecase", "address", "state", "backlog", "failures", "failing since", "next attempt",
                 "last success", "last_error", "created"])
    click.echo("")
    rows = [{"time": format_time(d["at"]), "events": f"{d['first_event']}-{d['last_event']} ({d['events']})",
             "status": d["status"], "latency": _ms(d["latency"]), "ok": d["ok"], "error": d["error"][:60] or "-"}
            for d in ep["deliveries"]]
    table(rows, ["time", "events", "status", "latency", "ok", "error"], ["TIME", "EVENTS", "STATUS", "LATENCY", "OK", "ERROR"])


@webhook.command("test")
@click.argument("tenant")
@click.argument("name")
@json_option
def test(tenant: str, name: str, as_json: bool) -> None:
    """POST a signed test event now; prints the status and latency (exit 1 unless 2xx)."""
    result = current_admin().call("webhook.test", tenant=tenant, name=name)
    if as_json:
        emit_json(result)
    elif result["ok"]:
        click.echo(f"{result['url']}: HTTP {result['status']} in {_ms(result['latency'])}")
    else:
        click.echo(f"{result['url']}: failed after {_ms(result['latency'])}: {result['error']}")
    if not result["ok"]:
        fail(f"webhook {name} did not answer 2xx", 1)


@webhook.command("update")
@click.argument("tenant")
@click.argument("name")
@click.option("--url", metavar="URL", help="POST to this URL from now on (the same checks as add).")
@click.option("--events", "kinds", metavar="K,K...", help="Event types to send from now on; * for all.")
@click.option("--usecase", metavar="U", help="Only events of this use case.")
@click.option("--address", metavar="A", help="Only events of this channel address.")
@click.option("--unset", multiple=True, type=click.Choice(["usecase", "address"]), help="Drop that narrowing.")
@json_option
def update(tenant: str, name: str, url: str | None, kinds: str | None, usecase: str | None, address: str | None,
           unset: tuple[str, ...], as_json: bool) -> None:
    """Change an endpoint's URL, events or narrowing (the signing secret stays)."""
    ep = current_admin().call("webhook.update", tenant=tenant, name=name, url=url, events=_kinds(kinds) if kinds else None,
                              usecase=usecase, address=address, unset=list(unset))
    if as_json:
        emit_json(ep)
        return
    only = "".join(f", {k} {ep[k]}" for k in ("usecase", "address") if ep.get(k))
    click.echo(f"webhook {name} of {tenant}: {ep['url']} (events: {','.join(ep['events'])}{only})")


def _toggle(action: str, verb: str) -> click.Command:
    @click.command(action, help=f"{verb.capitalize()} an endpoint.")
    @click.argument("tenant")
    @click.argument("name")
    @json_option
    def command(tenant: str, name: str, as_json: bool) -> None:
        ep = current_admin().call(f"webhook.{action}", tenant=tenant, name=name)
        emit_json(ep) if as_json else click.echo(f"webhook {name} of {tenant}: {verb}")

    return command


webhook.add_command(_toggle("enable", "enabled"))
webhook.add_command(_toggle("disable", "disabled"))


@webhook.command("delete")
@click.argument("tenant")
@click.argument("name")
@json_option
def delete(tenant: str, name: str, as_json: bool) -> None:
    """Delete an endpoint; events still waiting for it are dropped (the count is printed)."""
    result = current_admin().call("webhook.delete", tenant=tenant, name=name)
    emit_json(result) if as_json else click.echo(f"deleted webhook {name} of {tenant}; {result['undelivered']} undelivered event(s) dropped")
