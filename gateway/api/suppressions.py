"""The tenant's suppression list over HTTP: list, show, add, remove, CSV import and export.

Every route calls the ``suppression.*`` admin method the CLI calls, with the caller's tenant. The
CSV is the one `gateway suppression import|export` reads and writes (gateway/suppression.py
CSV_FIELDS, csv_row): an export imports back unchanged. Import takes a bounded body (IMPORT_BYTES,
IMPORT_ROWS) and hands the service chunks of its per-call maximum; export streams page by page, so
a million entries cost one page of memory.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec
import structlog
from aiohttp import web

from ..errors import InvalidArgument, NotFound
from ..services.suppressions import MAX_EXPIRY
from ..suppression import CSV_FIELDS, EXPORT_PAGE, IMPORT_CHUNK, MAX_ADDRESS, csv_row
from .endpoints import Endpoints
from .paging import Page, Paging, after, page
from .problems import invalid, not_found
from .routes import Call, api_route

log = structlog.get_logger("api")

IMPORT_BYTES = 8 * 1024 * 1024      # one import's CSV body
IMPORT_ROWS = 100_000               # data rows of one import (a longer list: several imports)
MAX_COLUMNS = 32                    # fields of one row (the format has five): more is only memory spent
MAX_REFUSED_SHOWN = 1000            # refused rows named in the answer; refused_count counts them all

Address = Annotated[str, msgspec.Meta(min_length=3, max_length=MAX_ADDRESS, description="an email address (stored lower-cased)")]
Scope = Annotated[str, msgspec.Meta(min_length=1, max_length=330, pattern="^(tenant|marketing|domain:.+|usecase:.+)$", description=(
    "tenant (every use case), marketing (every marketing use case), domain:NAME (the use cases of one sending domain) "
    "or usecase:NAME (one use case)"))]
Reason = Literal["hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual"]
Expiry = Annotated[float, msgspec.Meta(ge=0, le=MAX_EXPIRY, description="Unix time")]
IsoDate = Annotated[str, msgspec.Meta(min_length=1, max_length=40, description="Unix time or ISO 8601 date (UTC if no zone)")]


class Suppression(msgspec.Struct):
    address: str
    scope: str
    reason: str
    source: Annotated[str, msgspec.Meta(description="what put it there: a queue id, operator, import, api")]
    created_at: float
    updated_at: float
    expires_at: float | None


class SuppressionDetail(msgspec.Struct):
    address: str
    entries: list[Suppression]
    live: Annotated[list[str], msgspec.Meta(description="the scopes where the address is suppressed now (not expired)")]


class SuppressionAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    address: Address
    scope: Scope = "tenant"
    reason: Reason = "manual"
    expires_at: Expiry | IsoDate | None = None


class SuppressionAdded(msgspec.Struct):
    address: str
    scope: str
    reason: str
    added: Annotated[bool, msgspec.Meta(description="false when the entry existed and was refreshed")]


class SuppressionRemoved(msgspec.Struct):
    address: str
    removed: Annotated[int, msgspec.Meta(description="entries removed (one per scope)")]


class SuppressionQuery(Paging, forbid_unknown_fields=True):
    scope: Scope | None = None
    reason: Reason | None = None


class ExportQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    scope: Scope | None = None
    reason: Reason | None = None


class RemoveQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    scope: Annotated[Scope | None, msgspec.Meta(description="only this scope's entry (default: every scope)")] = None


class ImportQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    scope: Annotated[Scope, msgspec.Meta(description="the scope of rows that name none")] = "tenant"


class RefusedRow(msgspec.Struct):
    line: int
    address: str
    reason: str


class ImportResult(msgspec.Struct):
    added: int
    updated: int
    refused_count: int
    refused: Annotated[list[RefusedRow], msgspec.Meta(description=f"the first {MAX_REFUSED_SHOWN} refused rows")]


def _reader(body: bytes) -> Any:
    """The body's CSV rows, decoded as they are read (no whole copy of the text is made)."""
    return csv.reader(io.TextIOWrapper(io.BytesIO(body), encoding="utf-8-sig", newline=""))


def _checked(body: bytes) -> list[str]:
    """The header row of a CSV body checked whole before any row is imported: UTF-8, a header naming
    address, at most IMPORT_ROWS data rows of at most MAX_COLUMNS fields. Only one row is held at a
    time: rows as lists of strings take some 25 times the body's bytes."""
    reader = _reader(body)
    header: list[str] | None = None
    count = 0
    try:
        for row in reader:
            if len(row) > MAX_COLUMNS:
                raise invalid(f"line {reader.line_num}: more than {MAX_COLUMNS} fields", "body")
            if header is None:
                header = row
                continue
            count += 1
            if count > IMPORT_ROWS:
                raise invalid(f"more than {IMPORT_ROWS} rows: import the list in parts", "body", 413)
    except UnicodeDecodeError:
        raise invalid(f"the CSV is not UTF-8 (line {reader.line_num + 1})", "body") from None
    except csv.Error as exc:
        raise invalid(f"line {reader.line_num}: {exc}", "body") from None
    if header is None or "address" not in [f.strip().lower() for f in header]:
        raise invalid(f"the CSV needs a header row with at least an 'address' column ({', '.join(CSV_FIELDS)})", "body")
    return header


def _chunks(body: bytes) -> Iterator[list[list[str]]]:
    """The data rows of a checked CSV body, IMPORT_CHUNK at a time (the header skipped)."""
    reader = _reader(body)
    next(reader)
    while chunk := list(itertools.islice(reader, IMPORT_CHUNK)):
        yield chunk


class SuppressionEndpoints(Endpoints):
    async def _scoped(self, method: str, **params: Any) -> Any:
        """An admin call naming a scope: an unknown scope is the request's fault (422 naming it), not a missing object."""
        try:
            return await self.deps.methods[method](**params)
        except NotFound as exc:
            raise invalid(exc.message, "scope") from None

    @api_route("GET", "/v1/suppressions", permission="suppressions.read", query=SuppressionQuery, response=Page[Suppression],
               summary="The tenant's suppression list, oldest first (optionally one scope or one reason)")
    async def list(self, call: Call) -> Page[dict[str, Any]]:
        q = call.query
        found = await self._scoped("suppression.list", tenant=call.caller.tenant, after_id=after(q.cursor, 0), limit=q.limit + 1,
                                   scope=q.scope, reason=q.reason)
        return page(found["entries"], q.limit, key=lambda e: e["id"])

    @api_route("GET", "/v1/suppressions/{suppression}", permission="suppressions.read", response=SuppressionDetail,
               summary="Every entry of one address, and the scopes where it is suppressed now")
    async def show(self, call: Call) -> dict[str, Any]:
        try:
            return await self.deps.methods["suppression.show"](tenant=call.caller.tenant, address=call.params["suppression"])
        except InvalidArgument:
            raise not_found("not an address on the list") from None

    @api_route("POST", "/v1/suppressions", permission="suppressions.write", body=SuppressionAdd, response=SuppressionAdded,
               summary="Suppress an address (or refresh its entry in that scope)")
    async def add(self, call: Call) -> dict[str, Any]:
        b = call.body
        return await self._scoped("suppression.add", tenant=call.caller.tenant, address=b.address, scope=b.scope, reason=b.reason,
                                  expires_at=b.expires_at, source="api")

    @api_route("DELETE", "/v1/suppressions/{suppression}", permission="suppressions.write", query=RemoveQuery,
               response=SuppressionRemoved, summary="Remove an address from the list (mail to it flows again)")
    async def remove(self, call: Call) -> dict[str, Any]:
        try:
            return await self.deps.methods["suppression.remove"](tenant=call.caller.tenant, address=call.params["suppression"],
                                                                 scope=call.query.scope)
        except InvalidArgument:
            raise not_found("not an address on the list") from None

    @api_route("POST", "/v1/suppressions/import", permission="suppressions.write", query=ImportQuery, raw=("text/csv",),
               max_body=IMPORT_BYTES, response=ImportResult,
               summary="Import a CSV (header row: address[,scope,reason,source,expires_at])",
               description=f"At most {IMPORT_BYTES} bytes and {IMPORT_ROWS} rows. Every row is checked; the good ones are "
                           "added or refreshed, the others are reported with their line number. An export imports back unchanged.")
    async def import_csv(self, call: Call) -> dict[str, Any]:
        header = _checked(call.body)
        total: dict[str, Any] = {"added": 0, "updated": 0, "refused": [], "refused_count": 0}
        start = 0
        for chunk in _chunks(call.body):
            done = await self._scoped("suppression.import", tenant=call.caller.tenant, rows=[header, *chunk],
                                      scope=call.query.scope, source="api", first_line=2 + start)
            start += len(chunk)
            total["added"] += done["added"]
            total["updated"] += done["updated"]
            total["refused_count"] += len(done["refused"])
            total["refused"] += done["refused"][:MAX_REFUSED_SHOWN - len(total["refused"])]
        return total

    @api_route("GET", "/v1/suppressions/export", permission="suppressions.read", query=ExportQuery, response=str,
               produces="text/csv", summary="The list as CSV (what import takes), streamed page by page")
    async def export(self, call: Call) -> web.StreamResponse:
        tenant, q = call.caller.tenant, call.query
        # The first page is read before the answer starts: a refusal (an unknown scope) is still a problem body.
        found = await self._scoped("suppression.list", tenant=tenant, after_id=0, limit=EXPORT_PAGE, scope=q.scope, reason=q.reason)
        response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                               "Content-Disposition": 'attachment; filename="suppressions.csv"'})
        await response.prepare(call.request)
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        try:
            while True:
                w.writerows(csv_row(e) for e in found["entries"])
                await response.write(out.getvalue().encode())
                out.seek(0)
                out.truncate()
                if found["next_after"] is None:
                    break
                found = await self.deps.methods["suppression.list"](tenant=tenant, after_id=found["next_after"], limit=EXPORT_PAGE,
                                                                    scope=q.scope, reason=q.reason)
        except Exception as exc:  # noqa: BLE001 - the status is sent: all that is left is not to end the body as if complete
            log.warning("api_export_failed", tenant=tenant, error=f"{type(exc).__name__}: {exc}")
            if call.request.transport is not None:
                call.request.transport.close()
            return response
        await response.write_eof()
        return response
