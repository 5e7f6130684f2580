"""Channel addresses over HTTP: list, show, add, change, delete, through the ``address.*`` admin
methods with ``tenant=`` the key's tenant."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .. import validate
from ..errors import InvalidArgument
from ..services.addresses import DIRECTIONS, MAX_DECORATION, check_address
from .endpoints import Endpoints
from .fields import blame, names_after
from .paging import Page, Paging, page
from .problems import not_found
from .routes import Call, Reply, api_route
from .usecases import Address, Name

Direction = Annotated[Literal[DIRECTIONS], msgspec.Meta(description="which way the address is used")]  # type: ignore[valid-type]
Display = Annotated[str, msgspec.Meta(max_length=validate.MAX_DISPLAY, description="the From display name")]
Copy = Annotated[str, msgspec.Meta(max_length=320, description="an address that gets a copy of each reply; empty: none")]
Decoration = Annotated[str, msgspec.Meta(max_length=MAX_DECORATION)]

# The words the address service's refusals use, and the body field each is.
WORDS = {"address": "address", "reply copy": "reply_copy", "the reply copy": "reply_copy", "display name": "display_name",
         "direction": "direction", "use case name": "usecase", "header text": "header_text", "header html": "header_html",
         "footer text": "footer_text", "footer html": "footer_html"}
REFS = {"has no domain": "address", "has no use case": "usecase"}


class ChannelAddress(msgspec.Struct):
    address: str
    domain: str
    domain_state: str
    usecase: str
    display_name: str
    direction: str
    enabled: bool
    reply_copy: str
    header_text: str
    header_html: str
    footer_text: str
    footer_html: str
    vcard: bool
    created_at: float
    updated_at: float


class AddressQuery(Paging, forbid_unknown_fields=True):
    pass


class AddressAdd(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    address: Annotated[Address, msgspec.Meta(description="on one of the tenant's domains")]
    usecase: Annotated[Name, msgspec.Meta(description="a use case of the address's domain: it sends the address's mail")]
    display_name: Display = ""
    direction: Direction = "both"
    enabled: bool = True
    reply_copy: Copy = ""
    header_text: Decoration = ""
    header_html: Decoration = ""
    footer_text: Decoration = ""
    footer_html: Decoration = ""
    vcard: Annotated[bool, msgspec.Meta(description="attach a vCard of the address to its mail")] = False


class AddressPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    usecase: Name | None = None
    display_name: Display | None = None
    direction: Direction | None = None
    enabled: bool | None = None
    reply_copy: Copy | None = None
    header_text: Decoration | None = None
    header_html: Decoration | None = None
    footer_text: Decoration | None = None
    footer_html: Decoration | None = None
    vcard: bool | None = None


def path_address(call: Call) -> str:
    """The path's address in its stored spelling; a value that is no address names nothing (404)."""
    try:
        return check_address(call.params["address"])
    except InvalidArgument:
        raise not_found("no such channel address") from None


class AddressEndpoints(Endpoints):
    @api_route("GET", "/v1/addresses", permission="addresses.read", query=AddressQuery, response=Page[ChannelAddress],
               summary="The tenant's channel addresses, in order")
    async def list(self, call: Call) -> Page[ChannelAddress]:
        limit = call.query.limit
        rows = await names_after(self.deps.methods["address.list"], call.query.cursor, limit, tenant=call.caller.tenant)
        return page(rows, limit, key=lambda r: r["address"])

    @api_route("GET", "/v1/addresses/{address}", permission="addresses.read", response=ChannelAddress, summary="One channel address")
    async def show(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["address.show"](tenant=call.caller.tenant, address=path_address(call))

    @api_route("POST", "/v1/addresses", permission="addresses.write", body=AddressAdd, response=ChannelAddress, status=201,
               summary="Add a channel address (its domain may be unverified: it works once the domain verifies)")
    async def add(self, call: Call) -> Reply:
        b = call.body
        with blame(WORDS, REFS):
            made = await self.deps.methods["address.add"](
                tenant=call.caller.tenant, address=b.address, usecase=b.usecase, display_name=b.display_name, direction=b.direction,
                enabled=b.enabled, reply_copy=b.reply_copy, header_text=b.header_text, header_html=b.header_html,
                footer_text=b.footer_text, footer_html=b.footer_html, vcard=b.vcard)
        return Reply(made, headers={"Location": f"/v1/addresses/{made['address']}"})

    @api_route("PATCH", "/v1/addresses/{address}", permission="addresses.write", body=AddressPatch, response=ChannelAddress,
               summary="Change a channel address (only the fields given)")
    async def update(self, call: Call) -> dict[str, Any]:
        b = call.body
        with blame(WORDS, {"has no use case": "usecase"}):
            return await self.deps.methods["address.update"](
                tenant=call.caller.tenant, address=path_address(call), usecase=b.usecase, display_name=b.display_name,
                direction=b.direction, enabled=b.enabled, reply_copy=b.reply_copy, header_text=b.header_text,
                header_html=b.header_html, footer_text=b.footer_text, footer_html=b.footer_html, vcard=b.vcard)

    @api_route("DELETE", "/v1/addresses/{address}", permission="addresses.write", response=ChannelAddress,
               summary="Delete a channel address (received mail keeps its history)")
    async def delete(self, call: Call) -> dict[str, Any]:
        return await self.deps.methods["address.delete"](tenant=call.caller.tenant, address=path_address(call))
