"""A remote's answer for one recipient, and what it means for the recipient's state."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


def split_enhanced(text: str) -> tuple[str, str]:
    """('5.1.1', 'no such user') from '5.1.1 no such user'; ('', text) without a code."""
    text = " ".join(text.split())  # multi-line replies become one line; no CR/LF survives
    m = _ENHANCED.match(text)
    if not m:
        return "", text
    return m.group(0), text[m.end():].strip()


def describe_failure(exc: BaseException) -> str:
    """Plain words for a failure that no server put into a reply. These end up in attempts, logs and
    DSN Diagnostic-Code lines that reach the sending app, so library class names stay out of them."""
    import ssl

    from .smtpclient import SMTPDisconnected, SMTPProtocolError

    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, SMTPDisconnected):
        return "connection closed by the remote server"
    if isinstance(exc, SMTPProtocolError):
        return "the server's reply could not be understood"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the remote server"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason})" if exc.reason else "TLS handshake failed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return "connection failed"


@dataclass(frozen=True)
class Reply:
    code: int           # SMTP reply code; 0 when no server answered (connection failed...)
    enhanced: str       # RFC 3463 status, '' when the remote gave none
    text: str           # one line
    remote: str = ""    # who answered: 'mx.example.org[192.0.2.1]', 'connector relay'...

    @classmethod
    def from_smtp(cls, code: int, message: str, remote: str = "") -> "Reply":
        enhanced, text = split_enhanced(message)
        return cls(code, enhanced, text, remote)

    @classmethod
    def temporary(cls, text: str, enhanced: str = "4.4.1", remote: str = "", code: int = 451) -> "Reply":
        return cls(code, enhanced, " ".join(text.split()), remote)

    @classmethod
    def permanent(cls, text: str, enhanced: str = "5.0.0", remote: str = "", code: int = 550) -> "Reply":
        return cls(code, enhanced, " ".join(text.split()), remote)

    @property
    def outcome(self) -> str:
        """delivered (2xx), bounced (5xx), deferred (4xx and anything unexpected)."""
        if 200 <= self.code < 300:
            return "delivered"
        if 500 <= self.code < 600:
            return "bounced"
        return "deferred"

    @property
    def line(self) -> str:
        return " ".join(p for p in (str(self.code) if self.code else "", self.enhanced, self.text) if p)

    @property
    def status(self) -> str:
        """The RFC 3464 Status: the enhanced code, else one derived from the reply class."""
        if self.enhanced:
            return self.enhanced
        return {"delivered": "2.0.0", "bounced": "5.0.0"}.get(self.outcome, "4.0.0")
