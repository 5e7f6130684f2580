"""The suppression list, tenant-scoped: list, show, add, remove, import, export; and the RCPT check.

Every call names its tenant; an address or scope of another tenant is never seen (the store's
queries all start from the tenant id). Scopes are named as the operator thinks of them:

    tenant            every use case of the tenant (hard bounces, manual entries)
    marketing         every marketing use case of the tenant (complaints)
    domain:NAME       the use cases of one sending domain (unsubscribes with unsubscribe_scope=domain)
    usecase:NAME      one use case (unsubscribes with unsubscribe_scope=usecase)

CSV (import and export): a header row ``address,scope,reason,source,expires_at``; only ``address``
is required on import (scope defaults to the command's --scope, reason to manual, expires_at empty
for never, else a Unix time or an ISO 8601 date). Import checks every row first and writes the good
ones in one write per chunk; it reports rows added, updated and refused (line number and reason).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from .. import suppression
from ..admin.registry import admin_method
from ..feedback import arf, dsn
from ..errors import InvalidArgument, NotFound
from ..store import Store
from ..verp import VerpTag

log = structlog.get_logger("suppression")

MAX_EXPIRY = 253402300799.0   # 9999-12-31T23:59:59Z
MAX_IMPORT_ROWS = 10000   # per admin call; the CLI sends a long file in chunks
ENTRY_KEYS = ["address", "scope", "reason", "source", "created_at", "expires_at"]


def _expiry(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return _when(float(value), str(value))
    text = str(value).strip()
    try:
        return _when(float(text), text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"expires_at {text[:80]!r} is neither a Unix time nor an ISO 8601 date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return _when(when.timestamp(), text)


def _when(ts: float, text: str) -> float:
    # A time the export can write back as a date: 'nan' or 1e308 would be stored and break it.
    if not 0 <= ts <= MAX_EXPIRY:
        raise InvalidArgument(f"expires_at {text[:80]!r} is not a time between 1970 and 9999")
    return ts


def _reason(value: str) -> str:
    reason = (value or "manual").strip().lower()
    if reason not in suppression.REASONS:
        raise InvalidArgument(f"reason {value!r} is not one of {', '.join(suppression.REASONS)}")
    return reason


class SuppressionService:
    def __init__(self, store: Store, *, verp: Callable[[VerpTag], Awaitable[bool]] | None = None):
        self.store = store
        self.verp = verp   # Keyring.signed: only a return path delivery made may match a report (gateway/verp.py)

    async def _tenant_id(self, tenant: str) -> int:
        return (await self.store.tenants.get(tenant))["id"]

    async def _present(self, tenant_id: int, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = await self.store.suppressions.scope_names(tenant_id) if rows else {}
        out = []
        for r in rows:
            label = names.get((r["scope"], r["scope_id"]), f"{r['scope']}:#{r['scope_id']}")
            out.append({"id": r["id"], "address": r["address"], "scope": label, "reason": r["reason"], "source": r["source"],
                        "created_at": r["created_at"], "updated_at": r["updated_at"], "expires_at": r["expires_at"]})
        return out

    # ------------------------------------------------------------------ admin methods

    @admin_method("suppression.list")
    async def list(self, tenant: str, address: str | None = None, after_id: int = 0, limit: int = 1000,
                   scope: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """One page of entries in id order, of one scope and/or one reason when named; ``next_after``
        pages on (None at the end)."""
        tenant_id = await self._tenant_id(tenant)
        limit = max(1, min(int(limit), 10000))
        where = await self.store.suppressions.resolve_scope(tenant_id, scope) if scope is not None else None
        rows = await self.store.suppressions.list(tenant_id, address=suppression.normalise_address(address) if address else None,
                                                  after_id=after_id, limit=limit, scope=where,
                                                  reason=_reason(reason) if reason is not None else None)
        return {"entries": await self._present(tenant_id, rows), "next_after": rows[-1]["id"] if len(rows) == limit else None}

    @admin_method("suppression.show")
    async def show(self, tenant: str, address: str) -> dict[str, Any]:
        tenant_id = await self._tenant_id(tenant)
        addr = suppression.normalise_address(address)
        rows = await self.store.suppressions.list(tenant_id, address=addr, limit=100)
        if not rows:
            raise NotFound(f"{addr} is not suppressed for tenant {tenant!r}")
        entries = await self._present(tenant_id, rows)
        now = time.time()
        return {"address": addr, "entries": entries,
                "live": [e["scope"] for e in entries if e["expires_at"] is None or e["expires_at"] > now]}

    @admin_method("suppression.add")
    async def add(self, tenant: str, address: str, scope: str = "tenant", reason: str = "manual", source: str = "operator",
                  expires_at: float | str | None = None) -> dict[str, Any]:
        tenant_id = await self._tenant_id(tenant)
        addr = suppression.normalise_address(address)
        where = await self.store.suppressions.resolve_scope(tenant_id, scope)
        result = await self.store.suppressions.add(tenant_id, where, addr, _reason(reason), source=source[:200], expires_at=_expiry(expires_at))
        log.info("suppression_added", tenant=tenant, address=addr, scope=scope, reason=reason, source=source)
        return {"address": addr, "scope": scope, "reason": _reason(reason), "added": result["added"]}

    @admin_method("suppression.remove")
    async def remove(self, tenant: str, address: str, scope: str | None = None) -> dict[str, Any]:
        """Remove the address's entries (in one scope, or all of them)."""
        tenant_id = await self._tenant_id(tenant)
        addr = suppression.normalise_address(address)
        scopes = [await self.store.suppressions.resolve_scope(tenant_id, scope)] if scope else None
        n = await self.store.suppressions.remove(tenant_id, addr, scopes, source="operator")
        if not n:
            raise NotFound(f"{addr} is not suppressed for tenant {tenant!r}" + (f" in scope {scope}" if scope else ""))
        log.info("suppression_removed", tenant=tenant, address=addr, scope=scope or "all", rows=n)
        return {"address": addr, "removed": n}

    @admin_method("suppression.import")
    async def import_csv(self, tenant: str, rows: list[list[str]], scope: str = "tenant", source: str = "import",
                         first_line: int = 2) -> dict[str, Any]:
        """A CSV's rows, its header row first (the CLI parses the file and sends it in chunks, each
        cell bounded like every admin value) -> {added, updated, refused: [{line, address, reason}]}.
        ``first_line`` is the file line of the first data row (for chunked files)."""
        tenant_id = await self._tenant_id(tenant)
        if not rows or not isinstance(rows[0], list) or "address" not in [str(f).strip().lower() for f in rows[0]]:
            raise InvalidArgument("the CSV needs a header row with at least an 'address' column")
        header = [str(f) for f in rows[0]]
        reader = (dict(zip(header, (str(c) for c in row))) for row in rows[1:] if isinstance(row, list))
        scopes: dict[str, tuple[str, int]] = {}
        good: dict[tuple, tuple] = {}
        refused = []
        for n, raw in enumerate(reader):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            line = first_line + n
            if n >= MAX_IMPORT_ROWS:
                raise InvalidArgument(f"more than {MAX_IMPORT_ROWS} rows in one call: send the file in chunks")
            try:
                addr = suppression.normalise_address(row.get("address", ""))
                label = row.get("scope") or scope
                if label not in scopes:
                    scopes[label] = await self.store.suppressions.resolve_scope(tenant_id, label)
                entry = (addr, scopes[label], _reason(row.get("reason", "")), (row.get("source") or source)[:200],
                         _expiry(row.get("expires_at")))
            except (InvalidArgument, NotFound) as exc:
                refused.append({"line": line, "address": row.get("address", ""), "reason": exc.message})
                continue
            good[(addr, scopes[label])] = entry   # a repeated row: the last one wins
        added, updated = await self.store.suppressions.import_rows(tenant_id, list(good.values()))
        log.info("suppression_imported", tenant=tenant, added=added, updated=updated, refused=len(refused))
        return {"added": added, "updated": updated, "refused": refused}

    # ------------------------------------------------------------------ the send paths

    async def at_rcpt(self, ctx: dict[str, Any], address: str) -> str:
        """The RCPT check: '' (send), 'drop' (accept and drop: the use case asked for it), or raises the
        550 5.7.1 refusal. Either way a suppressed recipient leaves a 'suppressed' event."""
        try:
            addr = suppression.normalise_address(address)
        except InvalidArgument:
            return ""   # the syntax check answers for it
        entry = await self.store.suppressions.live(ctx["tenant_id"], addr, suppression.scopes_for(ctx))
        if entry is None:
            return ""
        action = ctx.get("suppressed_action") or "refuse"
        # The event is queued, not waited for: the answer must not wait on a group commit (~1 ms, more
        # under load; p99 4.5 ms in scripts/bench_suppression.py), and events queued together share
        # one write (store.suppressions.event_soon: it commits no later than any write queued after it,
        # so an accept-drop's event no later than the message the session goes on to spool).
        try:
            self.store.suppressions.event_soon(ctx["tenant_id"], "suppressed", addr, {
                "rcpt": addr, "reason": entry["reason"], "scope": entry["scope"], "source": entry["source"], "checked": "rcpt",
                "usecase": ctx.get("usecase") or ctx.get("name"), "action": "dropped" if action == "accept-drop" else "refused"})
        except Exception as exc:  # noqa: BLE001 - a closed store must not turn a refusal into a 451
            log.warning("suppressed_event_failed", rcpt=addr, error=f"{type(exc).__name__}: {exc}")
        if action == "accept-drop":
            return "drop"
        raise suppression.refusal(entry)

    # ------------------------------------------------------------------ asynchronous reports

    async def from_report(self, tenant_id: int, address: str, kind: str, *, source: str, data: dict[str, Any] | None = None,
                          soft_limit: int = 0, soft_window: float = 0.0, soft_for: float = 0.0) -> str:
        """What an asynchronous report does, once the inbound path resolved it (VERP, Message-ID) to a
        tenant and recipient: ``kind`` is a bounce class or 'complaint'. A 'bounced' or 'complained'
        event is recorded with it; 'unknown' (and block, rate, quota) is recorded and never acted on.
        Returns what was done: 'suppressed', 'counted' or 'recorded'."""
        addr = suppression.normalise_address(address)
        event_kind = "complained" if kind == "complaint" else "bounced"
        event = (event_kind, source, {"rcpt": addr, "class": kind, "async": True, **(data or {})})
        if kind == "complaint":
            fb = suppression.Feedback(addr, "complaint", source)
        else:
            fb = suppression.feedback("bounced", kind, addr, source, soft_limit=soft_limit, soft_window=soft_window, soft_for=soft_for)
        if fb is None:
            await self.store.events.append(tenant_id, *event)
            return "recorded"
        await self.store.suppressions.apply(tenant_id, fb, event=event)
        return "counted" if fb.kind == "soft" else "suppressed"

    async def handle_report(self, raw: bytes, envelope_to: str = "", **soft: Any) -> dict[str, Any]:
        """A report that arrived at a return path (the inbound MX or a polled mailbox will call this):
        a complaint (ARF) or a bounce (DSN or a non-standard one), matched to the queued message and
        recipient by its VERP tag (whose MAC must verify). Unmatched or unrecognised reports change nothing.
        Returns {"type": complaint|bounce, "matched": bool, "done": [...]}."""
        complaint = arf.parse(raw, envelope_to)
        if complaint is not None:
            target = await self._target(complaint.verp)
            by_id = arf.parse_feedback_id(complaint.feedback_id)
            if target is None and by_id is not None and complaint.recipient and await self.store.tenants.get_by_id(by_id[0]):
                # No usable return path, but our Feedback-ID and the receiver's Original-Rcpt-To.
                target = {"tenant_id": by_id[0], "rcpt": complaint.recipient, "queue_id": f"feedback-id {complaint.feedback_id}"}
            if target is None:
                return {"type": "complaint", "matched": False, "done": []}
            data: dict[str, Any] = {"feedback_type": complaint.feedback_type}
            if target["queue_id"].startswith("feedback-id ") and by_id is not None:
                # No message to take the use case from: the Feedback-ID's, when it is the tenant's (the
                # daily stats count the complaint for it, store/stats.py).
                ctx = await self.store.usecases.context(by_id[1])
                if ctx is not None and ctx["tenant_id"] == target["tenant_id"]:
                    data["usecase_id"] = by_id[1]
            done = await self.from_report(target["tenant_id"], target["rcpt"], "complaint", source=target["queue_id"], data=data)
            return {"type": "complaint", "matched": True, "done": [done]}
        report = dsn.parse(raw, envelope_to)
        target = await self._target(report.verp)
        if target is None:
            return {"type": "bounce", "matched": False, "done": []}
        done = []
        for b in report.bounces:
            if b.recipient and not _names(b, target["rcpt"]):
                continue   # another address: the tag names one recipient, and that is who gets the verdict
            done.append(await self.from_report(target["tenant_id"], target["rcpt"], b.kind, source=target["queue_id"],
                                               data={"status": b.status, "diagnostic": b.diagnostic[:300], "reason": b.reason},
                                               **soft))
        if not done:   # matched a message, but the report names someone else: recorded, never acted on
            done.append(await self.from_report(target["tenant_id"], target["rcpt"], "unknown", source=target["queue_id"]))
        return {"type": "bounce", "matched": True, "done": done}

    async def _target(self, tag: VerpTag | None) -> dict[str, Any] | None:
        if tag is None or self.verp is None or not await self.verp(tag):
            return None   # no tag, or one we did not sign (guessed from a neighbour's queue id): never acted on
        return await self.store.suppressions.verp_recipient(tag.queue_id, tag.recipient_index)


def _names(bounce: dsn.Bounce, rcpt: str) -> bool:
    """The report's failed recipient is the VERP-tagged one: the same address, or the same local part
    when the report named only a local part (its domain was inferred, dsn._qualify, and the tag's
    recipient is the address that was actually sent to: userx of a report from yale.edu's MTA is the
    tagged userx@cs.yale.edu)."""
    if bounce.local_only:
        return suppression.same_address(f"{bounce.recipient.rpartition('@')[0]}@{rcpt.rpartition('@')[2]}", rcpt)
    return suppression.same_address(bounce.recipient, rcpt)
