"""Daily numbers per use case (GET /v1/stats): what a tenant's dashboard shows, read from the
``daily_stats`` rows the event log keeps up to date (store/stats.py says which events count where).

Days are UTC. A day and use case with nothing counted has no row. Pages are keyed by (day, use case).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import msgspec

from ..store.stats import COLUMNS
from .endpoints import Endpoints
from .narrowing import listing, usecase_id
from .paging import Page, Paging, decode_cursor
from .problems import invalid
from .routes import Call, api_route

MAX_DAYS = 366
DEFAULT_DAYS = 30


class StatsQuery(Paging, forbid_unknown_fields=True, kw_only=True):
    from_: Annotated[datetime.date, msgspec.Meta(description="first day, YYYY-MM-DD (UTC); default: 29 days before `to`")] | None = \
        msgspec.field(name="from", default=None)
    to: Annotated[datetime.date, msgspec.Meta(description="last day, YYYY-MM-DD (UTC); default: today")] | None = None
    usecase: Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a use case name")] | None = None


class DayStats(msgspec.Struct):
    day: str
    usecase: str | None
    sent: int = 0
    delivered: int = 0
    deferred: int = 0
    bounced_hard: int = 0
    bounced_soft: int = 0
    bounced_block: int = 0
    bounced_other: int = 0
    suppressed: int = 0
    complained: int = 0
    unsubscribed: int = 0


assert set(COLUMNS) <= set(DayStats.__struct_fields__), "every counted column is shown"


def _after(cursor: str | None) -> tuple[str, int] | None:
    key: Any = decode_cursor(cursor)
    if key is None:
        return None
    if (isinstance(key, list) and len(key) == 2 and isinstance(key[0], str) and _is_day(key[0])
            and isinstance(key[1], int) and not isinstance(key[1], bool)):
        return key[0], key[1]
    raise invalid("cursor is not one this API gave", "query.cursor", 400)


def _is_day(text: str) -> bool:
    """A YYYY-MM-DD day (the store counts days from it)."""
    try:
        return datetime.date.fromisoformat(text).isoformat() == text
    except ValueError:
        return False


class StatsEndpoints(Endpoints):
    @api_route("GET", "/v1/stats", permission="stats.read", query=StatsQuery, response=Page[DayStats],
               summary="Per use case and UTC day: sent, delivered, deferred, bounced (hard, soft, block, other), "
                       "suppressed, complained, unsubscribed (a sender key: its use case's)",
               description="`sent` counts recipients accepted into the queue; the gateway's own DSNs count nowhere."
                           f" At most {MAX_DAYS} days a request.")
    async def read(self, call: Call) -> dict[str, Any]:
        q = call.query
        last = q.to or datetime.datetime.now(datetime.timezone.utc).date()
        first = q.from_ or max(datetime.date.min + datetime.timedelta(days=DEFAULT_DAYS - 1), last) - datetime.timedelta(days=DEFAULT_DAYS - 1)
        if first > last:
            raise invalid("`from` is after `to`", "query.from")
        if (last - first).days >= MAX_DAYS:
            raise invalid(f"at most {MAX_DAYS} days a request", "query.from")
        narrowed = await usecase_id(self.deps.store, call.caller, q.usecase)
        rows = await self.deps.store.stats.read(call.caller.tenant_id, first.isoformat(), last.isoformat(), usecase_id=narrowed,
                                                after=_after(q.cursor), limit=q.limit + 1)
        more = len(rows) > q.limit
        rows = rows[:q.limit]
        return listing(rows, [rows[-1]["day"], rows[-1]["usecase_id"]] if more else None)
