"""The `gateway` command. Every subcommand but `run`, `config check|example` and `store migrate-to`
talks to the running daemon over the admin socket."""

from __future__ import annotations

import click

from .. import __version__
from .output import GatewayGroup, current_admin, socket_path  # noqa: F401 - the CLI's entry points for callers and tests


@click.group(cls=GatewayGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gateway")
@click.option("--socket", "socket_option", metavar="PATH",
              help="Admin socket (default: $GATEWAY_SOCKET unless --state-dir or --config is given, else where that daemon listens).")
@click.option("--state-dir", metavar="DIR", help="State directory (default: $STATE_DIRECTORY, else ./var).")
@click.option("--config", "config_option", metavar="PATH", help="Configuration file, to find the socket (default: $GATEWAY_CONFIG).")
@click.pass_context
def main(ctx: click.Context, socket_option: str | None, state_dir: str | None, config_option: str | None) -> None:
    """gateway: a multi-tenant SMTP/IMAP mail gateway.

    Exit codes: 0 ok, 1 operational error (daemon not running, not found, conflict), 2 usage or
    configuration error. Errors are one line on stderr.

    Flags beat environment variables, which beat the config file, which beats the defaults.
    """
    ctx.ensure_object(dict)
    ctx.obj["state_dir"] = state_dir
    ctx.obj["socket_option"] = socket_option
    ctx.obj["config_option"] = config_option


from . import daemon as _daemon  # noqa: E402
from . import connector as _connector  # noqa: E402
from . import tenant as _tenant  # noqa: E402
from . import domain as _domain  # noqa: E402
from . import usecase as _usecase  # noqa: E402
from . import queue as _queue  # noqa: E402
from . import events as _events  # noqa: E402
from . import webhook as _webhook  # noqa: E402
from . import unsubscribe as _unsubscribe  # noqa: E402
from . import suppression as _suppression  # noqa: E402
from . import address as _address  # noqa: E402
from . import inbox as _inbox  # noqa: E402
from . import apikey as _apikey  # noqa: E402
from . import store as _store  # noqa: E402

main.add_command(_daemon.run)
main.add_command(_daemon.status)
main.add_command(_daemon.config)
main.add_command(_tenant.tenant)
main.add_command(_domain.domain)
main.add_command(_usecase.usecase)
main.add_command(_queue.queue)
main.add_command(_queue.pause)
main.add_command(_queue.resume)
main.add_command(_connector.connector)
main.add_command(_events.events)
main.add_command(_webhook.webhook)
main.add_command(_unsubscribe.unsubscribe)
main.add_command(_suppression.suppression)
main.add_command(_address.address)
main.add_command(_inbox.inbox)
main.add_command(_inbox.thread)
main.add_command(_inbox.inbound)
main.add_command(_apikey.apikey)
main.add_command(_store.store)
