"""Connectors over HTTP: the tenant's SMTP relays, SendGrid routes and polled IMAP/POP3 mailboxes.

Every route calls the ``connector.*`` admin method the CLI calls, with the caller's tenant. Secrets
(the SMTP password, the SendGrid API token, the mailbox password) are write-only: a request may
carry one in ``secret``; no response model has a field for it, only ``secret_set`` and
``incoming_secret_set`` (the store never reads the secret columns for a listing either).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .. import validate
from .endpoints import Endpoints
from .paging import Page, Paging, after, page
from .problems import not_found
from .routes import Call, api_route

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=63, pattern="^[a-z0-9][a-z0-9_-]*$",
                                   description="1-63 lower-case letters, digits, '-' or '_'")]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=253, description="host name or IP address")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
UserName = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Mailbox = Annotated[str, msgspec.Meta(min_length=3, max_length=254, description="a plain address, local@domain")]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=1024, description=(
    "Write-only: the SMTP password, SendGrid API token or mailbox password. Never returned; responses say secret_set."))]
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2048, description="http(s) URL of the SendGrid API")]
Folder = Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="IMAP folder polled (default INBOX)")]
After = Annotated[str, msgspec.Meta(min_length=1, max_length=210, description="what happens to a fetched message: seen, delete or move:FOLDER")]
OutKind = Literal["smtp", "sendgrid"]
Kind = Literal["smtp", "sendgrid", "imap", "pop3"]
SmtpTls = Literal["none", "starttls", "implicit"]
MailTls = Literal["implicit", "starttls", "none"]
Protocol = Literal["imap", "pop3"]


class OutgoingSettings(msgspec.Struct):
    """What an smtp or sendgrid connector sends with (fields its kind does not use are null)."""

    host: str | None = None
    port: int | None = None
    tls: str | None = None
    username: str | None = None
    sender: str | None = None
    reply_to: str | None = None
    base_url: str | None = None
    verify_tls: bool | None = None


class IncomingSettings(msgspec.Struct):
    """The polled mailbox and where its mail goes (a use case and/or a channel address)."""

    protocol: str
    host: str
    port: int
    tls: str
    verify_tls: bool
    username: str
    after: str
    enabled: bool
    folder: str | None = None
    usecase: str | None = None
    address: str | None = None


class MailboxStatus(msgspec.Struct):
    """The poller's view of the mailbox (empty before the first poll)."""

    mailbox: str | None = None
    last_poll_at: float | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    failures: int | None = None
    backoff_until: float | None = None
    fetched: int | None = None
    duplicates: int | None = None
    skipped: int | None = None


class Connector(msgspec.Struct):
    name: str
    kind: str
    direction: Annotated[str, msgspec.Meta(description="out, in or both: what the connector carries")]
    enabled: bool
    settings: OutgoingSettings
    incoming: IncomingSettings | None
    secret_set: Annotated[bool, msgspec.Meta(description="whether an outgoing password or API token is stored")]
    incoming_secret_set: Annotated[bool, msgspec.Meta(description="whether the mailbox password is stored")]
    incoming_status: MailboxStatus | None
    created_at: float


class ConnectorAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A new connector. smtp needs host; sendgrid needs secret (its API token); imap and pop3 are
    incoming only and need host, username, secret and usecase or address."""

    name: Name
    kind: Kind
    host: Host | None = None
    port: Port | None = None
    tls: SmtpTls | None = None
    username: UserName | None = None
    secret: Secret | None = None
    sender: Mailbox | None = None
    reply_to: Mailbox | None = None
    base_url: Url | None = None
    verify_tls: bool | None = None
    enabled: bool = True
    folder: Folder | None = None
    after: After | None = None
    usecase: Name | None = None
    address: Mailbox | None = None
    insecure_plaintext: Annotated[bool, msgspec.Meta(description="allow tls none for a mailbox (its password in clear)")] = False


class ConnectorChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Outgoing settings to change; what is left out stays. null removes username, sender, reply_to,
    base_url or verify_tls. A new secret replaces the stored one."""

    host: Host | msgspec.UnsetType = msgspec.UNSET
    port: Port | msgspec.UnsetType = msgspec.UNSET
    tls: SmtpTls | msgspec.UnsetType = msgspec.UNSET
    username: UserName | None | msgspec.UnsetType = msgspec.UNSET
    secret: Secret | msgspec.UnsetType = msgspec.UNSET
    sender: Mailbox | None | msgspec.UnsetType = msgspec.UNSET
    reply_to: Mailbox | None | msgspec.UnsetType = msgspec.UNSET
    base_url: Url | None | msgspec.UnsetType = msgspec.UNSET
    verify_tls: bool | None | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class IncomingChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The connector's incoming mailbox. Fields left out keep their stored value, so the first call
    names protocol, host, username, secret and usecase or address; null removes usecase or address."""

    protocol: Protocol | msgspec.UnsetType = msgspec.UNSET
    host: Host | msgspec.UnsetType = msgspec.UNSET
    port: Port | msgspec.UnsetType = msgspec.UNSET
    tls: MailTls | msgspec.UnsetType = msgspec.UNSET
    insecure_plaintext: bool = False
    verify_tls: bool | msgspec.UnsetType = msgspec.UNSET
    username: UserName | msgspec.UnsetType = msgspec.UNSET
    secret: Secret | msgspec.UnsetType = msgspec.UNSET
    folder: Folder | msgspec.UnsetType = msgspec.UNSET
    after: After | msgspec.UnsetType = msgspec.UNSET
    usecase: Name | None | msgspec.UnsetType = msgspec.UNSET
    address: Mailbox | None | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET


class TestStep(msgspec.Struct):
    step: Annotated[str, msgspec.Meta(description="connect, tls, auth, ... (incoming ones as imap:login)")]
    ok: bool
    detail: str


class ConnectorTest(msgspec.Struct):
    name: str
    kind: str
    ok: bool
    steps: list[TestStep]


class ConnectorQuery(Paging, forbid_unknown_fields=True):
    pass


def shown(record: dict[str, Any]) -> dict[str, Any]:
    """A connector record as the API shows it: settings split in outgoing and incoming, secrets as flags."""
    settings = dict(record["settings"])
    incoming = settings.pop("incoming", None)
    return {**record, "settings": settings, "incoming": incoming, "secret_set": record["has_secret"],
            "incoming_secret_set": record["has_incoming_secret"], "incoming_status": record.get("incoming_status")}


def given(body: msgspec.Struct) -> tuple[dict[str, Any], list[str]]:
    """(the fields a change names with a value, the fields it sets to null)."""
    fields = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not msgspec.UNSET}
    return {k: v for k, v in fields.items() if v is not None}, sorted(k for k, v in fields.items() if v is None)


def named(call: Call) -> str:
    """The path's connector name; one no connector can have is not found (the service would call it invalid)."""
    name = call.params["connector"]
    if len(name) > validate.MAX_NAME or not validate.NAME.match(name):
        raise not_found("no such connector")
    return name


class ConnectorEndpoints(Endpoints):
    @api_route("GET", "/v1/connectors", permission="connectors.read", query=ConnectorQuery, response=Page[Connector],
               summary="The tenant's connectors, by name (never their secrets)")
    async def list(self, call: Call) -> Page[dict[str, Any]]:
        rows = await self.deps.methods["connector.list"](tenant=call.caller.tenant, after=after(call.query.cursor, ""),
                                                         limit=call.query.limit + 1)
        return page([shown(r) for r in rows], call.query.limit, key=lambda r: r["name"])

    @api_route("GET", "/v1/connectors/{connector}", permission="connectors.read", response=Connector,
               summary="One connector: settings, whether secrets are set, the mailbox's poll status")
    async def show(self, call: Call) -> dict[str, Any]:
        return shown(await self.deps.methods["connector.show"](tenant=call.caller.tenant, name=named(call)))

    @api_route("POST", "/v1/connectors", permission="connectors.write", body=ConnectorAdd, response=Connector, status=201,
               summary="Add a connector (smtp, sendgrid; imap or pop3 for a polled mailbox)")
    async def add(self, call: Call) -> dict[str, Any]:
        return shown(await self.deps.methods["connector.add"](tenant=call.caller.tenant, **msgspec.structs.asdict(call.body)))

    @api_route("PATCH", "/v1/connectors/{connector}", permission="connectors.write", body=ConnectorChange, response=Connector,
               summary="Change a connector's outgoing settings, secret or enabled state")
    async def update(self, call: Call) -> dict[str, Any]:
        values, unset = given(call.body)
        return shown(await self.deps.methods["connector.update"](tenant=call.caller.tenant, name=named(call),
                                                                 unset=unset, **values))

    @api_route("PUT", "/v1/connectors/{connector}/incoming", permission="connectors.write", body=IncomingChange,
               response=Connector, summary="Set the connector's polled mailbox (IMAP or POP3)")
    async def incoming(self, call: Call) -> dict[str, Any]:
        values, unset = given(call.body)
        return shown(await self.deps.methods["connector.incoming"](tenant=call.caller.tenant, name=named(call),
                                                                   unset=unset, **values))

    @api_route("DELETE", "/v1/connectors/{connector}/incoming", permission="connectors.write", response=Connector,
               summary="Stop polling: remove the mailbox settings and password of an smtp or sendgrid connector")
    async def remove_incoming(self, call: Call) -> dict[str, Any]:
        return shown(await self.deps.methods["connector.incoming"](tenant=call.caller.tenant, name=named(call),
                                                                   remove=True))

    @api_route("POST", "/v1/connectors/{connector}/test", permission="connectors.write", response=ConnectorTest,
               summary="Connect now, outgoing and incoming, and report each step (secrets redacted)")
    async def test(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["connector.test"](tenant=call.caller.tenant, name=named(call))

    @api_route("DELETE", "/v1/connectors/{connector}", permission="connectors.write", response=Connector,
               summary="Delete a connector (409 while a use case routes through it)")
    async def delete(self, call: Call) -> dict[str, Any]:
        return shown(await self.deps.methods["connector.delete"](tenant=call.caller.tenant, name=named(call)))
