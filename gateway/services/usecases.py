"""Use cases and their SMTP credentials; the authentication the submission listener calls.

Passwords are generated here (never chosen by people), shown once, and stored only as keyed hashes
(HMAC-SHA256, see ``credentials.py``; older argon2id hashes migrate on their next login). A failed
``authenticate`` costs the same whether the username exists, is revoked or the password is wrong:
an unknown or revoked username is checked against a dummy hash, so timing tells nothing. Last use is
recorded in the background: AUTH never waits for, or fails on, a write.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

import argon2
import structlog

from .. import validate
from ..admin.registry import admin_method
from ..domains.names import is_within, normalise_address, normalise_domain
from ..errors import Conflict, InvalidArgument
from ..store import Store
from ..unsubscribe import carries_fields
from ..suppression import ACTIONS as SUPPRESSED_ACTIONS
from .credentials import Passwords, UsageRecorder, generate, new_key
from .tenants import check_tenant_name

log = structlog.get_logger("usecases")

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KINDS = ("transactional", "marketing")
SCOPES = ("usecase", "domain")
MAX_SENDERS = 100
LEGACY_RECOUNT = 60.0  # seconds between counts of the argon2 hashes left (the count only ever falls)


def check_name(name: str) -> str:
    return validate.name(name, "use case")


def _check_names(tenant: str, name: str) -> None:
    check_tenant_name(tenant)
    check_name(name)


def check_entity(entity: str) -> str:
    # The organisation or product the mail speaks for.
    return validate.display(entity, "entity", required=True)


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    return validate.choice(value, what, choices)


def check_senders(addresses: list[str], domain: str) -> list[str]:
    """Normalised, de-duplicated sender addresses, each on ``domain`` or one of its subdomains."""
    if not addresses:
        raise InvalidArgument("a use case needs at least one sender address (--from)")
    if len(addresses) > MAX_SENDERS:
        raise InvalidArgument(f"at most {MAX_SENDERS} sender addresses per use case")
    out: list[str] = []
    for raw in addresses:
        address = normalise_address(raw)
        if not is_within(address.rpartition("@")[2], domain):
            raise InvalidArgument(f"sender {validate.shown(raw)} is not on the domain {domain!r} (or a subdomain of it)")
        if address not in out:
            out.append(address)
    return out


LIST_UNSUBSCRIBE = {"on": 1, "off": 0, "default": None}


def check_list_unsubscribe(value: str) -> int | None:
    """on, off, or default (the kind decides: on for marketing, off for transactional)."""
    if value not in LIST_UNSUBSCRIBE:
        raise InvalidArgument(f"invalid list-unsubscribe {value!r}: expected on, off or default")
    return LIST_UNSUBSCRIBE[value]


def present(usecase: dict[str, Any]) -> dict[str, Any]:
    """The use case as operators read it: list_unsubscribe as on/off, with "(default)" when the kind decides."""
    setting = usecase.get("list_unsubscribe")
    shown = "on" if carries_fields(usecase["kind"], setting) else "off"
    return {**usecase, "list_unsubscribe": shown + (" (default)" if setting is None else "")}


def check_rate_limit(value: int) -> int:
    return validate.rate_limit(value)


class UsecaseService:
    def __init__(self, store: Store, *, return_path_prefix: str = "bounces", hasher: argon2.PasswordHasher | None = None,
                 check_concurrency: int = 2):
        self.store = store
        self.return_path_prefix = return_path_prefix
        self.hasher = hasher  # argon2, for the legacy hashes only
        self.check_concurrency = check_concurrency  # argon2 checks at once (submission.auth_concurrency)
        self.passwords: Passwords | None = None  # once the key is read from the store
        self.usage = UsageRecorder(store.usecases.record_use)
        self.usage.on_rehashed = self._recount_legacy
        self._legacy: tuple[float, int] = (float("-inf"), 0)  # (when counted, argon2 hashes left)

    # ------------------------------------------------------------------ use cases

    @admin_method("usecase.add")
    async def add(self, tenant: str, domain: str, name: str, entity: str, kind: str, senders: list[str],
                  unsubscribe_scope: str = "usecase", route: str = "direct", rate_limit: int = 0,
                  list_unsubscribe: str = "default", suppressed: str = "refuse") -> dict[str, Any]:
        check_tenant_name(tenant)
        check_name(name)
        domain = normalise_domain(domain)
        fields = {
            "entity": check_entity(entity),
            "kind": check_choice("kind", kind, KINDS),
            "unsubscribe_scope": check_choice("unsubscribe scope", unsubscribe_scope, SCOPES),
            "route": validate.route(route),
            "rate_limit": check_rate_limit(rate_limit),
            "list_unsubscribe": check_list_unsubscribe(list_unsubscribe),
            "suppressed_action": check_choice("suppressed action", suppressed, SUPPRESSED_ACTIONS),
        }
        return present(await self.store.usecases.add(tenant, domain=domain, name=name, senders=check_senders(senders, domain), **fields))

    @admin_method("usecase.list")
    async def list(self, tenant: str | None = None, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """By name; with a tenant, ``after`` and ``limit`` read one page (the API's cursor)."""
        return [present(u) for u in await self.store.usecases.list(None if tenant is None else check_tenant_name(tenant),
                                                                    after=validate.optional_name(after, "use case"), limit=limit)]

    @admin_method("usecase.show")
    async def show(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        usecase = present(await self.store.usecases.get(tenant, name))
        usecase["credential_list"] = await self.store.usecases.credentials(tenant, name)
        return usecase

    @admin_method("usecase.update")
    async def update(self, tenant: str, name: str, new_name: str | None = None, entity: str | None = None,
                     kind: str | None = None, senders: list[str] | None = None, add_senders: list[str] | None = None,
                     remove_senders: list[str] | None = None, unsubscribe_scope: str | None = None,
                     route: str | None = None, rate_limit: int | None = None, list_unsubscribe: str | None = None,
                     suppressed: str | None = None) -> dict[str, Any]:
        _check_names(tenant, name)
        current = await self.store.usecases.get(tenant, name)
        changes: dict[str, Any] = {}
        if new_name is not None and new_name != name:
            changes["name"] = check_name(new_name)
        if entity is not None:
            changes["entity"] = check_entity(entity)
        if kind is not None:
            changes["kind"] = check_choice("kind", kind, KINDS)
        if unsubscribe_scope is not None:
            changes["unsubscribe_scope"] = check_choice("unsubscribe scope", unsubscribe_scope, SCOPES)
        if route is not None:
            changes["route"] = validate.route(route)
        if rate_limit is not None:
            changes["rate_limit"] = check_rate_limit(rate_limit)
        if list_unsubscribe is not None:
            changes["list_unsubscribe"] = check_list_unsubscribe(list_unsubscribe)
        if suppressed is not None:
            changes["suppressed_action"] = check_choice("suppressed action", suppressed, SUPPRESSED_ACTIONS)
        new_senders = None
        if senders is not None or add_senders or remove_senders:
            chosen = list(senders) if senders is not None else list(current["senders"])
            chosen += add_senders or []
            removing = {normalise_address(a) for a in remove_senders or []}
            missing = removing - set(current["senders"]) - {normalise_address(a) for a in chosen}
            if missing:
                raise InvalidArgument(f"use case {name!r} has no sender {validate.shown(sorted(missing)[0])}")
            new_senders = [a for a in check_senders(chosen, current["domain"]) if a not in removing]
            if not new_senders:
                raise InvalidArgument("a use case needs at least one sender address")
        if not changes and new_senders is None:
            raise InvalidArgument("nothing to change: give at least one option")
        # Stored senders were checked against the same domain (a use case never changes domain).
        return present(await self.store.usecases.update(tenant, name, changes, new_senders))

    @admin_method("usecase.delete")
    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        return await self.store.usecases.delete(tenant, name)

    # ------------------------------------------------------------------ credentials

    @admin_method("usecase.credentials.add")
    async def add_credential(self, tenant: str, usecase: str) -> dict[str, Any]:
        """A new username and password; the password is in this reply only, never stored or shown again."""
        _check_names(tenant, usecase)
        current = await self.store.usecases.get(tenant, usecase)
        password = generate()  # 192 bits
        password_hash = (await self._passwords()).hash(password)
        for _ in range(5):
            username = f"{current['name'][:40]}-{secrets.token_hex(5)}"
            try:
                record = await self.store.usecases.add_credential(tenant, usecase, username, password_hash)
            except Conflict:  # a 40-bit suffix collision is rare; retry with another
                continue
            return {**record, "password": password, "usecase": usecase, "tenant": tenant}
        raise RuntimeError("could not find a free username")

    @admin_method("usecase.credentials.list")
    async def list_credentials(self, tenant: str, usecase: str, after: int = 0, limit: int = -1) -> list[dict[str, Any]]:
        """By id; ``after`` (an id) and ``limit`` read one page (the API's cursor)."""
        _check_names(tenant, usecase)
        return await self.store.usecases.credentials(tenant, usecase, after=after, limit=limit)

    @admin_method("usecase.credentials.revoke")
    async def revoke_credential(self, tenant: str, usecase: str, username: str) -> dict[str, Any]:
        revoked = await self.store.usecases.revoke_credential(tenant, usecase, username)
        self._recount_legacy()
        return revoked

    # ------------------------------------------------------------------ authentication

    async def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The use case context for a valid, unrevoked credential; None otherwise (same cost either way).

        The dict is ``store.usecases.context(id)`` plus ``credential_id`` and ``username``: id, name,
        kind, route, rate_limit, entity, unsubscribe_scope, tenant_id, tenant, tenant_enabled,
        outbound_enabled, monthly_quota, domain_id, domain, domain_state, return_path_domain, senders.
        Whether the tenant may send (enabled, domain verified) is the caller's decision."""
        passwords = await self._passwords()
        row = await self.store.usecases.credential(username) if 0 < len(username) <= 255 else None
        live = row is not None and row["revoked_at"] is None
        stored = row["password_hash"] if live else passwords.dummy
        ok, rehash = await passwords.check(stored, password, legacy_left=await self._legacy_left())
        if not ok or not live:
            return None
        context = await self.context(row["usecase_id"])
        if context is None:
            return None
        self.usage.used(row["id"], (stored, passwords.hash(password)) if rehash else None)
        return {**context, "credential_id": row["id"], "username": row["username"]}

    async def _passwords(self) -> Passwords:
        if self.passwords is None:
            key = await self.store.usecases.credential_key(new_key())
            if self.passwords is None:  # another caller may have got here first
                self.passwords = Passwords(key, self.hasher, concurrency=self.check_concurrency)
        return self.passwords

    async def _legacy_left(self) -> bool:
        """Whether unrevoked argon2 hashes remain (counted at most every LEGACY_RECOUNT seconds)."""
        at, count = self._legacy
        if time.monotonic() - at > LEGACY_RECOUNT:
            count = await self.store.usecases.legacy_credentials()
            self._legacy = (time.monotonic(), count)
        return count > 0

    def _recount_legacy(self) -> None:
        self._legacy = (float("-inf"), self._legacy[1])

    async def context(self, usecase_id: int) -> dict[str, Any] | None:
        """The same dict as ``authenticate`` (without the credential), read fresh."""
        context = await self.store.usecases.context(usecase_id)
        if context is not None:
            # Where bounces for this use case's mail go: VERP addresses under <prefix>.<domain>.
            context["return_path_domain"] = f"{self.return_path_prefix}.{context['domain']}"
        return context
