"""What kind of mail an inbound message is (pure).

    classify(raw, target=, envelope_to=, mail_from=, has_parent=) -> Classification(kind, rule, report, token)

Small named rules, tried in order; the first that fires gives the kind and records why (``rule``):

    arf          a complaint: multipart/report; report-type=feedback-report (gateway/feedback/arf.py)
    dsn          a bounce: an RFC 3464 delivery-status report anywhere; or, at a return path, any
                 other mail that is not an auto-reply (non-standard bounces: gateway/feedback/dsn.py);
                 or, at any address, a null-sender message the bounce heuristics recognise
    auto_reply   RFC 3834 Auto-Submitted other than "no", X-Autoreply / X-Autorespond, Precedence
                 auto_reply, or a subject that starts as responders start theirs ("Out of Office",
                 "Automatic reply:", "Abwesenheitsnotiz"...)
    unsubscribe  mail to an unsubscribe address whose subject (or +tag) carries a token
                 (gateway/unsubscribe/mailto.py); the token alone is the authority
    reply        has_parent: the thread resolver attached it to a conversation of ours
    message      anything else

``report`` is the parsed DSN or ARF as plain JSON values (summary.report), with the VERP tag and the
returned Message-ID it refers to; the processor adds what it resolved them to.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ..feedback import arf, dsn, mime
from ..unsubscribe import mailto

KINDS = ("dsn", "arf", "auto_reply", "unsubscribe", "reply", "message")
# Targets (gateway/inbound/recipients.py Target.kind) that are the gateway's own addresses.
RETURN_PATH, FEEDBACK, UNSUBSCRIBE = "return_path", "feedback", "unsubscribe"
MAX_HEADER_BYTES = 64 * 1024   # the top header block read for the rules

# Only what responders put first in the subject: a customer's "Vacation booking" is a message.
_VACATION = re.compile(
    r"^\s*(?:\[?auto(?:matic)?[ -]?(?:reply|response)\]?\s*:|auto:|out of (?:the )?office\b|autoreply\b|autosvar\b|"
    r"automatische antwort\b|abwesenheitsnotiz\b|r[ée]ponse automatique\b|respuesta autom[áa]tica\b|risposta automatica\b)", re.I)


@dataclass(frozen=True)
class Classification:
    kind: str
    rule: str                           # which rule fired, for the log and the summary
    report: dict[str, Any] | None = None
    token: str = ""                     # the unsubscribe token, for kind 'unsubscribe'


def top_headers(raw: bytes) -> dict[str, str]:
    """The message's own header fields, lower-cased names, first value, unfolded."""
    head = raw[:MAX_HEADER_BYTES]
    end = re.search(rb"\r?\n\r?\n", head)
    return mime.headers(head[:end.start() if end else len(head)].decode("utf-8", "replace"))


def auto_reply_rule(h: dict[str, str]) -> str:
    """The RFC 3834 (and common non-standard) signal that a message was sent by a machine, or ''."""
    auto = h.get("auto-submitted", "").split(";", 1)[0].strip().lower()
    if auto and auto != "no":
        return f"auto-submitted: {auto}"
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder"):
        if h.get(name, "").strip().lower() not in ("", "no", "false"):
            return name
    if h.get("precedence", "").strip().lower() == "auto_reply":
        return "precedence: auto_reply"
    if _VACATION.search(h.get("subject", "")):
        return "vacation subject"
    return ""


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def dsn_report(report: dsn.Report) -> dict[str, Any]:
    return {"type": "bounce", "standard": report.standard, "bounces": [dataclasses.asdict(b) for b in report.bounces],
            "verp": _plain(report.verp), "message_id": report.message_id.strip("<>"), "reporting_mta": report.reporting_mta}


def arf_report(c: arf.Complaint) -> dict[str, Any]:
    out = {"type": "complaint", **dataclasses.asdict(c)}
    out["message_id"] = c.message_id.strip("<>")
    return out


def _is_bounce(report: dsn.Report) -> bool:
    return report.standard or any(b.reason not in ("not a bounce",) for b in report.bounces)


def classify(raw: bytes, *, target: str = "", envelope_to: str = "", mail_from: str = "", has_parent: bool = False,
             headers: dict[str, str] | None = None) -> Classification:
    h = headers if headers is not None else top_headers(raw)
    ctype = h.get("content-type", "").lower()
    if "multipart/report" in ctype or target in (RETURN_PATH, FEEDBACK):
        complaint = arf.parse(raw, envelope_to)
        if complaint is not None:
            return Classification("arf", "feedback-report", arf_report(complaint))
    auto = auto_reply_rule(h)
    may_bounce = target == RETURN_PATH or "multipart/report" in ctype or mail_from in ("", "<>")
    if may_bounce:
        report = dsn.parse(raw, envelope_to)
        if report.standard:
            return Classification("dsn", "delivery-status report", dsn_report(report))
        # Bounces often say Auto-Submitted too (RFC 3464 asks for it): the bounce heuristics, which
        # know an out-of-office from a failure, decide first; at a return path anything else is a
        # report nobody recognised (recorded, never acted on) unless it is an auto-reply.
        if _is_bounce(report):
            return Classification("dsn", "bounce text", dsn_report(report))
        if not auto and target == RETURN_PATH:
            return Classification("dsn", "return path", dsn_report(report))
    if auto:
        return Classification("auto_reply", auto)
    if target == UNSUBSCRIBE:
        token = mailto.token_in(h.get("subject", ""), envelope_to)
        if token:
            return Classification("unsubscribe", "mailto token", token=token)
    if has_parent:
        return Classification("reply", "known parent")
    return Classification("message", "none")
