"""Store failures on demand, for the delivery fault tests: a real Store whose chosen method raises.

    with failing(d.store.delivery, "routing") as switch:     # every call raises while switch.on
        ...
        switch.on = False                                     # the store works again
    with failing(d.store.delivery, "record", times=1):       # only the next call raises

The method is wrapped on that one instance (the class is untouched), and restored on exit. What
raises is a StoreError, as the store raises when SQLite refuses (disk full, I/O error).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from gateway.errors import StoreError


class Switch:
    def __init__(self, times: int | None):
        self.on = True
        self.times = times     # None: until switched off
        self.raised = 0


@contextlib.contextmanager
def failing(target: Any, name: str, *, times: int | None = None) -> Iterator[Switch]:
    original = getattr(target, name)
    switch = Switch(times)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if switch.on and (switch.times is None or switch.raised < switch.times):
            switch.raised += 1
            raise StoreError(f"injected failure of {name} (disk I/O error)")
        return await original(*args, **kwargs)

    setattr(target, name, wrapper)
    try:
        yield switch
    finally:
        delattr(target, name)  # back to the class's method
