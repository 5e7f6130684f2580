"""Marking service methods as admin methods, and checking a request's params against them.

Service classes decorate their coroutines with ``@admin_method("tenant.add")``. The decorator only
marks the function; ``collect(*services)`` builds the daemon's own name -> bound method table, so
there is no global registry. ``check_params`` binds a request's params to the signature and checks
the simple types the protocol carries (str, int, float, bool, lists of those, None), then the
boundary rules every value passes (gateway/validate.py: 64-bit integers, finite numbers, bounded
UTF-8 text and lists).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import InvalidArgument
from .. import validate

AdminMethod = Callable[..., Awaitable[Any]]


def admin_method(name: str) -> Callable[[AdminMethod], AdminMethod]:
    def mark(fn: AdminMethod) -> AdminMethod:
        fn.__admin_method__ = name  # type: ignore[attr-defined]
        return fn

    return mark


def collect(*services: object) -> dict[str, AdminMethod]:
    table: dict[str, AdminMethod] = {}
    for service in services:
        for attr in dir(type(service)):
            fn = getattr(type(service), attr, None)
            name = getattr(fn, "__admin_method__", None)
            if name:
                if name in table:
                    raise ValueError(f"admin method {name!r} defined twice")
                table[name] = getattr(service, attr)
    return table


class ParamsError(InvalidArgument):
    code = "invalid_params"


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_params(fn: AdminMethod, params: dict[str, Any]) -> inspect.BoundArguments:
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(**params)
    except TypeError as exc:
        raise ParamsError(f"bad params: {exc}") from None
    hints = typing.get_type_hints(fn)
    for name, value in bound.arguments.items():
        if name in hints and not _matches(value, hints[name]):
            raise ParamsError(f"bad params: {name!r} has the wrong type ({type(value).__name__})")
        validate.boundary(name, value)
    return bound


def checked(methods: dict[str, AdminMethod]) -> dict[str, AdminMethod]:
    """The same methods, each checking its params first as an admin request's are (types, then
    validate.boundary): what the HTTP API calls, so a value reaching a service passes the same bounds
    whichever front end carried it."""

    def wrap(fn: AdminMethod) -> AdminMethod:
        async def call(**params: Any) -> Any:
            bound = check_params(fn, params)
            return await fn(*bound.args, **bound.kwargs)

        call.__name__ = getattr(fn, "__name__", "method")
        return call

    return {name: wrap(fn) for name, fn in methods.items()}
