"""What counts as a finding, and the daemon's log as the fuzzer reads it.

    missing_enhanced   a 4xx/5xx reply without an RFC 3463 enhanced code (d.d.d) after it
    internal_error     "451 4.3.0 Internal error" to the client, or any error-level log line
                       (submission_exception, submission_data_failed, an asyncio traceback...)
    hang               an expected reply or the close after QUIT did not come in time
    accepted           a message that must be refused (bare LF, NUL, two From...) got a 2xx

Findings are grouped in classes; ``KNOWN`` names the classes another branch is fixing (each with
the reason its xfail marks carry), so the must-pass assertions can tell a known class from a new one.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field

import structlog

from gateway import logs
from gateway.config import LogConfig

ENHANCED_REPLY = re.compile(rb"^[45]\d\d[ -]?[245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
INTERNAL = b"451 4.3.0"
FIXED_ON_SUBMISSION = "fixed on branch submission"
NEW_FOR_SUBMISSION = "new finding for submission"

# class -> why it is not failing the must-pass assertions (the xfail reason)
KNOWN: dict[str, str] = {
    # Every class this fuzzer found is fixed on main (submission, submission2): the issue-12 four,
    # the address-parser exceptions, TLS use after close, plaintext behind STARTTLS, duplicate fields.
    # A class being fixed on another branch goes here, with the reason its xfail marks carry.
}


def classify_log(record: dict) -> str:
    """The class of an error-level log record."""
    text = " ".join(str(record.get(k, "")) for k in ("event", "error_type", "exception", "exc_info"))
    if "get_angle_addr" in text:
        return "internal:unterminated-angle-address"
    if "chunk is longer than limit" in text or ("challenge_auth" in text and ("LimitOverrun" in text or "ValueError" in text)):
        return "internal:auth-line-too-long"
    if "_write_appdata" in text or "_resume_reading" in text:  # aiosmtpd closed the SSL transport twice, then used it
        return "internal:tls-use-after-close"
    if "_header_value_parser" in text and "_getaddr" in text:
        return "internal:address-parser"
    if "surrogates not allowed" in text:
        return "internal:surrogate-identifier"
    if "WRONG_VERSION_NUMBER" in text or "TLSSetupException" in text or ("SSLError" in text and "STARTTLS" in text.upper()):
        return "internal:starttls-pipelined"
    frames = re.findall(r'File "[^"]*?([^/"]+)", line \d+, in (\w+)', str(record.get("exception", "")))
    where = f"{frames[-1][0]}:{frames[-1][1]}" if frames else ""
    return f"internal:{record.get('event')}:{record.get('error_type', '')}:{where}"


class LogCapture:
    """A stream for gateway.logs.configure that keeps the error-level records (bounded) and counts the rest."""

    MAX_KEPT = 200

    def __init__(self) -> None:
        self.lines = 0
        self.errors = 0
        self.kept: list[dict] = []
        self.classes: Counter[str] = Counter()
        self._buf = ""

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        pass

    def _line(self, line: str) -> None:
        self.lines += 1
        try:
            record = json.loads(line)
        except ValueError:
            record = {"event": line, "level": "error" if "Traceback" in line else "info"}
        if record.get("level") in ("error", "critical") or record.get("event") == "submission_exception":
            self.errors += 1
            self.classes[classify_log(record)] += 1
            if len(self.kept) < self.MAX_KEPT:
                self.kept.append(record)

    def mark(self) -> int:
        return self.errors

    def since(self, mark: int) -> list[dict]:
        return self.kept[mark:] if mark < len(self.kept) else []

    # ------------------------------------------------------------------ set up and tear down

    def start(self) -> "LogCapture":
        logs.configure(LogConfig(format="json", level="info"), self)
        return self

    def stop(self) -> None:
        structlog.reset_defaults()
        root = logging.getLogger()
        for handler in list(root.handlers):
            if getattr(handler, "_gateway", False):
                root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def missing_enhanced(reply: bytes) -> bool:
    return reply[:1] in (b"4", b"5") and not ENHANCED_REPLY.match(reply)


@dataclass
class Findings:
    """Classes of findings with a count and the first few dialogs (by index) that showed each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    texts: dict[str, Counter[bytes]] = field(default_factory=dict)

    def add(self, cls: str, where: str, text: bytes = b"") -> None:
        self.counts[cls] += 1
        ex = self.examples.setdefault(cls, [])
        if len(ex) < 5 and where not in ex:
            ex.append(where)
        if text:
            t = self.texts.setdefault(cls, Counter())
            if len(t) < 50 or text in t:
                t[re.sub(rb"\d{5,}|[0-9a-z]{16}", b"N", text[:80])] += 1

    def unknown(self) -> dict[str, int]:
        return {c: n for c, n in self.counts.items() if c not in KNOWN}

    def known(self) -> dict[str, int]:
        return {c: n for c, n in self.counts.items() if c in KNOWN}
