"""Sending domains: adding one (name, DKIM keys, token), the records to publish, verification,
key rotation, listing and deletion.

Methods take an optional ``tenant``: given, the domain must belong to it (a domain of another tenant
is "not found", exactly like one that does not exist); omitted, the operator acts on whichever
tenant holds the domain. DNS is asked outside any transaction; the result is recorded afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import structlog

from .. import validate
from ..admin.registry import admin_method
from ..config import Config
from ..domains import keys as dkim_keys
from ..domains.lookup import Lookup
from ..domains.names import display_domain, normalise_domain
from ..domains.records import Settings, plan, zone
from ..domains.spf import is_spf
from ..domains.verify import Verifier
from ..errors import InvalidArgument, NotFound
from ..store import Store
from .tenants import check_tenant_name

log = structlog.get_logger("domains")

UNCHECKED = {"status": "unchecked", "detail": ""}


def _last_results(row: dict[str, Any]) -> dict[tuple[str, str, str | None], dict[str, str]]:
    """What the last verification found per record, by (name, type, selector)."""
    return {(r["name"], r["type"], r.get("selector")): {"status": r["status"], "detail": r.get("detail", "")}
            for r in row["last_result"].get("records", [])}


class DomainService:
    def __init__(self, store: Store, config: Config):
        self.store = store
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        """New records and resolvers for new work (SIGHUP); runs in flight finish with the old ones."""
        self.config = config
        self.settings = Settings.from_config(config)
        self.lookup = Lookup(config.dns)
        self.verifier = Verifier(self.lookup, self.settings)

    def _name(self, domain: str) -> str:
        return normalise_domain(domain)

    async def _scope(self, domain: str, tenant: str | None) -> tuple[str, str]:
        """(tenant, normalised domain) the request acts on."""
        name = self._name(domain)
        if tenant is not None:
            return check_tenant_name(tenant), name
        owner = await self.store.domains.owner(name)
        if owner is None:
            raise NotFound(f"no domain {name!r}")
        return owner, name

    # ------------------------------------------------------------------ adding and keys

    async def _new_keys(self, selector: str, choice: str) -> list[dict[str, Any]]:
        """New key pairs; the private PEM goes into the store with the row (no file: every node reads it there)."""
        algs = dkim_keys.algorithms(choice)
        made = await asyncio.gather(*(
            asyncio.to_thread(dkim_keys.generate, dkim_keys.selector_for(selector, a, len(algs) > 1), a) for a in algs))
        return [{"selector": key.selector, "algorithm": key.algorithm, "public_key": key.public_key,
                 "private_pem": key.private_pem.decode("ascii")} for key in made]

    @staticmethod
    def _drop_files(keys: list[dict[str, Any]]) -> None:
        """The files keys made before migration 0033 named (keys made since have none)."""
        for key in keys:
            if key["key_path"]:
                dkim_keys.remove_key(Path(key["key_path"]))

    @admin_method("domain.add")
    async def add(self, tenant: str, domain: str, selector: str | None = None, dkim: str | None = None) -> dict[str, Any]:
        check_tenant_name(tenant)
        name = normalise_domain(domain, reserved=self.config.domains.reserved)
        choice = dkim or self.config.domains.dkim_algorithm
        dkim_keys.algorithms(choice)
        selector = dkim_keys.check_selector(selector) if selector else dkim_keys.next_selector(set())
        await self.store.domains.check_free(tenant, name)  # refuse before making keys; add checks again
        keys = await self._new_keys(selector, choice)
        row = await self.store.domains.add(tenant, name, token=secrets.token_urlsafe(24), keys=keys)
        log.info("domain_added", tenant=tenant, domain=name, selectors=[k["selector"] for k in keys])
        return self._public(row)

    @admin_method("domain.rotate_dkim")
    async def rotate_dkim(self, domain: str, tenant: str | None = None, selector: str | None = None,
                          dkim: str | None = None) -> dict[str, Any]:
        """A new selector, pending until its record verifies; then it signs and the old key retires."""
        tenant, name = await self._scope(domain, tenant)
        current = await self.store.domains.get(tenant, name)
        taken = {k["selector"] for k in current["keys"]}
        if dkim is None:
            algs = sorted({k["algorithm"] for k in current["keys"] if k["state"] in ("active", "pending")}) or ["rsa"]
            dkim = "both" if len(algs) == 2 else algs[0]
        dkim_keys.algorithms(dkim)
        selector = dkim_keys.check_selector(selector) if selector else dkim_keys.next_selector(taken)
        keys = await self._new_keys(selector, dkim)
        row = await self.store.domains.add_keys(tenant, name, keys)
        log.info("dkim_rotation_started", domain=name, selectors=[k["selector"] for k in keys])
        return self._public(row)

    @admin_method("domain.remove_selector")
    async def remove_selector(self, domain: str, selector: str, tenant: str | None = None) -> dict[str, Any]:
        """Remove a retired (or never activated) key (and the file of a key from before migration 0033)."""
        tenant, name = await self._scope(domain, tenant)
        key = await self.store.domains.remove_key(tenant, name, dkim_keys.check_selector(selector))
        await asyncio.to_thread(self._drop_files, [key])
        return {"domain": name, "selector": key["selector"], "algorithm": key["algorithm"], "state": key["state"], "removed": True}

    # ------------------------------------------------------------------ records and verification

    @admin_method("domain.records")
    async def records(self, domain: str, tenant: str | None = None) -> dict[str, Any]:
        """What to publish. Asks DNS for the current SPF and DMARC so the advice merges with them."""
        tenant, name = await self._scope(domain, tenant)
        row = await self.store.domains.get(tenant, name)
        spf_answer, dmarc_answer = await asyncio.gather(self.lookup.txt(name), self.lookup.txt(f"_dmarc.{name}"))
        existing_spf = [v for v in spf_answer.values if is_spf(v)]
        existing_dmarc = [v for v in dmarc_answer.values if v.replace(" ", "").upper().startswith("V=DMARC1")]
        records = plan(row, self.settings, existing_spf=existing_spf[0] if existing_spf else None,
                       existing_dmarc=existing_dmarc[0] if len(existing_dmarc) == 1 else None)
        warnings = []
        if len(existing_spf) > 1:
            warnings.append(f"{name} publishes {len(existing_spf)} SPF records; replace them all with the one below")
        for answer, what in ((spf_answer, "SPF"), (dmarc_answer, "DMARC")):
            if answer.status == "error":
                warnings.append(f"could not read the current {what} record ({answer.detail}); merge by hand if one exists")
        last = _last_results(row)
        return {"domain": name, "tenant": tenant, "records": [{**r.as_dict(), **last.get((r.name, r.type, r.selector), UNCHECKED)}
                                                             for r in records],
                "zone": zone(name, records), "warnings": warnings}

    async def check(self, tenant: str, name: str) -> dict[str, Any]:
        """Verify one domain and record the outcome; the re-verifier calls this too."""
        row = await self.store.domains.get(tenant, name)
        result = await self.verifier.check(row)
        selectors = result.pop("verified_selectors")
        changed = await self.store.domains.record(row["id"], row["verification_token"], result["state"], result, selectors)
        if changed is None:
            raise NotFound(f"domain {name!r} was deleted while it was being verified")
        result["state"] = changed["state"]
        result["previous_state"] = changed["from"]
        result["activated_selectors"] = changed["activated"]
        failed = [f"{r['name']} {r['type']}: {r['status']}" for r in result["records"] if r["required"] and r["status"] != "verified"]
        if changed["state"] != changed["from"]:
            level = log.warning if changed["state"] == "failing" else log.info
            level(f"domain_{changed['state']}", tenant=tenant, domain=name, previous=changed["from"], failed=failed)
        elif result["outcome"] == "error":
            log.warning("domain_verify_inconclusive", tenant=tenant, domain=name, errors=failed)
        for selector in changed["activated"]:
            log.info("dkim_key_activated", domain=name, selector=selector)
        return {"domain": name, "tenant": tenant, **result}

    @admin_method("domain.verify")
    async def verify(self, domain: str, tenant: str | None = None) -> dict[str, Any]:
        tenant, name = await self._scope(domain, tenant)
        return await self.check(tenant, name)

    @admin_method("domain.reverify")
    async def reverify(self, older_than: float = 0.0, concurrency: int | None = None) -> dict[str, Any]:
        """Verify again every verified or failing domain last checked more than ``older_than`` seconds ago."""
        validate.number(older_than, "older_than", low=0, high=validate.MAX_SECONDS, unit=" seconds")
        if concurrency is not None:
            validate.integer(concurrency, "concurrency", low=1, high=validate.MAX_CONCURRENCY)
        started = time.monotonic()
        due = await self.store.domains.due(time.time() - older_than)
        gate = asyncio.Semaphore(concurrency or self.config.domains.verify_concurrency)
        counts: dict[str, int] = {}

        async def one(item: dict[str, Any]) -> None:
            async with gate:
                try:
                    outcome = (await self.check(item["tenant"], item["name"]))["state"]
                except NotFound:
                    outcome = "deleted"
                except Exception:  # noqa: BLE001 - one broken domain must not stop the round
                    log.exception("domain_reverify_failed", domain=item["name"])
                    outcome = "internal_error"
                counts[outcome] = counts.get(outcome, 0) + 1

        await asyncio.gather(*(one(item) for item in due))
        return {"checked": len(due), "states": counts, "seconds": round(time.monotonic() - started, 3)}

    # ------------------------------------------------------------------ listing

    def _public(self, row: dict[str, Any]) -> dict[str, Any]:
        """A domain as callers see it: no key paths' contents, keys with their ages."""
        now = time.time()
        out = {k: row[k] for k in ("name", "tenant", "state", "verified_at", "checked_at", "created_at") if k in row}
        out["unicode"] = display_domain(row["name"])
        out["return_path_domain"] = self.settings.return_path(row["name"])
        out["keys"] = [{"selector": k["selector"], "algorithm": k["algorithm"], "state": k["state"], "public_key": k["public_key"],
                        "created_at": k["created_at"], "activated_at": k.get("activated_at"), "retired_at": k.get("retired_at"),
                        "age_days": round((now - k["created_at"]) / 86400, 1)} for k in row.get("keys", [])]
        return out

    @admin_method("domain.list")
    async def list(self, tenant: str | None = None, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """By name; ``after`` and ``limit`` read one page (the API's cursor), all of them by default."""
        if tenant is not None:
            check_tenant_name(tenant)
        return await self.store.domains.list(tenant, after=None if after is None else self._name(after), limit=limit)

    @admin_method("domain.show")
    async def show(self, domain: str, tenant: str | None = None) -> dict[str, Any]:
        """The domain, its keys and ages, what uses it, and each record with its last result."""
        tenant, name = await self._scope(domain, tenant)
        row = await self.store.domains.get(tenant, name)
        out = self._public(row)
        last = _last_results(row)
        out["records"] = []
        for record in plan(row, self.settings):
            previous = last.get((record.name, record.type, record.selector), UNCHECKED)
            out["records"].append({**record.as_dict(), "last_status": previous["status"], "last_detail": previous["detail"]})
        out["last_outcome"] = row["last_result"].get("outcome")
        out["dmarc_policy"] = row["last_result"].get("dmarc_policy")
        out["used_by"] = await self.store.domains.users(tenant, name)
        out.update(await self.store.domains.inbound(tenant, name))
        return out

    @admin_method("domain.inbound")
    async def inbound(self, domain: str, enabled: bool | None = None, catchall: str | None = None, no_catchall: bool = False,
                      tenant: str | None = None) -> dict[str, Any]:
        """Receiving on the MX on or off, and the catch-all use case (one of this domain's) set or cleared.
        Mail is accepted only while the domain is also verified (the MX checks it per message)."""
        if catchall is not None and no_catchall:
            raise InvalidArgument("give a catch-all use case or no catch-all, not both")
        if catchall is not None:
            validate.name(catchall, "use case")
        if enabled is None and catchall is None and not no_catchall:
            raise InvalidArgument("nothing to change: turn inbound on or off, or set or clear the catch-all")
        tenant, name = await self._scope(domain, tenant)
        row = await self.store.domains.set_inbound(tenant, name, enabled=enabled, catchall=catchall, clear_catchall=no_catchall)
        return {"name": name, "tenant": tenant, "state": row["state"], **await self.store.domains.inbound(tenant, name)}

    @admin_method("domain.delete")
    async def delete(self, domain: str, tenant: str | None = None) -> dict[str, Any]:
        """Refused while a use case or connector uses the domain; removes its keys (and old key files)."""
        tenant, name = await self._scope(domain, tenant)
        row = await self.store.domains.delete(tenant, name)
        await asyncio.to_thread(self._drop_files, row["keys"])
        log.info("domain_deleted", tenant=tenant, domain=name)
        return {"name": name, "tenant": tenant, "deleted": True, "keys_removed": len(row["keys"])}
