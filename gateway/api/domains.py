"""Sending domains over HTTP: list, show, add, the records to publish (JSON or zone text), verify
now, DKIM rotation and selector removal, the inbound switch, delete.

Every call goes to the ``domain.*`` admin method the CLI uses, with ``tenant=`` the key's tenant: a
domain of another tenant is "not found" there exactly like one that does not exist. A path's domain
that is not even a domain name names nothing either (404, not 422).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..domains.keys import ALGORITHMS
from ..domains.names import normalise_domain
from ..errors import InvalidArgument
from .endpoints import Endpoints
from .fields import blame, names_after
from .paging import Page, Paging, page
from .problems import not_found
from .routes import Call, Reply, api_route

DomainText = Annotated[str, msgspec.Meta(min_length=1, max_length=255, description="a domain name (Unicode or A-labels)")]
Selector = Annotated[str, msgspec.Meta(min_length=1, max_length=63, description="a DKIM selector: one DNS label")]
State = Annotated[str, msgspec.Meta(description="pending (never verified), verified, or failing (was verified, a record is now wrong)")]
Dkim = Literal[tuple(ALGORITHMS)]  # type: ignore[valid-type]
UsecaseName = Annotated[str, msgspec.Meta(min_length=1, max_length=63, description="a use case of this domain")]

# The words the domain service's refusals use, and the body field each is.
WORDS = {"domain name": "domain", "DKIM selector": "selector", "DKIM choice": "dkim", "use case name": "catchall"}


class SelectorState(msgspec.Struct):
    selector: str
    state: str


class DomainSummary(msgspec.Struct):
    name: str
    state: State
    created_at: float
    verified_at: float | None
    checked_at: float | None
    selectors: list[SelectorState]


class DkimKey(msgspec.Struct):
    selector: str
    algorithm: str
    state: Annotated[str, msgspec.Meta(description="pending (publish it), active (signs), retired (remove it once its mail is delivered)")]
    public_key: Annotated[str, msgspec.Meta(description="base64 SubjectPublicKeyInfo (RSA) or raw key (Ed25519): the p= of its record")]
    created_at: float
    activated_at: float | None
    retired_at: float | None
    age_days: float


class ShownRecord(msgspec.Struct):
    purpose: str
    type: str
    name: str
    value: str
    required: bool
    note: str
    ttl: int
    last_status: Annotated[str, msgspec.Meta(description="verified, missing, mismatch, error, or unchecked")]
    last_detail: str
    selector: str | None = None


class Domain(msgspec.Struct):
    name: str
    unicode: Annotated[str, msgspec.Meta(description="the name as people write it (U-labels)")]
    state: State
    created_at: float
    verified_at: float | None
    checked_at: float | None
    last_outcome: Annotated[str | None, msgspec.Meta(description="the last verification's outcome: verified, pending, failing, error")]
    dmarc_policy: str | None
    return_path_domain: str
    keys: list[DkimKey]
    records: list[ShownRecord]
    used_by: list[str]
    inbound_enabled: bool
    catchall: str | None


class Record(msgspec.Struct):
    purpose: Annotated[str, msgspec.Meta(description="verification, spf, dkim, dmarc, mx, return_path_mx, return_path_spf or bimi")]
    type: str
    name: Annotated[str, msgspec.Meta(description="fully qualified, no trailing dot")]
    value: str
    required: bool
    note: str
    ttl: int
    status: Annotated[str, msgspec.Meta(description="what the last verification found: verified, missing, mismatch, error, or unchecked")]
    detail: str
    selector: str | None = None
    strings: list[str] | None = None


class Records(msgspec.Struct):
    domain: str
    records: list[Record]
    warnings: list[str]


class RecordsQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    format: Annotated[Literal["json", "zone"], msgspec.Meta(description="zone: BIND zone text (text/plain) to paste into a zone")] = "json"


class CheckedRecord(msgspec.Struct):
    purpose: str
    type: str
    name: str
    required: bool
    expected: str
    status: Annotated[str, msgspec.Meta(description="verified, missing, mismatch or error")]
    detail: str
    found: str | list[str] | None = None
    selector: str | None = None


class Verification(msgspec.Struct):
    domain: str
    state: State
    previous_state: str
    outcome: Annotated[str, msgspec.Meta(description="verified, pending, failing, or error (DNS did not answer: the state is kept)")]
    checked_at: float
    duration_ms: float
    dmarc_policy: str | None
    activated_selectors: list[str]
    records: list[CheckedRecord]


class DomainAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domain: DomainText
    selector: Selector | None = None
    dkim: Annotated[Dkim, msgspec.Meta(description="key algorithm(s); default: domains.dkim_algorithm")] | None = None


class DkimRotate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    selector: Selector | None = None
    dkim: Annotated[Dkim, msgspec.Meta(description="default: the algorithms the domain signs with now")] | None = None


class SelectorRemoved(msgspec.Struct):
    domain: str
    selector: str
    algorithm: str
    state: str
    removed: bool


class InboundSwitch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: Annotated[bool, msgspec.Meta(description="receive the domain's mail on the MX (only while it is verified)")]
    catchall: Annotated[UsecaseName | None, msgspec.Meta(description="the use case that gets mail for unknown addresses; null: none")] = None


class DomainInbound(msgspec.Struct):
    name: str
    state: State
    inbound_enabled: bool
    catchall: str | None


class DomainDeleted(msgspec.Struct):
    name: str
    deleted: bool
    keys_removed: int


class DomainQuery(Paging, forbid_unknown_fields=True):
    pass


def path_domain(call: Call) -> str:
    """The path's domain in its stored form; a value that is no domain name names nothing (404)."""
    try:
        return normalise_domain(call.params["domain"])
    except InvalidArgument:
        raise not_found("no such domain") from None


def _selectors(joined: str | None) -> list[dict[str, str]]:
    """The list row's "selector:state ..." as objects."""
    out = []
    for item in (joined or "").split():
        selector, _, state = item.partition(":")
        out.append({"selector": selector, "state": state})
    return out


class DomainEndpoints(Endpoints):
    @api_route("GET", "/v1/domains", permission="domains.read", query=DomainQuery, response=Page[DomainSummary],
               summary="The tenant's sending domains, by name")
    async def list(self, call: Call) -> Page[DomainSummary]:
        limit = call.query.limit
        rows = await names_after(self.deps.methods["domain.list"], call.query.cursor, limit, tenant=call.caller.tenant)
        return page([{**r, "selectors": _selectors(r["selectors"])} for r in rows], limit, key=lambda r: r["name"])

    @api_route("GET", "/v1/domains/{domain}", permission="domains.read", response=Domain,
               summary="One sending domain: state, DKIM keys, records with their last result, what uses it")
    async def show(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["domain.show"](domain=path_domain(call), tenant=call.caller.tenant)

    @api_route("POST", "/v1/domains", permission="domains.manage", body=DomainAdd, response=Domain, status=201,
               summary="Add a sending domain; its DKIM keys are made and its records are in the answer")
    async def add(self, call: Call) -> Reply:
        body = call.body
        with blame(WORDS):
            added = await self.deps.methods["domain.add"](tenant=call.caller.tenant, domain=body.domain, selector=body.selector,
                                                          dkim=body.dkim)
        shown = await self.deps.methods["domain.show"](domain=added["name"], tenant=call.caller.tenant)
        return Reply(shown, headers={"Location": f"/v1/domains/{added['name']}"})

    @api_route("GET", "/v1/domains/{domain}/records", permission="domains.read", query=RecordsQuery, response=Records,
               alternatives=("text/plain",),
               summary="The DNS records to publish, each with its last verification result (?format=zone: BIND zone text)",
               description="SPF and DMARC are merged with what the domain publishes now (asked of DNS on each call).")
    async def records(self, call: Call) -> Any:
        found = await self.deps.methods["domain.records"](domain=path_domain(call), tenant=call.caller.tenant)
        if call.query.format == "zone":
            return Reply(found["zone"].encode(), content_type="text/plain")
        return found

    @api_route("POST", "/v1/domains/{domain}/verify", permission="domains.verify", response=Verification,
               summary="Verify the domain's records now; the answer has each record's result")
    async def verify(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["domain.verify"](domain=path_domain(call), tenant=call.caller.tenant)

    @api_route("POST", "/v1/domains/{domain}/dkim", permission="domains.manage", body=DkimRotate, response=Domain, status=201,
               summary="Rotate DKIM: a new selector, pending until its record verifies; then it signs and the old key retires")
    async def rotate(self, call: Call) -> dict[str, Any]:
        name = path_domain(call)
        with blame(WORDS):
            await self.deps.methods["domain.rotate_dkim"](domain=name, tenant=call.caller.tenant, selector=call.body.selector,
                                                          dkim=call.body.dkim)
        return await self.deps.methods["domain.show"](domain=name, tenant=call.caller.tenant)

    @api_route("DELETE", "/v1/domains/{domain}/dkim/{selector}", permission="domains.manage", response=SelectorRemoved,
               summary="Remove a retired (or never active) DKIM key; an active one is refused (409)")
    async def remove_selector(self, call: Call) -> dict[str, Any]:
        name = path_domain(call)
        try:
            return await self.deps.methods["domain.remove_selector"](domain=name, selector=call.params["selector"],
                                                                     tenant=call.caller.tenant)
        except InvalidArgument:  # not a selector at all: it names nothing
            raise not_found("no such DKIM selector") from None

    @api_route("PUT", "/v1/domains/{domain}/inbound", permission="domains.manage", body=InboundSwitch, response=DomainInbound,
               summary="Receive the domain's mail on the MX or not, and its catch-all use case")
    async def inbound(self, call: Call) -> dict[str, Any]:
        body = call.body
        with blame(WORDS, {"has no use case": "catchall"}):
            return await self.deps.methods["domain.inbound"](domain=path_domain(call), enabled=body.enabled, catchall=body.catchall,
                                                             no_catchall=body.catchall is None, tenant=call.caller.tenant)

    @api_route("DELETE", "/v1/domains/{domain}", permission="domains.manage", response=DomainDeleted,
               summary="Delete a domain and its keys; refused (409) while a use case or connector uses it")
    async def delete(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["domain.delete"](domain=path_domain(call), tenant=call.caller.tenant)
