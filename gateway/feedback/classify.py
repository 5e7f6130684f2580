"""Bounce classification: a remote's answer -> one class and the rule that chose it.

Classes (what the sender should do about the address):

    hard     the address does not exist and never will (5.1.1, 5.1.10, 5.1.2, 5.1.6, "user unknown"):
             suppress it for the whole tenant
    soft     a temporary condition of the mailbox or the path (4.x.x, mailbox full 4.2.2/5.2.2,
             greylisting, temporary DNS, timeouts): retry; N of them within M days suppress for a while
    block    policy or reputation (5.7.x, DNSBL, spam content, authentication): the sender must act,
             the address is fine, so it is never suppressed
    quota    the sender is over a quota the receiver or relay keeps (daily sending quota)
    rate     the sender is throttled (too many messages or connections, too fast)
    unknown  nothing recognised: recorded, never acted on

Order of the decision (each rule is a row of a table below; the first that matches wins and its
name is the ``reason``):

    1. well-known phrasings that mean something other than their status code says (Microsoft's
       "5.4.1 Recipient address rejected: Access denied" is a missing mailbox, not a routing fault)
    2. the enhanced status code (RFC 3463), when it is specific; generic ones (x.0.0, x.7.0, x.5.0...)
       say too little and pass on
    3. the basic reply code, when it is specific (551, 553: hard; 552: soft)
    4. the text: phrasings of Gmail, Microsoft 365/Outlook/Exchange, Yahoo/AOL, Exim, Postfix, qmail,
       Sendmail, Amazon SES and other common receivers
    5. the basic code's class (4xx: soft; 5xx: unknown)

A temporary failure (4xx, or a 4.x.x status) is never hard: "4.1.1 user unknown" is soft.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import phrases

HARD, SOFT, BLOCK, QUOTA, RATE, UNKNOWN = "hard", "soft", "block", "quota", "rate", "unknown"
CLASSES = (HARD, SOFT, BLOCK, QUOTA, RATE, UNKNOWN)

# The lookbehind comes after the first digit so that the search starts with a character set, which
# the regex engine scans for quickly (a pattern starting with a lookbehind is tried at every position).
_STATUS = re.compile(r"([245])(?<![\d.].)\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_CODE = re.compile(r"^\s*([245]\d\d)(?:[ -]|$)")


@dataclass(frozen=True)
class Verdict:
    kind: str     # one of CLASSES
    reason: str   # which rule fired, e.g. 'status 5.1.1' or 'text: mailbox full'


# 1. Phrasings that override the status code they come with. (class, name, pattern)
_OVERRIDES: list[tuple[str, str, str]] = [
    (HARD, "microsoft: recipient access denied (directory-based edge blocking)", r"5\.4\.1 .{0,40}recipient address rejected: access denied"),
    (HARD, "microsoft: recipient not found", r"resolver\.adr\.recip(?:ient)?notfound|recipientnotfound"),
    (BLOCK, "microsoft: sender blocked", r"(?:5\.7\.(?:1|606|708|750|511)|s3150|banned sender|block list|blocklist)[^\n]{0,80}(?:block|ban)"),
    (RATE, "yahoo: deferred for volume or complaints", r"\[ts0[1-4]\]|\btss0[1-4]\b|temporarily deferred due to unexpected volume"),
    (BLOCK, "yahoo: not accepted for policy reasons", r"not accepted for policy reasons|\[ts0[5-9]\]"),
    (HARD, "yahoo: no such account", r"(?:doesn't|does not) have a (?:yahoo|aol|ymail)[\w.]* account"),
    (RATE, "gmail: receiving mail too fast", r"receiving mail (?:at a rate|too quickly)|4\.2\.1 .{0,40}rate that"),
    (QUOTA, "amazon ses: daily quota", r"daily (?:message|sending) quota exceeded"),
    (QUOTA, "sending quota", r"(?:sending|message|daily|hourly|account) (?:quota|limit) (?:exceeded|reached)|exceeded (?:the |your )?(?:daily |hourly )?sending (?:quota|limit)|quota of messages|sending quota"),
    (RATE, "amazon ses: sending rate", r"maximum sending rate exceeded|throttling failure"),
    (SOFT, "dns: temporary failure", r"not found, try again"),
    (SOFT, "mailbox full", r"mailbox (?:is )?full|over ?quota|quota exceeded|exceeded (?:the )?storage|insufficient (?:system )?storage|mailbox size limit|"
                           r"disk quota|mail ?folder is full|full mailbox|(?:exceed\w*|over|reached) (?:\w+ ){0,2}quota|quota violation|"
                           r"mailbox space not enough"),
]

# 2. Enhanced status codes: exact 'class.subject.detail' first, then 'subject.detail' for either class.
_EXACT: dict[str, str] = {
    "5.1.1": HARD, "5.1.10": HARD, "5.1.2": HARD, "5.1.3": HARD, "5.1.6": HARD, "5.2.1": HARD, "5.1.0": HARD,
    "5.4.4": HARD,
    "4.2.1": RATE, "4.7.28": RATE, "4.7.650": RATE, "4.7.500": RATE, "4.4.5": SOFT, "4.5.3": RATE, "5.5.3": RATE,
    "4.7.26": BLOCK, "4.7.27": BLOCK, "4.7.25": BLOCK, "4.7.24": BLOCK, "4.7.23": BLOCK, "4.7.32": BLOCK,
}
_DETAIL: dict[str, str] = {
    "2.2": SOFT, "4.1": SOFT, "4.2": SOFT, "4.3": SOFT, "4.7": SOFT, "3.1": SOFT, "3.2": SOFT, "4.6": SOFT,
    "2.3": BLOCK, "3.4": BLOCK, "6.0": BLOCK, "6.1": BLOCK, "6.3": BLOCK,
}
_GENERIC = {"0.0", "1.0", "2.0", "3.0", "4.0", "5.0", "5.1", "5.2", "5.4", "7.0", "7.1", "2.4", "3.5", "5.5"}

# 3. Basic codes that say enough by themselves.
_BASIC = {551: HARD, 553: HARD, 552: SOFT}

# 4. The text. Order matters: the first match wins (hard before block: "no such user" beats a
# generic "rejected"; quota and rate before soft: "try again later" comes with throttling too).
_TEXT: list[tuple[str, str, str]] = [
    (BLOCK, "sender or client rejected", r"sender (?:address )?(?:rejected|refused|denied)|sender verify failed|client host (?:\[[^\]]*\] )?rejected|"
                                        r"helo command rejected|sender domain|from address"),
    (RATE, "rate limited", r"rate limit|too many (?:messages|connections|emails|mails|recipients|concurrent)|too fast|"
                           r"throttl|slow down|sending rate|try again (?:in|after) \d+ (?:minutes|seconds)|server busy|"
                           r"connection rate|unusual rate|excessive (?:volume|traffic)"),
    (HARD, "user unknown", r"user(?:name)? (?:is )?unknown|unknown (?:user|recipient|mailbox|local ?part|address)|"
                           r"no such (?:user|mailbox|recipient|address|person|account)|"
                           r"(?:user|mailbox|recipient|address|account|e-?mail address)(?: \S+)? (?:does not|doesn't|did not) exist|"
                           r"(?:recipient|user|mailbox|address) not (?:found|listed|known)|not a valid (?:recipient|mailbox|user)|"
                           r"invalid (?:\w+ ){0,2}(?:recipient|mailbox|address|user)|(?:doesn't|does not) have an? [\w.-]+ account|"
                           r"(?:recipient|user|mailbox|address)(?: name)? (?:is )?not recognized|could not find a (?:gateway|route) for|"
                           r"does not have a final (?:e-?mail )?delivery point|did not (?:exactly )?match an? [\w ]{0,30}address|n'existe pas|existiert nicht|no existe|"
                           r"unrouteable address|no mailbox here by that name|"
                           r"mailbox (?:not found|unavailable|does not exist)|address (?:couldn't|could not|cannot) be found|"
                           r"(?:account|mailbox) (?:has been |is )?(?:disabled|deactivated|closed|discontinued|terminated|suspended)|"
                           r"user not local|bad destination mailbox|no longer (?:active|in use|valid|available)|"
                           r"address rejected|recipient rejected|not our customer|unknown or illegal alias|"
                           r"does not like recipient|no valid recipients|undeliverable address|couldn't be found|"
                           r"unable to deliver to (?:the )?recipient|not listed in (?:the )?(?:domino )?directory|"
                           r"host (?:or domain name )?not found|domain (?:does not|doesn't) exist|nxdomain|no mx (?:record|host)|"
                           r"name service error.{0,40}host not found|all relevant mx records point to non-existent hosts"),
    (BLOCK, "spam or reputation", r"\bspam|blacklist|blocklist|block list|black list|blocked|dnsbl|\brbl\b|spamhaus|spamcop|"
                                  r"barracuda|reputation|junk|phish|virus|malware|listed (?:at|in|on)|banned|"
                                  r"policy|not (?:authorized|permitted|allowed)|relay(?:ing)? (?:access )?(?:denied|not permitted)|"
                                  r"access denied|unable to relay|not accepting mail from|maximum (?:\w+ )?message size|\bspf\b|\bdkim\b|\bdmarc\b|authentication (?:required|failed)|unauthenticated|"
                                  r"content rejected|message (?:rejected|refused)|refused to accept|prohibit|"
                                  r"(?:message|mail) (?:size )?(?:too (?:big|large)|exceeds)|size limit|reverse dns|ptr record"),
    (SOFT, "temporary condition", r"greylist|\bloop|not (?:been )?collected|too many hops|failed \d+ attempts|delivery attempts|not responding|not reachable|graylist|try (?:again )?later|temporar|deferred|timed? ?out|timeout|"
                                  r"connection (?:refused|reset|closed|lost)|resources|busy|retry|"
                                  r"dns (?:lookup )?(?:failure|error|timeout)|servfail|lookup failed|"
                                  r"delivery (?:time|attempts?) (?:expired|exceeded)|gave up|expired|"
                                  r"service (?:not available|unavailable)|not available|unavailable|retry timeout"),
]

# Matched against the lower-cased text (cheaper than re.I on every search), each table compiled once
# with a literal prefilter (gateway/feedback/phrases.py: the same answers as each row's re.search in turn).
_OVERRIDE_TABLE = phrases.Table(_OVERRIDES)
_TEXT_TABLE = phrases.Table(_TEXT)


def status_in(text: str) -> str:
    """The first RFC 3463 status code in ``text`` ('5.1.1' from "... (#5.1.1)"), or ''."""
    m = _STATUS.search(text)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else ""


def code_in(text: str) -> int:
    """The basic reply code a line starts with (550 from '550-5.1.1 ...'), or 0."""
    m = _CODE.match(text)
    return int(m.group(1)) if m else 0


def _temporary(kind: str, temporary: bool) -> str:
    return SOFT if temporary and kind == HARD else kind


def classify(code: int = 0, enhanced: str = "", text: str = "") -> Verdict:
    """The class of one answer. ``code`` 0 and ``enhanced`` '' are looked for in ``text``."""
    if not enhanced or enhanced.partition(".")[2] in _GENERIC:
        enhanced = status_in(text) or enhanced   # a DSN's generic Status, the diagnostic's specific one
    if not code:
        code = code_in(text)
    temporary = (400 <= code < 500) or enhanced.startswith("4")
    text = text.lower()
    with_status = f"{enhanced} {text}" if enhanced else text
    found = _OVERRIDE_TABLE.first(with_status)
    if found is not None:
        return Verdict(_temporary(found[0], temporary), f"text: {found[1]}")
    if enhanced and not enhanced.startswith("2"):
        detail = enhanced.partition(".")[2]
        kind = _EXACT.get(enhanced)
        if kind is None and detail not in _GENERIC:
            kind = _DETAIL.get(detail)
            if kind is None and detail.startswith("7."):
                kind = BLOCK   # 5.7.x and 4.7.x: security or policy
        if kind is not None:
            return Verdict(_temporary(kind, temporary), f"status {enhanced}")
    if code in _BASIC and not enhanced[1:].startswith(".7."):   # 553 5.7.1 is a policy refusal
        return Verdict(_temporary(_BASIC[code], temporary), f"code {code}")
    found = _TEXT_TABLE.first(text)
    if found is not None:
        return Verdict(_temporary(found[0], temporary), f"text: {found[1]}")
    if enhanced.startswith("5.7"):
        return Verdict(BLOCK, f"status {enhanced}")
    if temporary:
        return Verdict(SOFT, f"code {code}" if code else f"status {enhanced}")
    return Verdict(UNKNOWN, "nothing recognised")
