"""RFC 9457 problem details: every API error is one of these, with a stable ``type``.

``ApiProblem`` is raised anywhere under a route; ``from_exception`` turns the gateway's own errors
(the ones service functions raise for the CLI too) into the same shape, so one refusal means one
thing whether it came over the admin socket, SMTP or HTTP. Types are URNs
(``urn:gateway:problem:<slug>``): stable names, not links to fetch.
"""

from __future__ import annotations

import math
import re

import msgspec

from ..errors import Conflict, GatewayError, InvalidArgument, NotFound, ServiceError, SMTPError, StorageFull

TYPE_PREFIX = "urn:gateway:problem:"
CONTENT_TYPE = "application/problem+json"
MAX_DETAIL = 1000
MAX_FIELD = 200


class Problem(msgspec.Struct, omit_defaults=True):
    """The body of every error response (RFC 9457), plus the field or permission at fault."""

    type: str
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    field: str | None = None           # the request part at fault: "to[0]", "query.limit", "path.domain"
    permission: str | None = None      # 403: the permission the key lacks
    smtp: str | None = None            # the SMTP reply the same refusal gets on the submission port
    retry_after: int | None = None     # 429/503: seconds (also the Retry-After header)


class ApiProblem(GatewayError):
    """Raised under a route; the server answers with its ``body``."""

    def __init__(self, status: int, slug: str, title: str, detail: str = "", *, field: str | None = None,
                 permission: str | None = None, smtp: str | None = None, retry_after: float | None = None):
        self.status = status
        # Details can quote the request (msgspec names an unknown field as sent): never the whole of it.
        detail = detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."
        field = field if field is None or len(field) <= MAX_FIELD else field[:MAX_FIELD] + "..."
        self.body = Problem(type=TYPE_PREFIX + slug, title=title, status=status, detail=detail, field=field,
                            permission=permission, smtp=smtp,
                            retry_after=None if retry_after is None else max(1, math.ceil(retry_after)))
        super().__init__(f"{status} {slug}: {detail or title}")

    @property
    def slug(self) -> str:
        return self.body.type[len(TYPE_PREFIX):]

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.body.retry_after)} if self.body.retry_after is not None else {}


def unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "unauthorized", "Missing or invalid API key", detail)


def forbidden(permission: str, role: str) -> ApiProblem:
    return ApiProblem(403, "forbidden", "The API key's role lacks a permission",
                      f"a key with role {role!r} may not do this: it needs permission {permission!r}", permission=permission)


def not_found(detail: str = "no such object") -> ApiProblem:
    return ApiProblem(404, "not-found", "Not found", detail)


def invalid(detail: str, field: str | None = None, status: int = 422) -> ApiProblem:
    return ApiProblem(status, "invalid-request", "The request is not valid", detail, field=field)


_PATH = re.compile(r" - at `\$(.*)`$")
_NAMED = re.compile(r"(?:unknown|required) field `([^`]{1,100})`")


def from_validation(exc: msgspec.ValidationError, where: str = "") -> ApiProblem:
    """msgspec's "Expected `str`, got `int` - at `$.to[0]`" -> detail and field "to[0]"."""
    text = str(exc)
    m = _PATH.search(text)
    field = None
    if m:
        field = m.group(1).lstrip(".")
        text = text[: m.start()]
    named = _NAMED.search(text)
    if named:  # "Object missing required field `to`" at `$`: the field is the one named
        field = f"{field}.{named.group(1)}" if field else named.group(1)
    if where:
        field = f"{where}.{field}" if field else where
    return invalid(text, field)


def from_exception(exc: BaseException) -> ApiProblem | None:
    """The problem an error of the gateway's tree means over HTTP; None for anything else (a bug: 500)."""
    if isinstance(exc, ApiProblem):
        return exc
    if isinstance(exc, StorageFull):
        return ApiProblem(503, "storage-full", "The gateway's storage is full", "try again later", retry_after=60)
    if isinstance(exc, NotFound):
        return not_found(exc.message)
    if isinstance(exc, Conflict):
        return ApiProblem(409, "conflict", "The request clashes with existing state", exc.message)
    if isinstance(exc, InvalidArgument):
        return invalid(exc.message)
    if isinstance(exc, ServiceError):
        return ApiProblem(400, exc.code.replace("_", "-"), "The request was refused", exc.message)
    if isinstance(exc, SMTPError):
        # The send endpoint maps refusals to their own types first (gateway/api/messages.py); this is
        # what any other SMTP-shaped refusal means: permanent -> 422, temporary -> 503 try later.
        if exc.permanent:
            return ApiProblem(422, "message-refused", "The message was refused", exc.public, smtp=exc.reply)
        return ApiProblem(503, "try-later", "The message cannot be taken now", exc.public, smtp=exc.reply, retry_after=30)
    return None
