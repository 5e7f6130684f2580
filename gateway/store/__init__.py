"""The store: the only package that speaks SQL.

``Store`` bundles one ``Database`` with a repository object per noun (``store.tenants``,
``store.events``...). Each repository's methods are coroutines returning plain dicts; the
SQL and the SQLite specifics stay in this package so another backend can replace it.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import StoreConfig
from .db import Database
from .events import Events
from .queue import Queue
from .tenants import Tenants


class Store:
    def __init__(self, db: Database):
        self.db = db
        self.tenants = Tenants(db)
        self.events = Events(db)
        self.queue = Queue(db)

    @classmethod
    async def open(cls, path: Path, config: StoreConfig | None = None) -> "Store":
        config = config or StoreConfig()
        db = await Database.open(path, batch_max=config.batch_max, read_connections=config.read_connections)
        return cls(db)

    async def close(self) -> None:
        await self.db.close()

    async def probe_writable(self) -> bool:
        """Commit one tiny write; True when it reached the disk."""
        def touch(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES ('health_probe', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(time.time()),))
        try:
            await self.db.write(touch)
        except Exception:  # noqa: BLE001 - any failure means "not writable"
            return False
        return True
