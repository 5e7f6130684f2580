"""A request's parts as the route's models take them, and a reply as its response model gives it:
the bounds msgspec does not apply by itself (numbers the store can hold, a body of undeclared length
read no further than its route's limit) and the taking apart of Structs before a reply is shaped.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from aiohttp import web

from .problems import invalid

INT64 = 2**63


def list_fields(model: type | None) -> frozenset[str]:
    if model is None:
        return frozenset()
    info = msgspec.inspect.type_info(model)
    return frozenset(f.encode_name for f in info.fields if is_list(f.type))


def is_list(t: Any) -> bool:
    """Whether a query field takes several values (?type=a&type=b): a list, maybe optional or annotated."""
    if isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    if isinstance(t, msgspec.inspect.UnionType):
        return any(is_list(x) for x in t.types)
    return isinstance(t, msgspec.inspect.ListType)


def checked_numbers(value: Any, where: str) -> Any:
    """``value`` when every number in it is one the store and the services can hold: an integer in
    64 bits (msgspec takes any size; SQLite would raise OverflowError), a float that is finite (a
    query's "nan" or "inf" converts). Else a 422 naming where."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, int):
        if not -INT64 <= value < INT64:
            raise invalid("a number is out of range (64-bit integers)", where or None)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise invalid("a number is not finite", where or None)
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            checked_numbers(getattr(value, name), f"{where}.{name}" if where else name)
    elif isinstance(value, dict):
        for item in value.values():
            checked_numbers(item, where)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            checked_numbers(item, where)
    return value


async def read_chunked(request: web.Request, limit: int) -> bytes:
    """A body of undeclared length, read up to the route's own limit: request.read() would take up
    to the largest limit of any route (the send route's) before the route's could be checked."""
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise invalid(f"the request body is larger than {limit} bytes", None, 413)
        chunks.append(chunk)
    return b"".join(chunks)


def plain(value: Any) -> Any:
    """Structs as dicts, all the way down (lists and dicts walked; rows and other objects left to convert)."""
    if isinstance(value, msgspec.Struct):
        return {name: plain(getattr(value, attr)) for attr, name in zip(value.__struct_fields__, value.__struct_encode_fields__)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
