"""Which hosts the gateway connects to on a tenant's say-so (webhook URLs, connector hosts): SSRF care.

Never: link-local addresses (cloud metadata at 169.254.169.254, fe80::/10), multicast, unspecified
and reserved ones -- nothing a tenant may legitimately point the gateway at, and a quoted banner or
error from there would leak the gateway's own network. Loopback only when the setting that fits
says so (``webhooks.allow_loopback`` for webhook URLs, ``delivery.allow_loopback`` for connectors).
A literal is refused when the host is added or changed; a name is checked on the addresses it
resolves to when the connection is made (a name can be made to resolve anywhere later).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .delivery.loops import host_ip, unroutable
from .errors import DeliveryError, InvalidArgument


def refused(host: str, *, allow_loopback: bool, setting: str) -> str:
    """Why a connection to ``host`` (a name or an address) must not be made; '' when it may (and
    for a name, whose addresses are checked when it is resolved)."""
    ip = host_ip(host)
    if ip is None:
        return ""
    if ip.is_loopback:
        return "" if allow_loopback else f"{ip} is loopback ({setting} is off)"
    if unroutable(ip) or ip.is_unspecified:
        return f"{ip} is a link-local, multicast, reserved or unspecified address"
    return ""


def check_host(host: str, what: str, *, allow_loopback: bool, setting: str) -> str:
    """``host``, or InvalidArgument when it is a literal the gateway must not connect to."""
    why = refused(host, allow_loopback=allow_loopback, setting=setting)
    if why:
        raise InvalidArgument(f"{what} refused: {why}")
    return host


async def resolved_refusal(host: str, port: int, *, allow_loopback: bool, setting: str, timeout: float) -> str:
    """Why connecting to ``host`` now must not happen: a refused literal, or a name one of whose
    addresses is refused (the connection could reach it). '' when it may, and when the name does not
    resolve (the connection attempt reports that itself)."""
    why = refused(host, allow_loopback=allow_loopback, setting=setting)
    if why or host_ip(host) is not None:
        return why
    try:
        async with asyncio.timeout(timeout):
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        return ""
    for *_, address in found:
        why = refused(str(address[0]), allow_loopback=allow_loopback, setting=setting)
        if why:
            return f"{host} resolves to {why}"
    return ""


class RefusedAddress(DeliveryError, OSError):
    """Every address a host resolved to is one the gateway must not connect to (an OSError, so
    aiohttp treats it as a connection that could not be made)."""


class GuardedResolver(AbstractResolver):
    """aiohttp's default resolver with the addresses ``refused`` names taken out: what an HTTP client
    of a tenant's URL (webhooks, a SendGrid connector's base_url) connects through."""

    def __init__(self, allow_loopback: Callable[[], bool], setting: str):
        self.inner = DefaultResolver()
        self.allow_loopback = allow_loopback
        self.setting = setting

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        allowed = [r for r in found if not refused(r["host"], allow_loopback=self.allow_loopback(), setting=self.setting)]
        if not allowed:
            raise RefusedAddress(f"{host} resolves only to refused addresses ({', '.join(r['host'] for r in found)})")
        return allowed

    async def close(self) -> None:
        await self.inner.close()
