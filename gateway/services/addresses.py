"""Channel addresses: the operator's and the API's one door to them (validation, then the store).

An address is stored in one spelling (gateway/suppression.py ``normalise_address`` of a checked
RFC 5321 dot-atom address with its domain in A-label form), so the MX's recipient resolver, the
submission policy and this service compare strings. The address's domain must be one of the
tenant's domains and its use case of that domain; the domain may be unverified when the address is
added (it receives and sends only once verified: the MX and submission check the domain state on
every message), so an operator can declare a channel before its DNS is published.
"""

from __future__ import annotations

from typing import Any

from .. import validate
from ..admin.registry import admin_method
from ..domains.names import normalise_address as checked_address
from ..errors import InvalidArgument
from ..store import Store
from ..suppression import normalise_address
from .tenants import check_tenant_name

DIRECTIONS = ("inbound", "outbound", "both")
MAX_DECORATION = 4000   # characters of one header or footer text (the admin boundary takes 4096)
TEXT_FIELDS = ("header_text", "header_html", "footer_text", "footer_html")
SHOWN = ("address", "tenant", "domain", "domain_state", "usecase", "display_name", "direction", "enabled", "reply_copy",
         *TEXT_FIELDS, "vcard", "created_at", "updated_at")


def check_address(address: str, what: str = "address") -> str:
    """The one spelling of a channel (or reply copy) address; InvalidArgument naming ``what``."""
    try:
        return normalise_address(checked_address(address))
    except InvalidArgument as exc:
        raise InvalidArgument(f"{what}: {exc.message}") from None


def check_decoration(value: str, what: str) -> str:
    """A header or footer: printable text, line breaks and tabs allowed, stored with LF line ends."""
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    if len(text) > MAX_DECORATION:
        raise InvalidArgument(f"{what} is too long: {len(text)} characters, at most {MAX_DECORATION}")
    bad = validate.unprintable(text.replace("\n", "").replace("\t", ""))
    if bad is not None:
        raise InvalidArgument(f"{what} must not contain control characters (found U+{ord(bad):04X})")
    return text


def present(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in SHOWN if k in record}


class AddressService:
    def __init__(self, store: Store):
        self.store = store

    def _fields(self, address: str, display_name: str | None, direction: str | None, enabled: bool | None,
                reply_copy: str | None, texts: dict[str, str | None], vcard: bool | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if display_name is not None:
            fields["display_name"] = validate.display(display_name, "display name")
        if direction is not None:
            fields["direction"] = validate.choice(direction, "direction", DIRECTIONS)
        if enabled is not None:
            fields["enabled"] = int(enabled)
        if reply_copy is not None:
            copy = check_address(reply_copy, "reply copy") if reply_copy.strip() else ""
            if copy == address:
                raise InvalidArgument("the reply copy must be another address than the channel address itself")
            fields["reply_copy"] = copy
        for name, value in texts.items():
            if value is not None:
                fields[name] = check_decoration(value, name.replace("_", " "))
        if vcard is not None:
            fields["vcard"] = int(vcard)
        return fields

    @admin_method("address.add")
    async def add(self, tenant: str, address: str, usecase: str, display_name: str = "", direction: str = "both",
                  enabled: bool = True, reply_copy: str = "", header_text: str = "", header_html: str = "",
                  footer_text: str = "", footer_html: str = "", vcard: bool = False) -> dict[str, Any]:
        check_tenant_name(tenant)
        address = check_address(address)
        validate.name(usecase, "use case")
        fields = self._fields(address, display_name, direction, enabled, reply_copy,
                              {"header_text": header_text, "header_html": header_html, "footer_text": footer_text,
                               "footer_html": footer_html}, vcard)
        return present(await self.store.addresses.add(tenant, address, usecase=usecase, **fields))

    @admin_method("address.list")
    async def list(self, tenant: str, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """By address; ``after`` and ``limit`` read one page (the API's cursor), all of them by default."""
        return [present(a) for a in await self.store.addresses.list(check_tenant_name(tenant),
                                                                    after=None if after is None else check_address(after), limit=limit)]

    @admin_method("address.show")
    async def show(self, tenant: str, address: str) -> dict[str, Any]:
        return present(await self.store.addresses.get(check_tenant_name(tenant), check_address(address)))

    @admin_method("address.update")
    async def update(self, tenant: str, address: str, usecase: str | None = None, display_name: str | None = None,
                     direction: str | None = None, enabled: bool | None = None, reply_copy: str | None = None,
                     header_text: str | None = None, header_html: str | None = None, footer_text: str | None = None,
                     footer_html: str | None = None, vcard: bool | None = None) -> dict[str, Any]:
        check_tenant_name(tenant)
        address = check_address(address)
        if usecase is not None:
            validate.name(usecase, "use case")
        fields = self._fields(address, display_name, direction, enabled, reply_copy,
                              {"header_text": header_text, "header_html": header_html, "footer_text": footer_text,
                               "footer_html": footer_html}, vcard)
        if not fields and usecase is None:
            raise InvalidArgument("nothing to change: give at least one option")
        return present(await self.store.addresses.update(tenant, address, usecase=usecase, **fields))

    @admin_method("address.delete")
    async def delete(self, tenant: str, address: str) -> dict[str, Any]:
        return present(await self.store.addresses.delete(check_tenant_name(tenant), check_address(address)))
