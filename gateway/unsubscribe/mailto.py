"""The mailto: form of an unsubscribe (RFC 2369): a mail to ``unsubscribe@<mailto domain>`` whose
subject carries the token (``unsubscribe TOKEN``, as the List-Unsubscribe URI fills it in).

Pure: the inbound processor hands over the envelope recipient and the Subject it received; ``request``
says whether it is an unsubscribe request and which token it carries. The token is the authority, as
with the link: the sender's address is not trusted (it is easy to forge and often a forwarder's).
The reply-quoting prefixes clients add ("Re:", "AW:", "[External]") are ignored.

Hooked up by the inbound processor (gateway/inbound/processor.py): the MX accepts ``unsubscribe@``
of a return-path (or the configured mailto) domain, the classifier finds the token here, and the
daemon's hook applies it with source 'mailto' (``Unsubscriber.apply_token``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LOCAL_PART = "unsubscribe"
_TOKEN = re.compile(r"(?i)\bunsubscribe\s+([A-Za-z0-9_-]{20,512})(?![A-Za-z0-9_-])")


def is_request_address(rcpt: str, domains: Sequence[str]) -> bool:
    """True for ``unsubscribe@D`` (or ``unsubscribe+anything@D``) with D one of ``domains``."""
    local, at, domain = rcpt.strip().strip("<>").rpartition("@")
    base = local.split("+", 1)[0].lower()
    return bool(at) and base == LOCAL_PART and domain.lower().rstrip(".") in {d.lower() for d in domains}


def token_in(subject: str, rcpt: str = "") -> str | None:
    """The token of an unsubscribe request: from the subject, else from ``unsubscribe+TOKEN@`` in the
    recipient (a form some senders use). None when there is none."""
    found = _TOKEN.search(" ".join(subject.split()))
    if found:
        return found.group(1)
    local = rcpt.strip().strip("<>").rpartition("@")[0]
    base, plus, tag = local.partition("+")
    if plus and base.lower() == LOCAL_PART and re.fullmatch(r"[A-Za-z0-9_-]{20,512}", tag):
        return tag
    return None
