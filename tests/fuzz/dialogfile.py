"""Raw dialogs in tests/data/fuzz/*.dialog: what the fuzzer found, as minimal inputs, one file a case.

    # what it is, what went wrong, what the reply must be          (comments)
    endpoint: submissions               submission (STARTTLS port, the default) or submissions (implicit TLS)
    xfail: fixed on branch submission   the case is known to fail until that branch lands
    starttls                            EHLO, STARTTLS, TLS handshake
    login                               EHLO and a successful AUTH PLAIN
    > MAIL FROM:<\\r\\n                  send these bytes (Python bytes escapes: \\r \\n \\x00 \\xff ...)
    >> 70000 A                          send "A" 70,000 times (escapes as for >)
    < 501 5\\.1\\.7                        the next reply (its last line) must match this regex
    closed                              the server closes the connection
    abort                               the client resets the connection
    close                               the client closes its side

After the last line: every 4xx/5xx reply carried an enhanced code, and the listener logged nothing
at error level while the dialog ran (nor while it wound down).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz.oracle import LogCapture, missing_enhanced
from tests.fuzz.targets import Endpoint
from tests.fuzz.wire import REPLY, REPLY_TIMEOUT, client_context

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "fuzz"


@dataclass
class Case:
    name: str
    endpoint: str = "submission"
    xfail: str = ""
    steps: list[tuple[str, object]] = field(default_factory=list)


def parse(path: Path) -> Case:
    case = Case(path.stem)
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith(">> "):
            count, _, text = line[3:].partition(" ")
            case.steps.append(("send", codecs.escape_decode(text.encode())[0] * int(count)))
        elif line.startswith("> "):
            case.steps.append(("send", codecs.escape_decode(line[2:].encode())[0]))
        elif line.startswith("< "):
            case.steps.append(("expect", re.compile(line[2:].encode())))
        elif line.strip() in ("starttls", "login", "closed", "abort", "close"):
            case.steps.append((line.strip(), None))
        elif ":" in line and line.split(":", 1)[0] in ("endpoint", "xfail"):
            key, _, value = line.partition(":")
            setattr(case, key, value.strip())
        else:
            raise ValueError(f"{path}:{n}: cannot read {raw!r}")
    return case


def cases() -> list[Case]:
    return [parse(p) for p in sorted(DATA_DIR.glob("*.dialog"))]


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """The last line of the next reply, b"" at EOF."""
    async with asyncio.timeout(REPLY_TIMEOUT):
        while True:
            line = await reader.readline()
            if not line:
                return b""
            line = line.rstrip(b"\r\n")
            m = REPLY.match(line)
            if m and m.group(2) != b"-":
                return line


async def run(case: Case, endpoints: list[Endpoint], capture: LogCapture, idle) -> list[str]:
    """Play the case; the list of what went wrong (empty: it passed)."""
    ep = next(e for e in endpoints if e.name == case.endpoint)
    problems: list[str] = []
    mark = capture.mark()
    reader, writer = await asyncio.open_connection(ep.host, ep.port, ssl=client_context() if ep.tls == "implicit" else None,
                                                   limit=1 << 20)
    replies = [await _reply(reader)]
    in_tls = ep.tls == "implicit"
    try:
        for kind, arg in case.steps:
            if kind == "send":
                writer.write(arg)
                await writer.drain()
            elif kind == "expect":
                got = await _reply(reader)
                replies.append(got)
                if not arg.match(got):
                    problems.append(f"expected {arg.pattern!r}, got {got!r}")
                    break
            elif kind == "starttls" or (kind == "login" and not in_tls):
                in_tls = True
                writer.write(b"EHLO fuzz.example\r\nSTARTTLS\r\n")
                await writer.drain()
                replies += [await _reply(reader), await _reply(reader)]
                await writer.start_tls(client_context())
            if kind == "login":
                blob = base64.b64encode(b"\0" + ep.credentials[0].encode() + b"\0" + ep.credentials[1].encode())
                writer.write(b"EHLO fuzz.example\r\nAUTH PLAIN " + blob + b"\r\n")
                await writer.drain()
                got = [await _reply(reader), await _reply(reader)]
                replies += got
                if not got[1].startswith(b"235"):
                    problems.append(f"login failed: {got}")
                    break
            if kind == "closed":
                got = await _reply(reader)
                if got:
                    problems.append(f"expected the connection closed, got {got!r}")
            elif kind == "abort":
                writer.transport.abort()
            elif kind == "close":
                writer.close()
    except TimeoutError:
        problems.append("no reply in time (hang)")
    except (ConnectionError, ssl.SSLError) as exc:
        problems.append(f"connection failed: {type(exc).__name__}: {exc}")
    finally:
        if not writer.is_closing():
            writer.transport.abort()
    await idle()
    problems += [f"reply without an enhanced code: {r!r}" for r in replies if missing_enhanced(r)]
    problems += [f"error-level log line: {r.get('event')} {r.get('error_type', '')}: {str(r.get('exception', ''))[-300:]}"
                 for r in capture.since(mark)]
    return problems
