"""`gateway store migrate-to URL`: copy this state directory's SQLite store into PostgreSQL."""

from __future__ import annotations

import click

from ..errors import GatewayError
from .output import fail


@click.group()
def store() -> None:
    """The store itself (run with the daemon stopped)."""


@store.command("migrate-to")
@click.argument("url")
@click.option("--batch", type=click.IntRange(1, 1_000_000), default=5000, show_default=True, help="Rows per COPY batch.")
@click.pass_context
def migrate_to(ctx: click.Context, url: str, batch: int) -> None:
    """Copy the SQLite store of the state directory into the empty PostgreSQL database URL
    (postgresql://user@host:port/db; the password in the URL or $PGPASSWORD), verify every table
    (row counts and checksums), and print what was done. The daemon must be stopped: this holds
    its state lock. Then set store.url to URL and start the daemon."""
    from ..paths import Paths, state_dir_from
    from ..statelock import StateLock
    from ..store.copy import migrate_to as copy
    from ..store.pg import is_postgres

    if not is_postgres(url):
        fail(f"not a PostgreSQL URL: {url!r} (postgresql://user@host:port/dbname)", code=2)
    state = state_dir_from(ctx.find_root().obj.get("state_dir"))
    paths = Paths(state_dir=state, socket=state / "admin.sock")
    try:
        lock = StateLock(paths.lock).acquire()
    except GatewayError as exc:
        fail(f"{exc}; stop the daemon first")
    try:
        copy(paths.database, url, batch=batch, say=click.echo)
    except GatewayError as exc:
        fail(str(exc))
    finally:
        lock.release()
