"""Which request field a service's refusal is about.

The service functions check values for the CLI and the API alike and refuse one in words
(``InvalidArgument("invalid kind 'x': expected transactional or marketing")``, ``"entity must not be
empty"``): the rule stays in one place, below both doors. An endpoint names the words its body's
fields go by, and ``blame`` turns such a refusal into the API's 422 with ``field`` set, so a client
can point at the input at fault without parsing the text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ..errors import InvalidArgument, NotFound
from .paging import decode_cursor
from .problems import invalid

# How the service texts open before the words that name the value ("invalid kind ...", "reserved domain name ...").
LEADS = ("invalid ", "reserved ", "")


def field_of(message: str, words: dict[str, str]) -> str | None:
    """The field whose words open ``message``; None when none does (the problem then names no field)."""
    for word in sorted(words, key=len, reverse=True):
        for lead in LEADS:
            if message.startswith(lead + word + " ") or message.startswith(lead + word + ":"):
                return words[word]
    return None


@contextlib.contextmanager
def blame(words: dict[str, str], refs: dict[str, str] | None = None) -> Iterator[None]:
    """Run a service call; its InvalidArgument becomes a 422 naming the field (``words``: text -> field).

    ``refs`` are the body's references to other objects: a NotFound whose text has one of its keys
    ("has no use case") is about the field the body named it in, a 422, not the path's object (404)."""
    try:
        yield
    except InvalidArgument as exc:
        raise invalid(exc.message, field_of(exc.message, words)) from None
    except NotFound as exc:
        field = next((f for text, f in (refs or {}).items() if text in exc.message), None)
        if field is None:
            raise
        raise invalid(exc.message, field) from None


def not_our_cursor() -> Exception:
    return invalid("cursor is not one this API gave", "query.cursor", 400)


async def names_after(list_method: Callable[..., Awaitable[list[Any]]], cursor: str | None, limit: int, **params: Any) -> list[Any]:
    """One page plus one row of a list the service keeps by name (domains, use cases, addresses):
    the cursor carries the last name, which the service checks like any name it is given."""
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise not_our_cursor()
    try:
        return await list_method(after=after, limit=limit + 1, **params)
    except InvalidArgument:
        raise not_our_cursor() from None
