"""The rules for values that come in through the admin boundary, written once.

Two layers use them. ``admin.registry.check_params`` applies ``boundary`` to every request before a
service function runs: no string with a lone surrogate (a non-UTF-8 argument) or NUL, no string
over ``MAX_TEXT`` characters, no list over ``MAX_ITEMS``, no integer outside SQLite's 64 bits, no
NaN or infinity. The service functions then apply the field rules below (names, display names,
hosts, quotas...), so the CLI, the HTTP API and tests meet the same ones. The CLI reads the ranges
from here too, to refuse early with the same limits.

Every failure is an ``InvalidArgument`` (exit 2) with one line that names the field and shows the
value escaped and shortened: a refusal never echoes 100 KB or a terminal escape back.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from .crlf import has_line_breakers
from .errors import InvalidArgument

INT64_MAX = 2**63 - 1  # SQLite INTEGER is a signed 64-bit value
INT64_MIN = -(2**63)
MAX_TEXT = 4096        # any string parameter; the field rules below are tighter
MAX_ITEMS = 10_000     # any list parameter
MAX_NAME = 63          # tenants, use cases, connectors: one DNS label's worth
MAX_DISPLAY = 200      # display names, entities
MAX_HOST = 253         # RFC 1035 2.3.4
MAX_SECRET = 1024      # passwords and API tokens (SendGrid's are 69 characters)
MAX_URL = 2048
MAX_MONTHLY_QUOTA = 1_000_000_000  # messages per month; 0 = unlimited
MAX_RATE_LIMIT = 1_000_000         # messages per minute; 0 = unlimited
MAX_SECONDS = 10 * 366 * 86400     # any age or period given in seconds: ten years
MAX_CONCURRENCY = 1000

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$"
                  r"|^\[?[0-9a-fA-F:.]+\]?$")
# Characters that reorder or hide text on a terminal (Trojan Source, CVE-2021-42574), besides Cc.
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
SEPARATORS = frozenset("\u2028\u2029\u0085")


def shown(value: Any, limit: int = 40) -> str:
    """A value for an error message: repr (escapes control characters), at most ``limit`` characters."""
    text = repr(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii") if not text.isascii() else text
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f" ({len(value) if isinstance(value, str) else '?'} chars)"


def unprintable(text: str) -> str | None:
    """The first character that must not reach a terminal or a log line as it is, or None."""
    for c in text:
        if c in BIDI or c in SEPARATORS or unicodedata.category(c) in ("Cc", "Cs"):
            return c
    return None


# ---------------------------------------------------------------------- the boundary, for every request


def boundary(name: str, value: Any) -> None:
    """The checks every parameter of every admin method passes, whatever its field rule."""
    name = name.replace("_", " ")  # the parameter as people call it: "display name"
    if isinstance(value, str):
        _text_boundary(name, value)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidArgument(f"{name} is out of range: {shown(value)} does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{name} must be a finite number, not {value}")
    elif isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise InvalidArgument(f"{name} has {len(value)} items; at most {MAX_ITEMS}")
        for item in value:
            boundary(name, item)
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise InvalidArgument(f"{name} has {len(value)} keys; at most {MAX_ITEMS}")
        for key, item in value.items():
            boundary(name, key)
            boundary(name, item)


def _text_boundary(name: str, value: str) -> None:
    if len(value) > MAX_TEXT:
        raise InvalidArgument(f"{name} is too long: {len(value)} characters, at most {MAX_TEXT}")
    if "\0" in value:
        raise InvalidArgument(f"{name} must not contain NUL: {shown(value)}")
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise InvalidArgument(f"{name} is not valid UTF-8 text: {shown(value)}")


# ---------------------------------------------------------------------- field rules


def name(value: str, what: str) -> str:
    """A tenant, use case or connector name: 1-63 lower-case letters, digits, '-' or '_'."""
    if not (isinstance(value, str) and len(value) <= MAX_NAME and NAME.match(value)):
        raise InvalidArgument(f"invalid {what} name {shown(value)}: use 1-{MAX_NAME} lower-case letters, digits, '-' or '_', "
                              "starting with a letter or digit")
    return value


def optional_name(value: str | None, what: str) -> str | None:
    return None if value is None else name(value, what)


def display(value: str, what: str, *, max_len: int = MAX_DISPLAY, required: bool = False) -> str:
    """Text for people (display name, entity): printable, at most ``max_len`` characters, trimmed."""
    value = value.strip()
    if required and not value:
        raise InvalidArgument(f"{what} must not be empty")
    if len(value) > max_len:
        raise InvalidArgument(f"{what} is too long: {len(value)} characters, at most {max_len}")
    bad = unprintable(value)
    if bad is not None:
        raise InvalidArgument(f"{what} must not contain control characters (found U+{ord(bad):04X}): {shown(value)}")
    return value


def line(value: str, what: str, *, max_len: int) -> str:
    """A value that goes into a protocol line (user name, secret): no CR, LF or NUL, bounded."""
    if len(value) > max_len:
        raise InvalidArgument(f"{what} is too long: {len(value)} characters, at most {max_len}")
    if has_line_breakers(value):
        raise InvalidArgument(f"{what} must not contain CR, LF or NUL")
    return value


def host(value: str, what: str = "host") -> str:
    """A host name (RFC 1123 labels, at most 253 characters) or an IP address literal."""
    if not (len(value) <= MAX_HOST and HOST.match(value)):
        raise InvalidArgument(f"invalid {what} {shown(value)}: a host name of at most {MAX_HOST} characters or an IP address")
    return value


def integer(value: int, what: str, *, low: int, high: int, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgument(f"{what} must be {low}-{high}{unit}, got {shown(value)}")
    return value


def number(value: float, what: str, *, low: float, high: float, unit: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(f"{what} must be a number {low:g}-{high:g}{unit}, got {shown(value)}")
    return float(value)


def monthly_quota(value: int) -> int:
    return integer(value, "monthly quota", low=0, high=MAX_MONTHLY_QUOTA, unit=" messages (0 = unlimited)")


def rate_limit(value: int) -> int:
    return integer(value, "rate limit", low=0, high=MAX_RATE_LIMIT, unit=" messages per minute (0 = unlimited)")


def choice(value: str, what: str, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise InvalidArgument(f"invalid {what} {shown(value)}: expected {' or '.join(choices)}")
    return value


def route(value: str) -> str:
    """How a use case's mail leaves: 'direct' or 'connector:NAME' (the store checks that NAME exists)."""
    value = value.strip()
    kind, colon, rest = value.partition(":")
    if value == "direct" or (kind == "connector" and colon and len(rest) <= MAX_NAME and NAME.match(rest)):
        return value
    raise InvalidArgument(f"invalid route {shown(value)}: expected 'direct' or 'connector:NAME'")
