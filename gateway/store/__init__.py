"""The store: the only package that speaks SQL.

``Store`` bundles one ``Database`` with a repository object per noun (``store.tenants``,
``store.events``...). Each repository's methods are coroutines returning plain dicts; the
SQL and the SQLite specifics stay in this package; ``store.url`` puts the same repositories on
PostgreSQL (pg.py, dialect.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ..config import StoreConfig, redact_url
from ..errors import StoreError
from .addresses import Addresses
from .apikeys import ApiKeys
from .connectors import Connectors
from .db import Database
from .delivery import Delivery
from .domains import Domains
from .events import Events
from .forwards import Forwards
from .idempotency import Idempotency
from .inbound import Inbound
from .mailboxes import Mailboxes
from .messages import Messages
from .inbox import Inbox
from .limits import Limits
from .leases import Leases
from .pauses import Pauses
from .queue import Queue
from .recipients import Recipients
from .retention import Retention
from .stats import Stats
from .suppressions import Suppressions
from .tenants import Tenants
from .threads import Threads
from .unsubscribes import Unsubscribes
from .usecases import Usecases
from .webhooks import Webhooks


class Store:
    def __init__(self, db: Database):
        self.db = db
        self.tenants = Tenants(db)
        self.domains = Domains(db)
        self.usecases = Usecases(db)
        self.events = Events(db)
        self.queue = Queue(db)
        self.pauses = Pauses(db)
        self.delivery = Delivery(db)
        self.connectors = Connectors(db)
        self.retention = Retention(db)
        self.suppressions = Suppressions(db)
        self.webhooks = Webhooks(db)
        self.unsubscribes = Unsubscribes(db)
        self.inbound = Inbound(db)
        self.addresses = Addresses(db)
        self.threads = Threads(db)
        self.recipients = Recipients(db)
        self.mailboxes = Mailboxes(db)
        self.mailboxes.on_spooled = self.inbound.notify_spooled
        self.inbox = Inbox(db)
        self.forwards = Forwards(db)
        self.apikeys = ApiKeys(db)
        self.idempotency = Idempotency(db)
        self.messages = Messages(db)
        self.stats = Stats(db)
        self.limits = Limits(db)
        self.leases = Leases(db)

    @classmethod
    async def open(cls, path: Path, config: StoreConfig | None = None, *, secondary: bool = False) -> "Store":
        """The store; ``secondary``: beside the daemon, from another process (see db.py)."""
        config = config or StoreConfig()
        options = dict(batch_max=config.batch_max, read_connections=config.read_connections,
                       min_free_bytes=config.min_free_bytes, secondary=secondary)
        if config.url:
            from .pg import PgDatabase, is_postgres  # psycopg is imported only by a daemon that uses it

            if not is_postgres(config.url):
                raise StoreError(f"store.url must be postgresql://user@host:port/dbname, not {redact_url(config.url)!r}")
            return cls(await PgDatabase.open(config.url, path, **options))
        return cls(await Database.open(path, **options))

    async def close(self) -> None:
        await self.db.close()

    def problems(self) -> list[str]:
        """Why the store is not working normally (disk full, writer gone); empty when it is."""
        return self.db.problems()

    async def probe_writable(self, timeout: float | None = None) -> bool:
        """Commit one tiny write; True when it reached the disk within ``timeout`` seconds."""
        def touch(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES ('health_probe', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(time.time()),))
        try:
            await asyncio.wait_for(self.db.write(touch), timeout)
        except Exception:  # noqa: BLE001 - any failure (closed, disk full, stuck writer) means "not writable"
            return False
        return True
