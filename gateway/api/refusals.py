"""What a submission refusal means over HTTP: the one table from SMTP replies to problem types.

The send endpoint calls the same checks as the submission listener (gateway/submission/submit.py),
which refuse with an ``SMTPError``. This table turns one into the API's answer: a status, a stable
problem slug (``urn:gateway:problem:<slug>``) and the SMTP reply itself in the problem's ``smtp``,
so a client sees the same refusal whichever door it used. Rows are matched in order on the
enhanced status code and, where one code has several meanings, the start of the public text.

    enhanced  text starts with            status  slug
    5.7.1     Recipient suppressed        422     recipient-suppressed
    5.7.1     Sending domain is not ver.  422     domain-not-verified
    5.7.1     Outbound mail is disabled   422     outbound-disabled
    5.7.1     Sending is disabled         422     sending-disabled        (use case or tenant off)
    5.7.1     This login is no longer     422     usecase-not-found       (the use case is gone)
    5.7.1     (other)                     422     sender-not-allowed      (MAIL FROM / From header)
    4.7.0     Rate limit                  429     rate-limited            (+ Retry-After)
    4.5.3     Monthly message quota       429     quota-exceeded          (+ Retry-After: next month)
    4.5.3     (other)                     422     too-many-recipients
    5.3.4                                 413     message-too-large
    4.3.1                                 503     insufficient-resources  (+ Retry-After; memory or disk)
    5.6.7                                 422     smtputf8-required
    5.1.7                                 422     sender-invalid
    5.1.3                                 422     recipient-invalid
    5.4.6                                 422     mail-loop
    5.6.0                                 422     message-invalid         (bare CR/LF, NUL, header fields)
    5.x.x / 4.x.x (any other)             422 / 503  message-refused / try-later
"""

from __future__ import annotations

import calendar
import time

from ..errors import SMTPError
from .problems import ApiProblem

# (enhanced code, public text prefix or '' for any, status, slug, title)
TABLE: tuple[tuple[str, str, int, str, str], ...] = (
    ("5.7.1", "Recipient suppressed", 422, "recipient-suppressed", "The recipient is on the suppression list"),
    ("5.7.1", "Sending domain is not verified", 422, "domain-not-verified", "The sending domain is not verified"),
    ("5.7.1", "Outbound mail is disabled", 422, "outbound-disabled", "The tenant's outbound mail is switched off"),
    ("5.7.1", "Sending is disabled", 422, "sending-disabled", "Sending is disabled for this use case or tenant"),
    ("5.7.1", "This login is no longer valid", 422, "usecase-not-found", "No such use case"),
    ("5.7.1", "", 422, "sender-not-allowed", "The sender is not allowed for this use case"),
    ("4.7.0", "", 429, "rate-limited", "The use case's rate limit is spent"),
    ("4.5.3", "Monthly message quota", 429, "quota-exceeded", "The tenant's monthly quota is spent"),
    ("4.5.3", "", 422, "too-many-recipients", "Too many recipients"),
    ("5.3.4", "", 413, "message-too-large", "The message is too large"),
    ("4.3.1", "", 503, "insufficient-resources", "The gateway has no room for the message now"),
    ("5.6.7", "", 422, "smtputf8-required", "A non-ASCII address needs SMTPUTF8"),
    ("5.1.7", "", 422, "sender-invalid", "The sender address is not valid"),
    ("5.1.3", "", 422, "recipient-invalid", "A recipient address is not valid"),
    ("5.4.6", "", 422, "mail-loop", "Too many Received header fields: a mail loop"),
    ("5.6.0", "", 422, "message-invalid", "The message is not valid"),
)
RATE_RETRY = 60        # seconds: a use case's rate limit is per minute (submission/ratelimit.py)
RESOURCES_RETRY = 30


def slug_of(err: SMTPError) -> tuple[int, str, str]:
    """(status, slug, title) of a refusal."""
    for enhanced, prefix, status, slug, title in TABLE:
        if err.enhanced == enhanced and err.public.startswith(prefix):
            return status, slug, title
    if err.permanent:
        return 422, "message-refused", "The message was refused"
    return 503, "try-later", "The message cannot be taken now"


def _next_month(now: float) -> float:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) - now


def problem(err: SMTPError, field: str | None = None, detail: str | None = None) -> ApiProblem:
    """The problem the refusal ``err`` is over HTTP; ``field`` names the request part at fault."""
    status, slug, title = slug_of(err)
    retry = None
    if status == 429:
        retry = _next_month(time.time()) if slug == "quota-exceeded" else RATE_RETRY
    elif status == 503:
        retry = RESOURCES_RETRY
    return ApiProblem(status, slug, title, detail or err.public, field=field, smtp=err.reply, retry_after=retry)
