"""Cursor pagination and entity tags, the same for every list and every read.

A list answers ``{"data": [...], "next_cursor": "..."}``; the cursor is opaque to clients (base64url
of the last row's sort key) and the store reads the next page with ``WHERE key > ?`` on an index:
never OFFSET, so page 10,000 costs what page 1 costs. ``Paging`` is the query model every list
route's query model inherits (``cursor``, ``limit``).

An ETag is a hash of the representation's bytes: the same JSON, the same tag. ``If-None-Match`` on
a read answers 304; ``If-Match`` on a change is compared with the tag of the object's read route
(server.py), so a client that read version A cannot overwrite version B.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from .problems import invalid

T = TypeVar("T")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_CURSOR = 512
# The longest If-Match / If-None-Match read (a few tags); longer is a 400 (documented in openapi.py).
MAX_CONDITION = 1000


class Paging(msgspec.Struct, kw_only=True):
    cursor: Annotated[str, msgspec.Meta(max_length=MAX_CURSOR, description="next_cursor of the previous page")] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="most rows in the page")] = DEFAULT_LIMIT


class Page(msgspec.Struct, Generic[T]):
    data: list[T]
    next_cursor: str | None = None


def encode_cursor(key: Any) -> str:
    """An opaque cursor for a sort key (an id, or a list of values)."""
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, default: Any = None) -> Any:
    """The sort key a cursor carries; a malformed one is a 400 naming query.cursor."""
    if cursor is None or cursor == "":
        return default
    if len(cursor) > MAX_CURSOR:
        raise invalid("cursor is too long", "query.cursor", 400)
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid("cursor is not one this API gave", "query.cursor", 400) from None


def after(cursor: str | None, default: Any) -> Any:
    """The sort key a cursor carries, of ``default``'s type (a name, an id); ``default`` without a
    cursor; a cursor of another shape is a 400 naming query.cursor (an id cursor on a name list)."""
    key = decode_cursor(cursor, default)
    if type(key) is not type(default) or (isinstance(key, int) and not -(1 << 63) <= key < 1 << 63):   # SQLite's integers
        raise invalid("cursor is not one this list gave", "query.cursor", 400)
    return key


def page(rows: list[T], limit: int, key: Any) -> Page[T]:
    """A Page of at most ``limit`` rows from ``rows`` (read with limit + 1, so one more tells there
    are more); ``key(row)`` is the sort key the next page starts after."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(data=rows, next_cursor=encode_cursor(key(rows[-1])) if more and rows else None)


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(header: str, tag: str) -> bool:
    """Whether an If-Match / If-None-Match header names ``tag`` (weak tags compare equal, RFC 9110 8.8.3.2 weak comparison)."""
    wanted = tag.removeprefix("W/")
    for item in header.split(","):
        item = item.strip()
        if item == "*" or item.removeprefix("W/") == wanted:
            return True
    return False
