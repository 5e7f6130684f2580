"""Every route of the API, walked from the daemon's own route table (so a new route cannot skip it):
the role matrix (403 naming the permission exactly when the role lacks it) and tenant isolation
(another tenant's owner key on this tenant's real objects is 404, never 403, never 2xx; a sender key
on another use case's object is 404 too).

A route whose path parameter the world (tests/support/world.py) has no object for fails here: add
one of that object to ``populate``.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import msgspec

from gateway.api.roles import ROLES
from gateway.api.routes import PARAM, Route
from tests.support.daemon import running_daemon
from tests.support.world import World, api_world, minimal

# Changes carry an If-Match that matches nothing: where the path has a read, the change is refused
# with 412 after the permission check, so walking the table changes (almost) nothing.
STALE = '"conformance-stale"'
ORDER = ("sender", "agent", "admin", "owner")   # the fewest permissions first: they change the least


def api_routes(world: World) -> list[Route]:
    return next(c for c in world.d.daemon.components if c.name == "api").routes


async def call(session: aiohttp.ClientSession, world: World, route: Route, path: str, token: str, *,
               complete: bool = False) -> tuple[int, Any]:
    """(status, decoded body). ``complete``: a query and body that decode, so the call reaches the endpoint."""
    headers = {"Authorization": f"Bearer {token}"}
    kwargs: dict[str, Any] = {}
    if route.method != "GET":
        headers["If-Match"] = STALE
    if complete:
        if route.query is not None:
            kwargs["params"] = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in minimal(route.query).items()}
        if route.body is not None:
            kwargs["data"] = json.dumps(minimal(route.body)).encode()
            headers["Content-Type"] = "application/json"
        elif route.raw:
            kwargs["data"] = b""
            headers["Content-Type"] = route.raw[0]
    async with session.request(route.method, f"http://{world.d.address('api')}{path}", headers=headers, **kwargs) as resp:
        raw = await resp.read()
        body = json.loads(raw) if raw and "json" in resp.headers.get("Content-Type", "") else raw
        return resp.status, body


def undocumented(value: Any, schema: dict[str, Any], doc: dict[str, Any], at: str = "$") -> list[str]:
    """Where ``value`` carries a member its documented schema does not name (a leak the models let by)."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    found: list[str] = []
    for branch in schema.get("anyOf", []) + schema.get("oneOf", []):
        if not undocumented(value, branch, doc, at):
            return []
        found = undocumented(value, branch, doc, at)
    if isinstance(value, dict) and "properties" in schema:
        for key, member in value.items():
            if key not in schema["properties"]:
                found.append(f"{at}.{key}")
            else:
                found += undocumented(member, schema["properties"][key], doc, f"{at}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value[:20]):
            found += undocumented(item, schema["items"], doc, f"{at}[{n}]")
    return found


def filled(world: World, route: Route, failures: list[str], params: dict[str, str] | None = None) -> str | None:
    try:
        return world.fill(route.path, params)
    except KeyError as exc:
        failures.append(f"{route.method} {route.path}: the world has no object for {{{exc.args[0]}}} (add one in tests/support/world.py)")
        return None


async def test_every_route_refuses_exactly_the_roles_that_lack_its_permission(tmp_path, dns_server):
    async with api_world(tmp_path, dns_server) as world, aiohttp.ClientSession() as session:
        routes = api_routes(world)
        assert len(routes) >= 5
        async with session.get(f"http://{world.d.address('api')}/v1/openapi.json") as resp:
            doc = await resp.json()
        failures: list[str] = []
        for route in sorted(routes, key=lambda r: (r.method == "DELETE", r.path, r.method)):
            path = filled(world, route, failures)
            if path is None:
                continue
            for role in ORDER:
                status, body = await call(session, world, route, path, world.keys[role])
                allowed = route.permission in ROLES[role]
                if allowed and (status in (401, 403) or status >= 500):
                    failures.append(f"{route.method} {route.path} as {role} (has {route.permission}): {status} {body!r:.300}")
                elif allowed and 200 <= status < 300 and isinstance(body, (dict, list)):
                    schema = doc["paths"][route.path][route.method.lower()]["responses"][str(status)]["content"]["application/json"]["schema"]
                    if leaked := undocumented(body, schema, doc):
                        failures.append(f"{route.method} {route.path} as {role}: members the document does not name: {leaked[:10]}")
                elif not allowed and (status != 403 or not isinstance(body, dict) or body.get("permission") != route.permission):
                    failures.append(f"{route.method} {route.path} as {role} (lacks {route.permission}): {status} {body!r:.300}, not 403 naming it")
        assert not failures, "\n".join(failures)


async def test_another_tenants_objects_are_not_found_on_every_route(tmp_path, dns_server):
    async with api_world(tmp_path, dns_server) as world, aiohttp.ClientSession() as session:
        failures: list[str] = []
        with_params = [r for r in api_routes(world) if r.params]
        assert with_params
        for route in with_params:
            path = filled(world, route, failures)
            if path is None:
                continue
            status, body = await call(session, world, route, path, world.other, complete=True)
            if status != 404:
                failures.append(f"{route.method} {path} with another tenant's owner key: {status} {body!r:.300}, not 404")
        # And nothing was changed by them: tenant A's objects still answer its own owner.
        for route in with_params:
            if route.method == "GET" and (path := filled(world, route, failures)):
                status, body = await call(session, world, route, path, world.keys["owner"])
                if status != 200:
                    failures.append(f"{route.method} {path} with the tenant's own owner key: {status} {body!r:.300}")
        assert not failures, "\n".join(failures)


async def test_a_sender_key_does_not_find_another_use_cases_objects(tmp_path, dns_server):
    async with api_world(tmp_path, dns_server) as world, aiohttp.ClientSession() as session:
        failures: list[str] = []
        for route in api_routes(world):
            if not route.params or route.permission not in ROLES["sender"]:
                continue
            missing = [p for p in route.params if p not in world.foreign]
            if missing:
                failures.append(f"{route.method} {route.path}: world.foreign has no other use case's {missing}")
                continue
            path = world.fill(route.path, world.foreign)
            status, body = await call(session, world, route, path, world.keys["sender"], complete=True)
            if status != 404:
                failures.append(f"{route.method} {path} with a sender key of another use case: {status} {body!r:.300}, not 404")
        assert not failures, "\n".join(failures)


def model_faults(t: Any, at: str, seen: set[Any]) -> list[str]:
    """Where a request model breaks the contract (api_common.md): a Struct that takes unknown fields,
    a string, list or mapping without a max_length, a number without bounds, a value of any shape."""
    i = msgspec.inspect
    if isinstance(t, i.Metadata):
        return model_faults(t.type, at, seen)
    if isinstance(t, i.StructType):
        if t.cls in seen:
            return []
        seen.add(t.cls)
        faults = [] if t.forbid_unknown_fields else [f"{at}: {t.cls.__name__} takes unknown fields (forbid_unknown_fields=True)"]
        for f in t.fields:
            faults += model_faults(f.type, f"{at}.{f.encode_name}", seen)
        return faults
    if isinstance(t, i.UnionType):
        return [fault for x in t.types for fault in model_faults(x, at, seen)]
    if isinstance(t, (i.StrType, i.BytesType)):
        return [] if t.max_length is not None else [f"{at}: a string without max_length"]
    if isinstance(t, (i.ListType, i.SetType, i.FrozenSetType, i.VarTupleType)):
        faults = [] if t.max_length is not None else [f"{at}: a list without max_length"]
        return faults + model_faults(t.item_type, f"{at}[]", seen)
    if isinstance(t, i.DictType):
        faults = [] if t.max_length is not None else [f"{at}: a mapping without max_length"]
        return faults + model_faults(t.key_type, f"{at}{{key}}", seen) + model_faults(t.value_type, f"{at}{{}}", seen)
    if isinstance(t, (i.IntType, i.FloatType)):
        bounded = (t.ge is not None or t.gt is not None) and (t.le is not None or t.lt is not None)
        return [] if bounded else [f"{at}: a number without ge/le bounds"]
    if isinstance(t, i.AnyType):
        return [f"{at}: a value of any shape (unbounded nesting)"]
    return []


async def test_every_request_model_refuses_unknown_fields_and_bounds_its_strings_lists_and_numbers(tmp_path):
    async with running_daemon(tmp_path) as d:
        routes = next(c for c in d.daemon.components if c.name == "api").routes
        faults = []
        for route in routes:
            for part, model in (("query", route.query), ("body", route.body)):
                if model is not None:
                    faults += [f"{route.method} {route.path} {fault}" for fault in model_faults(msgspec.inspect.type_info(model), part, set())]
        assert not faults, "\n".join(faults)


async def test_every_route_wants_a_key(tmp_path):
    async with running_daemon(tmp_path, {"api": {"auth_failure_rate": 1000.0}}) as d, aiohttp.ClientSession() as session:
        routes = next(c for c in d.daemon.components if c.name == "api").routes
        failures = []
        for route in routes:
            path = PARAM.sub("x", route.path)
            for headers in ({}, {"Authorization": "Bearer gw_live_aaaaaaaaaaaa_" + "A" * 43}, {"Authorization": "Basic eDp5"}):
                async with session.request(route.method, f"http://{d.address('api')}{path}", headers=headers) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status != 401 or body.get("type") != "urn:gateway:problem:unauthorized":
                        failures.append(f"{route.method} {path} with {headers or 'no key'}: {resp.status}")
        assert not failures, "\n".join(failures)
