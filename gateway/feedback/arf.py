"""Complaint reports (RFC 5965 ARF) -> who complained about which of our messages.

    parse(raw, envelope_to="") -> Complaint | None   (None: not a feedback report)

A report is ``multipart/report; report-type=feedback-report`` with a human part, a
``message/feedback-report`` part (Feedback-Type, Original-Mail-From, Original-Rcpt-To, Arrival-Date,
Source-IP, Reported-Domain) and the returned message (``message/rfc822``) or its headers
(``text/rfc822-headers``). Receivers redact differently: Original-Rcpt-To is often missing and the
returned To is often blanked, so the match to our message is made from what survives, best first:
the VERP tag of the returned Return-Path (or of Original-Mail-From, or of the envelope recipient the
report came to), then the returned Message-ID, then a ``Feedback-ID`` header (RFC-less, the
``a:b:c:sender`` convention Gmail reads). The caller looks these up in the queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..verp import VerpTag, decode as verp_decode
from . import mime
from .dsn import first_address, normalise

FEEDBACK_TYPES = {"abuse", "fraud", "virus", "other", "not-spam", "auth-failure", "dmarc"}
SENDER_ID = "gateway"
_FEEDBACK_ID = re.compile(r"^u(\d{1,12}):t(\d{1,12}):" + SENDER_ID + "$")


def feedback_id(tenant_id: int, usecase_id: int) -> str:
    """The Feedback-ID value delivery adds (Gmail's 'a:b:SenderId' form: the use case, the tenant, us).
    It names no recipient or message, so receivers can aggregate on it; with a complaint's
    Original-Rcpt-To it still finds the tenant when the receiver stripped our VERP return path."""
    return f"u{usecase_id}:t{tenant_id}:{SENDER_ID}"


def parse_feedback_id(value: str) -> tuple[int, int] | None:
    """(tenant_id, usecase_id) from a Feedback-ID we made, or None."""
    m = _FEEDBACK_ID.match(value.strip())
    return (int(m.group(2)), int(m.group(1))) if m else None


@dataclass(frozen=True)
class Complaint:
    feedback_type: str         # abuse | fraud | virus | other | not-spam | auth-failure (lower-cased; unknown -> 'other')
    recipient: str             # who complained ('' when the receiver redacted it)
    message_id: str            # the returned message's Message-ID ('' when absent)
    return_path: str           # the returned message's Return-Path or Original-Mail-From
    verp: VerpTag | None
    feedback_id: str = ""
    user_agent: str = ""
    source_ip: str = ""
    arrival_date: str = ""


def _first_address(value: str) -> str:
    found = first_address(value or "")
    return normalise(found) if found else ""


def _parts(msg: mime.Part) -> tuple[dict[str, str] | None, dict[str, str]]:
    report, returned = None, None
    for part in msg.walk():
        ctype = part.content_type
        if ctype == "message/feedback-report" and report is None:
            blocks = mime.header_blocks(part.decoded())
            report = blocks[0] if blocks else {}
        elif ctype == "message/rfc822" and returned is None:
            returned = part.parts[0].headers if part.parts else {}
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers") and returned is None:
            returned = mime.headers(part.text().lstrip())
    return report, returned or {}


def parse(raw: bytes, envelope_to: str = "") -> Complaint | None:
    msg = mime.parse(raw)
    if msg.content_type != "multipart/report" or msg.param("report-type").lower() != "feedback-report":
        return None
    report, returned = _parts(msg)
    if report is None:
        return None
    ftype = report.get("feedback-type", "").strip().lower()
    original_from = _first_address(report.get("original-mail-from", ""))
    return_path = _first_address(returned.get("return-path", "")) or original_from
    verp = None
    for candidate in (return_path, original_from, envelope_to):
        verp = verp_decode(candidate) if candidate else None
        if verp is not None:
            break
    recipient = _first_address(report.get("original-rcpt-to", "")) or _first_address(returned.get("to", ""))
    return Complaint(
        feedback_type=ftype if ftype in FEEDBACK_TYPES else "other",
        recipient=recipient,
        message_id=returned.get("message-id", "").strip(),
        return_path=return_path,
        verp=verp,
        feedback_id=" ".join(returned.get("feedback-id", "").split()),
        user_agent=report.get("user-agent", "").strip(),
        source_ip=report.get("source-ip", "").strip(),
        arrival_date=(report.get("arrival-date") or report.get("received-date") or "").strip(),
    )
