"""The OpenAPI 3.1 document, generated from the route table and the routes' msgspec models.

Nothing here is written by hand per route: the same models that decode requests and shape replies
are described with msgspec's JSON Schema generator (JSON Schema 2020-12, which OpenAPI 3.1 uses),
so the document cannot drift from what the server does. Every route documents the problem
responses the server can give it; each operation names its permission and the roles that hold it
(``x-permission``, ``x-roles``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from .. import __version__
from .paging import MAX_CONDITION
from .problems import CONTENT_TYPE as PROBLEM_TYPE, Problem
from .roles import PERMISSIONS, ROLES, roles_with
from .routes import Route, item_reads

REF = "#/components/schemas/{name}"
PATH_PARAM = {"type": "string", "minLength": 1, "maxLength": 320}

# Problems any authenticated route can answer, beside its own success.
COMMON_PROBLEMS = {
    "401": "Missing, malformed, unknown, revoked or expired API key.",
    "403": "The key's role lacks the route's permission (the problem names it).",
    "429": "The key's rate limit is spent, or the client's address sent too many bad keys; Retry-After says when to try again.",
    "503": "The gateway cannot take the request now (busy, storage full); Retry-After says when to try again.",
}


def _models(routes: list[Route]) -> list[Any]:
    seen: list[Any] = [Problem]
    for r in routes:
        for t in (r.body, r.response):
            if t is not None and t not in seen:
                seen.append(t)
    return seen


def _query_parameters(model: type) -> list[dict[str, Any]]:
    (ref,), components = msgspec.json.schema_components([model], ref_template=REF)
    schema = components[ref["$ref"].rsplit("/", 1)[1]]
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        # A query parameter is present or absent, never null: document the non-null branch.
        branches = [b for b in prop.get("anyOf", []) if b.get("type") != "null"]
        if len(branches) == 1:
            prop = {**branches[0], **({"default": prop["default"]} if prop.get("default") is not None else {})}
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if prop.get("type") == "array" or any(p.get("type") == "array" for p in prop.get("anyOf", [])):
            param.update(style="form", explode=True)
        out.append(param)
    return out


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_TYPE: {"schema": {"$ref": REF.format(name="Problem")}}}}


def _operation(r: Route, refs: dict[Any, dict[str, Any]], item_paths: set[str]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": p, "in": "path", "required": True, "schema": PATH_PARAM} for p in r.params]
    if r.query is not None:
        params += _query_parameters(r.query)
    if r.method == "GET":
        params.append({"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string", "maxLength": MAX_CONDITION},
                       "description": "An ETag of an earlier read: 304 when unchanged."})
    elif r.path in item_paths:
        params.append({"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string", "maxLength": MAX_CONDITION},
                       "description": "The ETag of the read this change is based on: 412 when the object changed since."})
    op: dict[str, Any] = {
        "operationId": r.operation_id, "summary": r.summary, "tags": [r.tag],
        "security": [{"apiKey": []}], "x-permission": r.permission, "x-roles": roles_with(r.permission),
    }
    if r.description:
        op["description"] = r.description
    if params:
        op["parameters"] = params
    if r.body is not None or r.raw:
        content: dict[str, Any] = {}
        if r.body is not None:
            content["application/json"] = {"schema": refs[r.body]}
        for media in r.raw:
            content[media] = {"schema": {"type": "string"}}
        op["requestBody"] = {"required": not r.body_optional, "content": content}
    success: dict[str, Any] = {"description": r.summary}
    if r.response is not None:
        success["content"] = {r.produces: {"schema": refs[r.response]}, **{m: {"schema": {"type": "string"}} for m in r.alternatives}}
    elif r.produces != "application/json":   # bytes streamed by the endpoint (an .eml, an attachment)
        success["content"] = {r.produces: {"schema": {"type": "string", "format": "binary"}}}
    responses: dict[str, Any] = {str(r.status): success}
    if r.method == "GET":
        responses["304"] = {"description": "Not modified (If-None-Match named the current ETag)."}
    responses["400"] = _problem("Malformed request (bad JSON, an unusable cursor). As text/plain: the HTTP parser refused the "
                                "request line or a header (longer than 8,190 bytes, or not HTTP) before any route saw it.")
    responses["400"]["content"]["text/plain"] = {"schema": {"type": "string"}}
    responses.update({code: _problem(text) for code, text in COMMON_PROBLEMS.items()})
    if r.params:
        responses["404"] = _problem("No such object in the key's tenant (another tenant's objects are not found either).")
    if r.body is not None or r.raw:
        responses["413"] = _problem("The request body is larger than the route accepts.")
        responses["415"] = _problem("The request body's media type is not one the route takes.")
    if r.method != "GET":
        responses["409"] = _problem("The request clashes with existing state.")
        if r.path in item_paths:
            responses["412"] = _problem("If-Match does not name the object's current ETag.")
    responses["422"] = _problem("A value is not valid; `field` names it.")
    op["responses"] = responses
    return op


def document(routes: list[Route], *, server_url: str = "") -> dict[str, Any]:
    models = _models(routes)
    schemas, components = msgspec.json.schema_components(models, ref_template=REF)
    refs = dict(zip(models, schemas))
    item_paths = set(item_reads(routes))
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.path, {})[r.method.lower()] = _operation(r, refs, item_paths)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway tenant API", "version": __version__,
            "description": "Every call carries an API key (Authorization: Bearer gw_live_...). Roles: "
                           + "; ".join(f"{role}: {', '.join(sorted(granted))}" for role, granted in ROLES.items()),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "gw_live_... API key (gateway apikey add)."}},
        },
        "x-permissions": PERMISSIONS,
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
