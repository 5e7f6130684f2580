"""Suppression rules: pure decisions on values, used by submission, delivery and the service.

    normalise_address(raw)       the one spelling every suppression entry and check uses
    scopes_for(ctx)              which entries apply to a send of this use case
    refusal(entry)               the 550 5.7.1 a suppressed recipient gets at RCPT, in plain words
    feedback(kind, address, ...) what a delivery outcome does to the list (store.suppressions applies it)

Addresses: the domain is lower-cased (DNS is case-insensitive) and so is the local part. RFC 5321
lets a receiving system treat local parts as case-sensitive, but no large mailbox provider does,
and the addresses we must match come back in the remote's spelling (a DSN may say JDoe@ where the
app sent jdoe@): a case-sensitive list would mail a hard-bounced address again. The cost, two
distinct mailboxes that differ only in case on a rare system, is the smaller one.

Scopes of a send: ('tenant', 0) (hard bounces, manual entries), ('domain', the use case's domain id),
('usecase', its id) (unsubscribes, as the use case's unsubscribe_scope says), and ('marketing', 0)
when the use case's kind is marketing (complaints).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument, SMTPError

REASONS = ("hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual")
SCOPES = ("tenant", "domain", "usecase", "marketing")
ACTIONS = ("refuse", "accept-drop")
MAX_ADDRESS = 254

_WORDS = {
    "hard_bounce": "an earlier message to it bounced: the address does not exist",
    "soft_bounce": "repeated delivery failures to it",
    "complaint": "its owner reported our mail as spam",
    "unsubscribe": "its owner unsubscribed",
    "manual": "an operator suppressed it",
}


def normalise_address(raw: str) -> str:
    """'<JDoe@Example.ORG>' -> 'jdoe@example.org'; InvalidArgument when it is not local@domain."""
    address = raw.strip().strip("<>").strip().rstrip(".").lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(address) > MAX_ADDRESS or any(c in address for c in " \t\r\n\0<>,;"):
        raise InvalidArgument(f"not an email address: {raw[:80]!r}")
    return address


def same_address(a: str, b: str) -> bool:
    """``a`` and ``b`` are one address in the list's spelling (normalise_address)."""
    try:
        return normalise_address(a) == normalise_address(b)
    except InvalidArgument:
        return a.strip().lower() == b.strip().lower()


def scopes_for(ctx: dict[str, Any]) -> list[tuple[str, int]]:
    """The suppression scopes a send of this use case must check (``ctx``: a use case context)."""
    usecase_id = ctx["usecase_id"] if "usecase_id" in ctx else ctx["id"]
    scopes = [("tenant", 0), ("domain", int(ctx["domain_id"])), ("usecase", int(usecase_id))]
    if ctx.get("kind") == "marketing":
        scopes.append(("marketing", 0))
    return scopes


def words(entry: dict[str, Any]) -> str:
    return _WORDS.get(entry.get("reason", ""), "it is on the suppression list")


def refusal(entry: dict[str, Any]) -> SMTPError:
    """What a suppressed recipient gets at RCPT: the reason in plain words, no internal detail."""
    return SMTPError(550, "5.7.1", f"Recipient suppressed: {words(entry)}",
                     f"suppressed ({entry.get('scope')}:{entry.get('scope_id')}, {entry.get('reason')}, source {entry.get('source')!r})")


@dataclass(frozen=True)
class Feedback:
    """What one delivery outcome does to the suppression list (applied in the same write)."""

    address: str          # normalised
    kind: str             # 'hard': suppress tenant-wide; 'soft': count, suppress at the limit; 'clear': a delivery;
                          # 'complaint': suppress for the tenant's marketing use cases
    source: str           # the queue id
    soft_limit: int = 0
    soft_window: float = 0.0
    soft_for: float = 0.0


def feedback(state: str, kind: str, rcpt: str, queue_id: str, *, soft_limit: int, soft_window: float,
             soft_for: float) -> Feedback | None:
    """Hard bounce -> suppress; a recipient that failed for good with a soft class (mailbox full,
    the queue lifetime ran out) -> one soft failure; a delivery -> its soft count is cleared.
    Deferrals count nothing (greylisting would add up), nor do block, rate, quota and unknown."""
    try:
        address = normalise_address(rcpt)
    except InvalidArgument:
        return None
    if state == "delivered":
        return Feedback(address, "clear", queue_id) if soft_limit else None
    if state != "bounced":
        return None
    if kind == "hard":
        return Feedback(address, "hard", queue_id)
    if kind == "soft" and soft_limit:
        return Feedback(address, "soft", queue_id, soft_limit, soft_window, soft_for)
    return None


# The CSV a list is exported as and imported from (`gateway suppression export|import`, the API's
# /v1/suppressions/export|import): one header row, then one row per entry.
CSV_FIELDS = ("address", "scope", "reason", "source", "expires_at")
# Rows of an import per service call, each one write: the writer is the one submission commits
# through, so a long file goes in short writes that mail acceptance's commits queue between.
IMPORT_CHUNK = 2000
EXPORT_PAGE = 5000      # entries an export reads at a time (its memory, whatever the list's size)


def csv_row(entry: dict[str, Any]) -> list[str]:
    """An entry (as the suppression service presents it) as an export row; expires_at in ISO 8601
    UTC, which import reads back."""
    expires = entry["expires_at"]
    when = "" if expires is None else datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [entry["address"], entry["scope"], entry["reason"], entry["source"], when]
