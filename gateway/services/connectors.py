"""Connector management: `gateway connector add|list|show|update|incoming|test|delete`.

Secrets (SMTP password, SendGrid API token, the incoming mailbox's password) go in, never come out:
every answer carries ``has_secret`` and ``has_incoming_secret`` instead. `test` makes a real
connection from the daemon and reports each step, outgoing and incoming.

One connector can carry outgoing settings (kind smtp or sendgrid) and incoming ones (IMAP or POP3,
``settings.incoming``, set with `connector incoming`); a connector of kind imap or pop3 is incoming
only. Its direction (out, in, both) follows what it carries.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from ..admin.registry import admin_method
from ..config import Config
from ..delivery.connectors import SMTP_TLS_MODES, ConnectorSpec, outgoing_target, test_connector
from ..errors import InvalidArgument, NotFound
from ..inbound import mailbox
from ..inbound.mailbox import Incoming
from ..inbound.probe import test_incoming
from ..store import Store
from .. import remotes, validate
from .addresses import check_address
from .tenants import check_tenant_name

ADDRESS = re.compile(r"^[^@\s<>\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
OUT_KINDS = ("smtp", "sendgrid")
IN_KINDS = mailbox.PROTOCOLS
INCOMING_UNSET = ("usecase", "address")
SETTING_KEYS = ("host", "port", "tls", "username", "sender", "reply_to", "base_url", "verify_tls")


# What a connector may point the gateway at (remotes.py): loopback only under this setting.
LOOPBACK_SETTING = "delivery.allow_loopback"


def _check_settings(kind: str, s: dict[str, Any], *, complete: bool, allow_loopback: bool) -> None:
    """Raise InvalidArgument for a bad value; with complete=True also for a missing required one."""
    if kind in IN_KINDS:
        raise InvalidArgument(f"a {kind} connector's settings are its incoming ones: use `connector incoming`")
    if kind not in OUT_KINDS:
        raise InvalidArgument(f"kind must be one of {', '.join(OUT_KINDS + IN_KINDS)}")
    if kind == "smtp":
        if complete and not s.get("host"):
            raise InvalidArgument("an smtp connector needs --host")
        if "host" in s:
            validate.host(s["host"])
            remotes.check_host(s["host"], "host", allow_loopback=allow_loopback, setting=LOOPBACK_SETTING)
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
            remotes.check_host(url.hostname or "", "base_url", allow_loopback=allow_loopback, setting=LOOPBACK_SETTING)
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
    def __init__(self, store: Store, config: Callable[[], Config], on_change: Callable[[], None] | None = None):
        self.store = store
        self.config = config  # the daemon's current config (it changes on SIGHUP)
        self.on_change = on_change or (lambda: None)  # the poller looks at the connectors again

    def _loopback(self) -> bool:
        return self.config().delivery.allow_loopback

    async def _refusal(self, host: str, port: int) -> str:
        """Why ``connector test`` must not connect to host:port now (remotes.py), '' when it may."""
        return await remotes.resolved_refusal(host, port, allow_loopback=self._loopback(), setting=LOOPBACK_SETTING,
                                              timeout=self.config().delivery.connect_timeout)

    async def _incoming(self, tenant: str, name: str, kind: str, current: dict[str, Any] | None, given: dict[str, Any],
                        unset: list[str], insecure_plaintext: bool, has_secret: bool) -> dict[str, Any]:
        """The complete incoming settings from what is stored and what is given, checked."""
        if kind in IN_KINDS:
            if given.get("protocol") not in (None, kind):
                raise InvalidArgument(f"a {kind} connector polls over {kind}; add another connector for {given['protocol']}")
            given["protocol"] = kind
        merged = {**(current or {}), **given}
        if current and "port" not in given and current.get("port") == mailbox.DEFAULT_PORTS.get(
                (current.get("protocol"), current.get("tls", "implicit"))):
            merged.pop("port", None)   # it was the old mode's default: a new --tls gets the new default
        for key in unset:
            merged.pop(key, None)
        if current and current.get("tls") == "none" and "tls" not in given:
            insecure_plaintext = True   # allowed when it was set; a change of other settings keeps it
        checked = mailbox.check(merged, insecure_plaintext=insecure_plaintext)
        remotes.check_host(checked.get("host", ""), "host", allow_loopback=self._loopback(), setting=LOOPBACK_SETTING)
        if not has_secret:
            raise InvalidArgument("incoming settings need the mailbox password (--secret-stdin or --secret-env)")
        if checked.get("usecase"):
            try:
                await self.store.usecases.get(tenant, checked["usecase"])
            except NotFound:
                raise InvalidArgument(f"tenant {tenant!r} has no use case named {checked['usecase']!r}") from None
        if checked.get("address"):
            # Polled mail goes where this address resolves (the MX's resolver): it must be the
            # tenant's own, or one tenant's mailbox could feed another tenant's use case.
            checked["address"] = check_address(checked["address"], "incoming address")
            try:
                await self.store.addresses.get(tenant, checked["address"])
            except NotFound:
                raise InvalidArgument(f"tenant {tenant!r} has no channel address {checked['address']!r}") from None
        return checked

    @admin_method("connector.incoming")
    async def incoming(self, tenant: str, name: str, protocol: str | None = None, host: str | None = None,
                       port: int | None = None, tls: str | None = None, insecure_plaintext: bool = False,
                       verify_tls: bool | None = None, username: str | None = None, secret: str | None = None,
                       folder: str | None = None, after: str | None = None, usecase: str | None = None,
                       address: str | None = None, enabled: bool | None = None, unset: list[str] | None = None,
                       remove: bool = False) -> dict[str, Any]:
        """Set (merge into) or remove a connector's incoming settings."""
        _check_names(tenant, name)
        _check_secret(secret)
        current = await self.store.connectors.get(tenant, name)
        if remove:
            if current["kind"] in IN_KINDS:
                raise InvalidArgument(f"a {current['kind']} connector is incoming only: delete it instead")
            record = await self.store.connectors.set_incoming(tenant, name, None)
            self.on_change()
            return record
        bad = [k for k in unset or [] if k not in INCOMING_UNSET]
        if bad:
            raise InvalidArgument(f"cannot unset {', '.join(validate.shown(k) for k in bad[:5])}")
        given = {k: v for k, v in {"protocol": protocol, "host": host, "port": port, "tls": tls, "verify_tls": verify_tls,
                                   "username": username, "folder": folder, "after": after, "usecase": usecase,
                                   "address": address, "enabled": enabled}.items() if v is not None}
        has_secret = bool(secret) or current["has_incoming_secret"]
        checked = await self._incoming(tenant, name, current["kind"], current["settings"].get("incoming"), given,
                                       unset or [], insecure_plaintext, has_secret)
        record = await self.store.connectors.set_incoming(tenant, name, checked, secret=secret or None)
        self.on_change()
        return await self._with_status(record)

    async def _with_status(self, record: dict[str, Any]) -> dict[str, Any]:
        if "incoming" in record["settings"]:
            record["incoming_status"] = await self.store.mailboxes.status(record["id"]) or {}
        return record

    @admin_method("connector.add")
    async def add(self, tenant: str, name: str, kind: str, host: str | None = None, port: int | None = None,
                  tls: str | None = None, username: str | None = None, secret: str | None = None,
                  sender: str | None = None, reply_to: str | None = None, base_url: str | None = None,
                  verify_tls: bool | None = None, enabled: bool = True, folder: str | None = None,
                  after: str | None = None, usecase: str | None = None, address: str | None = None,
                  insecure_plaintext: bool = False) -> dict[str, Any]:
        check_tenant_name(tenant)
        validate.name(name, "connector")
        if kind in IN_KINDS:
            # An incoming-only connector: host, port, tls, username and the secret are the mailbox's.
            for key, value in (("sender", sender), ("reply_to", reply_to), ("base_url", base_url)):
                if value is not None:
                    raise InvalidArgument(f"{key} is for outgoing connectors")
            _check_secret(secret)
            given = {k: v for k, v in {"host": host, "port": port, "tls": tls, "verify_tls": verify_tls, "username": username,
                                       "folder": folder, "after": after, "usecase": usecase, "address": address}.items()
                     if v is not None}
            checked = await self._incoming(tenant, name, kind, None, given, [], insecure_plaintext, bool(secret))
            record = await self.store.connectors.add(tenant, name, kind, direction="in", enabled=enabled,
                                                     settings={"incoming": checked}, incoming_secret=secret or "")
            self.on_change()
            return await self._with_status(record)
        for key, value in (("folder", folder), ("after", after), ("usecase", usecase), ("address", address)):
            if value is not None:
                raise InvalidArgument(f"{key} is an incoming setting: use `connector incoming` (or --kind imap|pop3)")
        settings = {k: v for k, v in {"host": host, "port": port, "tls": tls, "username": username, "sender": sender,
                                      "reply_to": reply_to, "base_url": base_url, "verify_tls": verify_tls}.items() if v is not None}
        if kind == "smtp":
            settings.setdefault("tls", "starttls")
            settings.setdefault("port", {"implicit": 465, "none": 25}.get(settings["tls"], 587))
        _check_settings(kind, settings, complete=True, allow_loopback=self._loopback())
        _check_secret(secret)
        if kind == "sendgrid" and not secret:
            raise InvalidArgument("a sendgrid connector needs its API token (secret)")
        if kind == "smtp" and settings.get("username") and not secret:
            raise InvalidArgument("a username needs a password (secret)")
        record = await self.store.connectors.add(tenant, name, kind, direction="out", enabled=enabled, settings=settings,
                                                 secret=secret or "")
        self.on_change()
        return record

    @admin_method("connector.list")
    async def list(self, tenant: str | None = None, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
        """Connectors by name; a tenant's page on from ``after`` (at most ``limit``, -1 all)."""
        if after:
            validate.name(after, "connector")
        return await self.store.connectors.list(None if tenant is None else check_tenant_name(tenant), after=after, limit=limit)

    @admin_method("connector.show")
    async def show(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        return await self._with_status(await self.store.connectors.get(tenant, name))

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
        if current["kind"] in IN_KINDS and (settings or unset or secret is not None):
            raise InvalidArgument(f"a {current['kind']} connector's settings are its incoming ones: use `connector incoming`")
        _check_settings(current["kind"], settings, complete=False, allow_loopback=self._loopback())
        record = await self.store.connectors.update(tenant, name, settings=settings, unset=unset, secret=secret, enabled=enabled)
        self.on_change()
        return await self._with_status(record)

    @admin_method("connector.test")
    async def test(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        spec = await self.store.connectors.spec_by_tenant_name(tenant, name)
        config = self.config()
        result: dict[str, Any] = {"ok": True, "steps": []}
        if spec["kind"] in OUT_KINDS:
            connector = ConnectorSpec(spec["id"], spec["tenant_id"], spec["name"], spec["kind"], spec["enabled"], spec["settings"], spec["secret"])
            why = await self._refusal(*outgoing_target(connector, config.delivery))
            if why:
                result = {"ok": False, "steps": [{"step": "connect", "ok": False, "detail": f"not connecting: {why}"}]}
            else:
                result = await test_connector(connector, config.delivery, config.delivery.helo_name or config.daemon.hostname)
        forms = secret_forms(spec["secret"], spec["settings"].get("username", ""))
        incoming = spec["settings"].get("incoming")
        if incoming:
            # Incoming steps are named protocol:step (imap:login), beside the outgoing ones.
            mailbox_settings = Incoming.from_settings(incoming, spec["incoming_secret"])
            why = await self._refusal(mailbox_settings.host, mailbox_settings.port)
            if why:
                got = {"ok": False, "steps": [{"step": "connect", "ok": False, "detail": f"not connecting: {why}"}]}
            else:
                got = await test_incoming(mailbox_settings, config.poller)
            result = {"ok": result["ok"] and got["ok"],
                      "steps": result["steps"] + [{**s, "step": f"{incoming['protocol']}:{s['step']}"} for s in got["steps"]]}
            forms = sorted(set(forms) | set(secret_forms(spec["incoming_secret"], incoming.get("username", ""))), key=len, reverse=True)
        # The step details quote the remote server, which may echo what it got: no form of a secret leaves.
        result["steps"] = [{**step, "detail": redact(str(step.get("detail", "")), forms)} for step in result["steps"]]
        return {"tenant": tenant, "name": name, "kind": spec["kind"], **result}

    @admin_method("connector.delete")
    async def delete(self, tenant: str, name: str) -> dict[str, Any]:
        _check_names(tenant, name)
        record = await self.store.connectors.delete(tenant, name)
        self.on_change()
        return record
