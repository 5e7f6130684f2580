"""What a read is narrowed to beyond the tenant (a sender key's one use case, or the use case a
query names, as a use case id for the store), and the page a list read answers with.

A sender key asking for another use case gets the answer a name that does not exist gets (no
existence oracle): 422 naming the query field, as for any unknown filter value.
"""

from __future__ import annotations

from typing import Any

from ..errors import NotFound
from .paging import encode_cursor
from .problems import invalid
from .routes import Caller

USECASE_FIELD = "query.usecase"


async def usecase_id(store: Any, caller: Caller, name: str | None) -> int | None:
    """The use case id a read is narrowed to (None: the whole tenant)."""
    if caller.usecase_id is not None:
        if name is not None and name != caller.usecase:
            raise invalid(f"no use case {name!r}", USECASE_FIELD)
        return caller.usecase_id
    if name is None:
        return None
    try:
        return (await store.usecases.get(caller.tenant, name))["id"]
    except NotFound:
        raise invalid(f"no use case {name!r}", USECASE_FIELD) from None


def cursor_id(value: Any) -> int | None:
    """A row id from a decoded cursor; anything else is a cursor this API did not give."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise invalid("cursor is not one this API gave", "query.cursor", 400)


def listing(rows: list[Any], next_key: Any) -> dict[str, Any]:
    """A list route's answer, ``next_key`` the sort key the next page starts after (None: the last page).
    A dict, not a ``Page``: the server converts it to the route's ``Page[Model]``, which shapes every row
    by its model, where a Page instance would pass through with its rows as the store gave them."""
    return {"data": rows, "next_cursor": encode_cursor(next_key) if next_key is not None else None}
