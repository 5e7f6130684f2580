"""Delivery status notifications (RFC 3464): a multipart/report telling the envelope sender which
recipients failed for good, and why.

One DSN covers the recipients of one message that failed in one delivery attempt (a message whose
recipients fail at different times gets one DSN per batch; no recipient is ever reported twice: the
store sets ``dsn_sent`` in the same commit that queues the DSN). A message from the null sender
``<>`` gets no DSN (RFC 5321 6.1, RFC 3464 2.2 against loops). The DSN itself is sent with MAIL
FROM <> so that it cannot bounce back to us in a loop.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from ..crlf import to_crlf
from .dkim import split_message

MAX_ORIGINAL_HEADERS = 64 * 1024
# RFC 5322 2.1.1 allows 998 octets a line; "<address>: diagnostic" must fit in one (address <= 256).
MAX_FIELD = 256
MAX_DIAGNOSTIC = 700


@dataclass(frozen=True)
class FailedRecipient:
    rcpt: str
    status: str        # RFC 3463, e.g. 5.1.1 or 4.4.7 for an expired message
    diagnostic: str    # the remote's reply line (or our reason), one line
    remote: str = ""   # Remote-MTA
    expired: bool = False


def _clean(text: str, limit: int = MAX_FIELD) -> str:
    """One line of printable ASCII (header fields and report fields may not carry CR/LF/NUL), at
    most ``limit`` characters: a remote's reply may be kilobytes long, a DSN line may not."""
    line = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def original_headers(message: bytes) -> bytes:
    headers, _ = split_message(to_crlf(message))
    out = b"".join(name + b":" + value + b"\r\n" for name, value in headers)
    return out[:MAX_ORIGINAL_HEADERS]


def build_dsn(*, original: bytes, queue_id: str, arrival: float, envelope_from: str, failed: Sequence[FailedRecipient],
              reporting_mta: str, sender: str, now: float) -> tuple[bytes, str]:
    """(the DSN message as CRLF bytes, its Message-ID without <>)."""
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    message_id = f"dsn.{queue_id}.{secrets.token_hex(4)}@{reporting_mta}"
    date = email.utils.formatdate(now, localtime=False)
    expired = any(f.expired for f in failed)
    lines = [
        f"From: Mail Delivery System <{sender}>",
        f"To: <{_clean(envelope_from)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{message_id}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients."
        + (" For some, the time allowed for delivery ran out." if expired else ""),
        "Its headers are attached below.",
        "",
    ]
    for f in failed:
        lines.append(f"<{_clean(f.rcpt)}>: {_clean(f.diagnostic, MAX_DIAGNOSTIC)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Gateway-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=False)}",
    ]
    for f in failed:
        rcpt = _clean(f.rcpt)
        lines += ["", f"Original-Recipient: rfc822; {rcpt}", f"Final-Recipient: rfc822; {rcpt}", "Action: failed",
                  f"Status: {_clean(f.status)}"]
        if f.remote:
            lines.append(f"Remote-MTA: dns; {_clean(f.remote)}")
        lines += [f"Diagnostic-Code: smtp; {_clean(f.diagnostic, MAX_DIAGNOSTIC)}", f"Last-Attempt-Date: {date}"]
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered Message Headers",
        "",
    ]
    body = "\r\n".join(lines).encode("ascii") + b"\r\n" + original_headers(original)
    body += f"\r\n--{boundary}--\r\n".encode("ascii")
    return body, message_id


def failure_status(status: str, expired: bool) -> str:
    """The Status field: permanent codes as given; an expiry reports 4.4.7 unless the last reply said more."""
    if expired:
        return status if status.startswith("4.") and status != "4.0.0" else "4.4.7"
    return status if status.startswith("5.") else "5.0.0"
