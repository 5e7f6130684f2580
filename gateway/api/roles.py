"""Roles of API keys and the permissions each holds: the one table every route is checked against.

A route names one permission (``@api_route(permission=...)``). A key's role grants a set of them;
a ``sender`` key is also narrowed to its one use case (endpoints filter by ``Caller.usecase_id``),
and an ``agent`` sends only from the tenant's channel addresses (the send endpoint checks it).

    owner   everything in the tenant, incl. sending-domain authentication (add, DKIM rotation,
            delete) and the tenant's outbound switch
    admin   use cases, credentials, channel addresses, connectors, suppressions, webhooks,
            forwarding; reads domains and may ask for a verification; not domain authentication
            nor the outbound switch
    agent   send replies from the tenant's channel addresses; read inbox, threads, message status
    sender  send through its one use case; read its own messages' status and events
"""

from __future__ import annotations

# Every permission a route may name, with what it allows (documented in /v1/openapi.json).
PERMISSIONS: dict[str, str] = {
    "tenant.read": "Read the tenant's own settings and switches.",
    "tenant.outbound": "Turn the tenant's outbound mail on or off.",
    "domains.read": "List sending domains and their DNS records and verification results.",
    "domains.verify": "Ask for a verification of a domain's records now.",
    "domains.manage": "Add and delete sending domains, rotate DKIM keys, switch inbound on a domain.",
    "usecases.read": "List use cases.",
    "usecases.write": "Add, change and delete use cases and their SMTP credentials.",
    "addresses.read": "List the tenant's channel addresses.",
    "addresses.write": "Add, change and delete channel addresses.",
    "connectors.read": "List connectors (never their secrets).",
    "connectors.write": "Add, change, test and delete connectors.",
    "suppressions.read": "List and export suppressions.",
    "suppressions.write": "Add, remove and import suppressions.",
    "webhooks.read": "List webhook endpoints and their delivery logs.",
    "webhooks.write": "Add, change, test and delete webhook endpoints and forwarding rules.",
    "messages.send": "Send a message (a sender key through its use case; an agent from a channel address).",
    "messages.read": "Read messages' status, recipients and attempts (a sender key: its use case's only).",
    "events.read": "Read the event log (a sender key: its use case's only).",
    "stats.read": "Read per-use-case daily statistics (a sender key: its use case's only).",
    "inbox.read": "Read received mail, its attachments and threads.",
    "apikeys.read": "List the tenant's API keys (never their tokens).",
    "apikeys.write": "Revoke the tenant's API keys.",
}

_ADMIN = {
    "tenant.read", "domains.read", "domains.verify", "usecases.read", "usecases.write", "addresses.read",
    "addresses.write", "connectors.read", "connectors.write", "suppressions.read", "suppressions.write",
    "webhooks.read", "webhooks.write", "messages.send", "messages.read", "events.read", "stats.read", "inbox.read",
}

ROLES: dict[str, frozenset[str]] = {
    "owner": frozenset(PERMISSIONS),
    "admin": frozenset(_ADMIN),
    "agent": frozenset({"tenant.read", "addresses.read", "messages.send", "messages.read", "inbox.read"}),
    "sender": frozenset({"tenant.read", "messages.send", "messages.read", "events.read", "stats.read"}),
}

# Roles whose keys are narrowed to one use case (made with --usecase, which they must have).
SCOPED_ROLES = frozenset({"sender"})


def permissions(role: str) -> frozenset[str]:
    return ROLES[role]


def roles_with(permission: str) -> list[str]:
    return [role for role, granted in ROLES.items() if permission in granted]
