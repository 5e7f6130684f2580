"""Connector management: `gateway connector add|list|show|update|test|delete`.

Secrets (SMTP password, SendGrid API token) go in, never come out: every answer carries
``has_secret`` instead. `test` makes a real connection from the daemon and reports each step.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from ..admin.registry import admin_method
from ..config import Config
from ..delivery.connectors import SMTP_TLS_MODES, ConnectorSpec, test_connector
from ..errors import InvalidArgument
from ..store import Store
from .. import validate
from .tenants import check_tenant_name

ADDRESS = re.compile(r"^[^@\s<>\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
OUT_KINDS = ("smtp", "sendgrid")
SETTING_KEYS = ("host", "port", "tls", "username", "sender", "reply_to", "base_url", "verify_tls")


def _check_settings(kind: str, s: dict[str, Any], *, complete: bool) -> None:
    """Raise InvalidArgument for a bad value; with complete=True also for a missing required one."""
    if kind not in OUT_KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(OUT_KINDS)} (inbound connectors come later)")
    if kind == "smtp":
        if complete and not s.get("host"):
            raise InvalidArgument("an smtp connector needs --host")
        if "host" in s:
            validate.host(s["host"])
        if "port" in s:
            validate.integer(s["port"], "port", low=1, high=65535)
        if "tls" in s:
            validate.choice(s["tls"], "tls mode", SMTP_TLS_MODES)
        if "username" in s:
            validate.line(s["username"], "username", max_len=validate.MAX_HOST)
        if "base_url" in s:
            raise InvalidArgument("base_url is for sendgrid connectors")
    else:
        for key in ("host", "port", "tls", "username", "verify_tls"):
            if key in s:
                raise InvalidArgument(f"{key} is for smtp connectors")
        if s.get("base_url"):
            validate.line(s["base_url"], "base_url", max_len=validate.MAX_URL)
            url = urlparse(s["base_url"])
            if url.scheme not in ("http", "https") or not url.netloc or validate.unprintable(s["base_url"]):
                raise InvalidArgument(f"base_url must be an http(s) URL, got {validate.shown(s['base_url'])}")
    for key in ("sender", "reply_to"):
        if s.get(key) and not (len(s[key]) <= 254 and ADDRESS.match(s[key])):
            raise InvalidArgument(f"{key} must be a plain address (local@domain), got {validate.shown(s[key])}")
    for key, value in s.items():
        if isinstance(value, str) and validate.unprintable(value):
            raise InvalidArgument(f"{key} must not contain CR, LF, NUL or other control characters")


def _check_names(tenant: str, name: str) -> None:
    check_tenant_name(tenant)
    validate.name(name, "connector")


def _check_secret(secret: str | None) -> None:
    if secret is not None:
        # Never shown, not even escaped: only what is wrong with it.
        validate.line(secret, "the secret", max_len=validate.MAX_SECRET)


def secret_forms(secret: str, username: str) -> list[str]:
    """The secret as it travels: plain, base64 (AUTH LOGIN), and the AUTH PLAIN blob's base64."""
    if not secret:
        return []
    raw = secret.encode("utf-8")
    forms = {secret, base64.b64encode(raw).decode(), base64.b64encode(b"\0" + username.encode("utf-8") + b"\0" + raw).decode()}
    return sorted(forms, key=len, reverse=True)


def redact(text: str, forms: list[str]) -> str:
    for form in forms:
        text = text.replace(form, "********")
    return text


class ConnectorService:
    def __init__(self, store: Store, config: Callable[[], Config]):
        self.store = store
        self.config = config  # the daemon's current config (it changes on SIGHUP)

    @admin_method("connector.add")
    async def add(self, tenant: str, name: str, kind: str, host: str | None = None, port: int | None = None,
                  tls: str | None = None, username: str | None = None, secret: str | None = None,
                  sender: str | None = None, reply_to: str | None = None, base_url: str | None = None,
                  verify_tls: bool | None = None, enabled: bool = True) -> dict[str, Any]:
        check_tenant_name(tenant)
        validate.name(name, "connector")
        settings = {k: v for k, v in {"host": host, "port": port, "tls": tls, "username": username, "sender": sender,
                                      "reply_to": reply_to, "base_url": base_url, "verify_tls": verify_tls}.items() if v is not None}
        if kind == "smtp":
            settings.setdefault("tls", "starttls")
            settings.setdefault("port", {"implicit": 465, "none": 25}.get(settings["tls"], 587))
        _check_settings(kind, settings, complete=True)
        _check_secret(secret)
        if kind == "sendgrid" and not secret:
            raise InvalidArgument("a sendgrid connector needs its API token (secret)")
        if kind == "smtp" and settings.get("username") and not secret:
            raise InvalidArgument("a username needs a password (secret)")
        return await self.store.connectors.add(tenant, name, kind, direction="out", enabled=enabled, settings=settings,
                                               secret=secret or "")

    @admin_method("connector.list")
    async def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return await self.store.connectors.list(None if tenant is None else check_tenant_name(tenant))

    @admin_method("connector.show")
    async def show(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        return await self.store.connectors.get(tenant, name)

    @admin_method("connector.update")
    async def update(self, tenant: str, name: str, host: str | None = None, port: int | None = None, tls: str | None = None,
                     username: str | None = None, secret: str | None = None, sender: str | None = None,
                     reply_to: str | None = None, base_url: str | None = None, verify_tls: bool | None = None,
                     enabled: bool | None = None, unset: list[str] | None = None) -> dict[str, Any]:
        _check_names(tenant, name)
        _check_secret(secret)
        current = await self.store.connectors.get(tenant, name)
        settings = {k: v for k, v in {"host": host, "port": port, "tls": tls, "username": username, "sender": sender,
                                      "reply_to": reply_to, "base_url": base_url, "verify_tls": verify_tls}.items() if v is not None}
        unset = unset or []
        bad = [k for k in unset if k not in ("username", "sender", "reply_to", "base_url", "verify_tls")]
        if bad:
            raise InvalidArgument(f"cannot unset {', '.join(validate.shown(k) for k in bad[:5])}")
        _check_settings(current["kind"], settings, complete=False)
        return await self.store.connectors.update(tenant, name, settings=settings, unset=unset, secret=secret, enabled=enabled)

    @admin_method("connector.test")
    async def test(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        spec = await self.store.connectors.spec_by_tenant_name(tenant, name)
        connector = ConnectorSpec(spec["id"], spec["tenant_id"], spec["name"], spec["kind"], spec["enabled"], spec["settings"], spec["secret"])
        config = self.config()
        result = await test_connector(connector, config.delivery, config.delivery.helo_name or config.daemon.hostname)
        # The step details quote the remote server, which may echo what it got: no form of the secret leaves.
        forms = secret_forms(spec["secret"], spec["settings"].get("username", ""))
        result["steps"] = [{**step, "detail": redact(str(step.get("detail", "")), forms)} for step in result["steps"]]
        return {"tenant": tenant, "name": name, "kind": spec["kind"], **result}

    @admin_method("connector.delete")
    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        return await self.store.connectors.delete(tenant, name)
