"""MIME parsers that misbehave on cue, for the parser pool's tests (gateway/inbound/pool.py). They
run in a pool process, so they are module-level (pickled by name) and take their cue from a header
of the message itself:

    X-Test-Die: PATH     the first message naming PATH kills its process (SIGKILL) and creates
                         PATH; tried again, it is parsed. ``always``: it kills its process every time.
    X-Test-Hold: PATH    the parse waits until PATH exists (at most 20 s), so a test decides when
                         this message's parse ends.
    X-Test-Mark: PATH    PATH is created once the message is parsed.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from gateway.inbound.mime import MimeLimits, ParsedMessage, parse

_CUE = re.compile(rb"^X-Test-(Die|Hold|Mark): (\S+)\r?$", re.MULTILINE)


def misbehaving_parse(raw: bytes, limits: MimeLimits = MimeLimits()) -> ParsedMessage:
    cues = {name.decode(): value.decode() for name, value in _CUE.findall(bytes(raw[:4096]))}
    if "Die" in cues:
        path = cues["Die"]
        if path == "always":
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            Path(path).touch(exist_ok=False)
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    if "Hold" in cues:
        deadline = time.monotonic() + 20
        while not os.path.exists(cues["Hold"]) and time.monotonic() < deadline:
            time.sleep(0.005)
    parsed = parse(raw, limits)
    if "Mark" in cues:
        Path(cues["Mark"]).touch()
    return parsed
