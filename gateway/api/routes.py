"""Declaring API routes: ``@api_route`` on endpoint methods, ``collect`` into the server's table.

    class DomainEndpoints:
        @api_route("GET", "/v1/domains/{domain}", permission="domains.read", response=Domain,
                   summary="One sending domain")
        async def show(self, call: Call) -> Domain: ...

The decorator only marks the method (no global registry; the daemon collects its own endpoint
objects, as admin/registry.py does for admin methods). A route declares everything the server,
the OpenAPI document and the role-matrix test need: method, path, the one permission it needs,
its query and body models (msgspec Structs, or ``raw`` media types taken as bytes), its response
model and status, and whether a successful call is a change for the audit log.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from .roles import PERMISSIONS

Handler = Callable[..., Awaitable[Any]]
PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Caller:
    """Who is calling: the API key, checked. Endpoints pass ``tenant`` to the service functions."""

    key_id: int
    public_id: str
    name: str
    tenant: str
    tenant_id: int
    role: str
    usecase: str | None
    usecase_id: int | None
    permissions: frozenset[str]
    rate_limit: float
    client: str = ""            # the client's address (X-Forwarded-For only from a trusted proxy)

    def may(self, permission: str) -> bool:
        return permission in self.permissions


@dataclass
class Call:
    """One request as an endpoint sees it: decoded and checked."""

    caller: Caller
    params: dict[str, str]          # path parameters
    query: Any                      # an instance of the route's query model, or None
    body: Any                       # an instance of the body model, bytes for a raw media type, or None
    request: web.Request
    content_type: str = ""          # the request's media type (which of the route's bodies it is)


@dataclass
class Reply:
    """What an endpoint returns when the route's status, headers or media type are not enough."""

    body: Any = None                # encoded against the response model; bytes go out as they are
    status: int | None = None       # None: the route's status
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    permission: str
    summary: str
    handler: Handler
    tag: str = ""
    query: type | None = None
    body: type | None = None
    raw: tuple[str, ...] = ()       # media types taken as raw bytes (e.g. message/rfc822, text/csv)
    response: Any = None            # a type msgspec can encode and describe; None: no body
    status: int = 200
    audit: bool = True              # a successful non-GET call appends an 'api_change' event
    max_body: int | Callable[[Any], int] | None = None     # None: api.max_body_bytes; a callable: of the Config
    reserve: int = 0                # > 0: the body is read under the daemon's memory budget, this many times its size
    produces: str = "application/json"
    alternatives: tuple[str, ...] = ()  # other media types a success may be (text, chosen by a query parameter)
    description: str = ""

    @property
    def params(self) -> list[str]:
        return PARAM.findall(self.path)

    @property
    def body_optional(self) -> bool:
        """No body at all is {} (its JSON model has no required field and no raw type is taken)."""
        return (self.body is not None and not self.raw
                and not any(f.required for f in msgspec.inspect.type_info(self.body).fields))

    @property
    def operation_id(self) -> str:
        return getattr(self.handler, "__qualname__", self.handler.__name__).replace(".", "_")


def api_route(method: str, path: str, *, permission: str, summary: str, **options: Any) -> Callable[[Handler], Handler]:
    if permission not in PERMISSIONS:
        raise ValueError(f"route {method} {path}: unknown permission {permission!r}")
    if not path.startswith("/v1/"):
        raise ValueError(f"route {path!r}: API paths start with /v1/")

    def mark(fn: Handler) -> Handler:
        routes = getattr(fn, "__api_routes__", [])
        fn.__api_routes__ = [*routes, dict(method=method.upper(), path=path, permission=permission, summary=summary, **options)]  # type: ignore[attr-defined]
        return fn

    return mark


def item_reads(routes: list[Route]) -> dict[str, Route]:
    """Path -> the GET of one object there: what If-Match on a change of that path is compared with
    (server.py) and where the document offers If-Match (openapi.py). A list is no object (its ETag
    is one page's), nor is a read that cannot be made without query parameters."""
    from .paging import Paging

    reads = {}
    for r in routes:
        if r.method != "GET" or not r.params or (r.query is not None and issubclass(r.query, Paging)):
            continue
        if r.query is not None:
            try:
                r.query()
            except TypeError:       # a required query parameter: the read needs what the change does not give
                continue
        reads[r.path] = r
    return reads


def collect(*endpoints: object) -> list[Route]:
    """The routes of the given endpoint objects, bound to them; (method, path) must be unique."""
    table: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for endpoint in endpoints:
        for attr in dir(type(endpoint)):
            fn = getattr(type(endpoint), attr, None)
            for marked in getattr(fn, "__api_routes__", []):
                spec = dict(marked)
                key = (spec["method"], spec["path"])
                if key in seen:
                    raise ValueError(f"API route {key[0]} {key[1]} defined twice")
                seen.add(key)
                tag = spec.pop("tag", "") or type(endpoint).__name__.removesuffix("Endpoints").lower()
                table.append(Route(handler=getattr(endpoint, attr), tag=tag, **spec))
    table.sort(key=lambda r: (r.path, r.method))
    return table
