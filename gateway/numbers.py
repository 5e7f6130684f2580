"""Numbers read from text that someone else wrote (a client, a remote server, a config file).

One rule: a number on the wire or in a config value is ASCII digits only (RFC 5321's 1*DIGIT).
``str.isdigit`` is also true for '\u00b2' (which ``int()`` refuses: a ValueError where none was
expected) and for other scripts' digits such as '\u0661' (which ``int()`` reads: a port or a size
nobody wrote in ASCII). Never use ``str.isdigit`` on outside input; use ``ascii_number``.
"""

from __future__ import annotations

from typing import Any


def ascii_number(value: Any) -> int | None:
    """``value`` as a non-negative integer when it is ASCII digits only, else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None
