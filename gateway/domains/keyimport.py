"""The import of DKIM key files into the store, for keys made before the store held private keys.

Since migration 0033 a key's private PEM is written into its ``dkim_keys`` row, in the transaction
that adds the domain or starts the rotation, and signing reads it from there: every node and every
process sees the same keys, and none needs a file. A row made before then has ``private_pem`` NULL
and names its file (``key_path``, under the state directory of the node that made it). This
component reads each such file once, checks it is a private key of the row's algorithm, and stores
it (log line ``dkim_key_imported``); the file is left where it is, the operator's to delete.

A row it cannot complete (the file is missing or is not the key it should be) is a problem: of an
active or pending key, ``/health`` names it and its mail is held with the same line (the route is a
``problem``, gateway/delivery/routes.py) rather than sent unsigned or signed with fewer keys. The
import is tried again every ``RETRY`` seconds while such a row is left, so a restored file is picked
up without a restart; a retired key signs nothing, its missing file is only logged.

Two nodes (or worker processes) importing at once is harmless: a row takes a PEM only while it has none.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..lifecycle import Component
from ..store import Store

log = structlog.get_logger("domains")

RETRY = 30.0   # seconds between imports while an active or pending key has no private key
_TYPES = {"rsa": rsa.RSAPrivateKey, "ed25519": ed25519.Ed25519PrivateKey}


def missing_key(domain: str, selector: str, key_path: str, why: str = "") -> str:
    """The one line saying a key cannot sign: the hold reason of its mail and its /health problem."""
    where = f"its file {key_path} {why or 'was not imported (gateway status says why)'}" if key_path else "it names no file"
    return (f"DKIM key {selector} of {domain} has no private key in the store and {where}: restore the file "
            f"(it is imported within {RETRY:g} s) or rotate the key")


def read_key_file(path: str, algorithm: str) -> str:
    """The PEM of a key file, checked to be an unencrypted private key of ``algorithm``; ValueError why not."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError("is missing" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not a private key ({exc})") from None
    if not isinstance(key, _TYPES[algorithm]):
        raise ValueError(f"is not an {algorithm} key")
    return data.decode("ascii")


class KeyImport(Component):
    name = "dkim-keys"

    def __init__(self, store: Store, *, retry: float = RETRY):
        self.store = store
        self.retry = retry
        self.imported = 0
        self.missing: list[dict[str, Any]] = []   # active or pending keys left without a private key
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.import_once()
        self._task = asyncio.create_task(self._run(), name="dkim-key-import")

    async def stop(self, deadline: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def import_once(self) -> list[dict[str, Any]]:
        """Import every file a row without a PEM names; returns (and keeps) the keys still without one."""
        missing = []
        for row in await self.store.domains.without_pem():
            try:
                if not row["key_path"]:
                    raise ValueError("")
                pem = await asyncio.to_thread(read_key_file, row["key_path"], row["algorithm"])
            except ValueError as exc:
                if row["state"] == "retired":
                    log.info("dkim_key_file_missing", domain=row["domain"], selector=row["selector"], path=row["key_path"],
                             why=str(exc), state="retired")
                    continue
                line = missing_key(row["domain"], row["selector"], row["key_path"], str(exc))
                if not any(m["id"] == row["id"] for m in self.missing):
                    log.error("dkim_key_missing", domain=row["domain"], selector=row["selector"], path=row["key_path"],
                              state=row["state"], problem=line)
                missing.append({**row, "problem": line})
                continue
            if await self.store.domains.import_pem(row["id"], pem):
                self.imported += 1
                log.info("dkim_key_imported", domain=row["domain"], selector=row["selector"], path=row["key_path"])
        self.missing = missing
        return missing

    async def _run(self) -> None:
        while self.missing:
            await asyncio.sleep(self.retry)
            try:
                await self.import_once()
            except Exception:  # noqa: BLE001 - the store may be failing; the next round tries again
                log.exception("dkim_key_import_failed")

    def problems(self) -> list[str]:
        return [f"dkim: {m['problem']}" for m in self.missing]

    def status(self) -> dict[str, Any]:
        return {"dkim_keys": {"imported": self.imported,
                              "missing": [{k: m[k] for k in ("domain", "selector", "state", "key_path", "problem")}
                                          for m in self.missing]}}
