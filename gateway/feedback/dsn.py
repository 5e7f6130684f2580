"""Bounce messages -> the failed recipients, each classified.

    parse(raw, envelope_to="") -> Report(bounces, verp, message_id, reporting_mta, standard)

RFC 3464 first: a ``message/delivery-status`` part gives one group per recipient (Final-Recipient,
Original-Recipient, Action, Status, Diagnostic-Code, Remote-MTA); groups whose Action is not
``failed`` or ``delayed`` (delivered, relayed, expanded) are not bounces and are left out. The
recipient is the Original-Recipient when it is an Internet address (the address that was sent to),
else the Final-Recipient (which a receiver may have rewritten: an alias, an X.400 name). A report
wrapped in a relay's message/rfc822 is unwrapped once. The
Status is the receiver's verdict; a generic one (5.0.0) yields to the specific status in the
Diagnostic-Code, and the text decides where neither is specific (gateway/feedback/classify.py).

Anything else is a non-standard bounce (qmail, old Exim and Sendmail, Exchange, Domino, Yahoo's
text replies...): the human-readable text (an HTML part's, tags removed, when there is no plain one)
before the returned message is searched for the failed address and for the reason (the first line
carrying an SMTP reply code, else the paragraph after the address, else the whole text); a delay
warning is never hard. The failed address is, in this order: X-Failed-Recipients; the first entry of
the list that "the following recipients:" and the like introduce; the first address after such a
marker; the first address at all. None may be the bounce's own sender or destination or a system
mailbox; outside the list, not its Delivered-To or X-Original-To either (a listed address may be:
some reporters copy the original message's headers into the report). A list entry that is a bare
local part ("userx    No matches to nameserver query") is qualified with the returned message's
recipient of that local part, else with the organisational domain of the system mailbox that sent
the report (MAILER-DAEMON@mr2.its.yale.edu -> userx@yale.edu), and marked ``local_only``: the
suppression service then matches it to the VERP-tagged recipient by local part. No address found
-> one Bounce of kind 'unknown' with recipient '': recorded, never acted on.

The VERP tag (gateway/verp.py) comes from the envelope recipient the MX saw when the caller gives
it, else from the bounce's To, Delivered-To or X-Original-To, else from the returned message's
Return-Path: it names the queued message and recipient even when the body names nobody.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from email.errors import MessageError
from email.header import decode_header, make_header
from itertools import chain

from ..inbound.dmarc import organizational_domain
from ..verp import SEPARATOR as VERP_SEPARATOR, VerpTag, decode as verp_decode
from . import mime, phrases
from .classify import HARD, SOFT, UNKNOWN, Verdict, classify, code_in, status_in

# What an address is (the definition _addresses implements without this pattern's quadratic search;
# tests/test_bounce_phrases.py checks that both find the same).
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
# An address's last local character, its '@' and its domain: where an address ends (_addresses walks
# back over the rest of the local part).
_AT_DOMAIN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
_LOCAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+/=?^_`{|}~-")
# Patterns below start with a literal or a character set where they can: the regex engine then scans
# for it quickly, where a leading lookbehind, ^ under re.M, or re.I makes it try every position (each
# of these cost two to five times as much; scripts/score_bounces.py measures the whole).
_REPLY_LINE = re.compile(r"[45#](?:(?<=[45])(?<![\d.].)\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3})?|(?<=#)[45]\.\d{1,3}\.\d{1,3})")
# Where the returned copy of the message begins in a plain-text bounce (searched in "\n" + the
# lower-cased text, so that a line start is a literal \n).
_CUT = re.compile(r"\n(?:-{2,}.*(?:original message|copy of (?:the|your) message|message follows|returned message|"
                  r"below this line|undelivered message|message headers)|original message headers:|below is a copy|"
                  r"received: from |return-path: )")
_SYSTEM_LOCALS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "noreply", "no-reply", "root", "mdaemon"}
# A plain-text message is read as a bounce only when it says it is one (an out-of-office reply is not).
_BOUNCE_SUBJECT = re.compile(r"undeliver|deliver(?:y|ed)|failure|failed|returned|rejected|bounce|non-?delivery|error|notice", re.I)
# A body that says it reports a failed delivery (some bounces come from personal-looking senders
# with subjects in other languages; an out-of-office reply does not talk like this).
_BOUNCE_TEXT = re.compile(r"could not be delivered|was not delivered|undeliverable|unable to deliver|not able to deliver|"
                          r"delivery to the following recipients? (?:has )?failed|did not reach the following")
# Where the failed addresses are listed: the first address after one of these is the likeliest
# (the text before them often quotes the original To, a list address).
_LIST_MARK = re.compile(r"following (?:recipients?|address(?:es|\(es\))?|users?)|the following:|did not reach|(?:delivered|deliver) to:?\s*$|"
                        r"undeliverable address|addressed(?: to|,)|intended recipient", re.M)
# The list itself: the first non-blank line after the colon that ends the marker's sentence.
_LIST_COLON = re.compile(r":[ \t]*\n")
_LIST_ENTRY = re.compile(r"(?:[ \t]*\n)*[ \t]*([^\n]*)")
# An entry that is a bare local part ("userx    No matches to nameserver query"): the word alone on
# its line, or set off from the reason by a tab or two spaces (a sentence has single spaces).
_BARE_ENTRY = re.compile(r"([A-Za-z0-9][A-Za-z0-9._+-]{0,63})(?:[ \t]*$|\t|  )")
# A delay warning: whatever it says, the message is still being retried, so nothing in it is hard.
_WARNING = phrases.Table([(SOFT, "delay warning",
                           r"warning message only|(?:just|only) a warning|warning: message|has not yet been delivered|not yet delivered|"
                           r"will continue (?:to )?(?:try|attempt)|will be retried|delivery attempts will continue|postponed|delayed")])
# (_BOUNCE_TEXT, _LIST_MARK and _WARNING are searched in lower-cased text: re.I costs more than lower())
_SMTP_PREFIX = re.compile(r"^(?:smtp|rfc-?822)[=:]", re.I)   # Exchange's 'dda:SMTP=user@example.com'
_TAG = re.compile(r"<[^>]*>")
MAX_TEXT = 64 * 1024
MAX_REASON_TEXT = 4000   # how much of a bounce's text is searched for a reason when no reply line gives one   # a bounce's human-readable part longer than this is read only this far


@dataclass(frozen=True)
class Bounce:
    recipient: str            # the failed address ('' when none was found)
    kind: str                 # hard | soft | block | quota | rate | unknown
    reason: str               # the classifier rule that fired
    status: str = ""          # RFC 3463 status (DSN Status, or found in the text)
    diagnostic: str = ""      # the remote's words (Diagnostic-Code or the heuristic's line)
    action: str = ""          # failed | delayed ('' for a non-standard bounce)
    original_recipient: str = ""
    remote: str = ""          # Remote-MTA
    local_only: bool = False  # the report named only the local part: the domain is inferred (_qualify)


@dataclass(frozen=True)
class Report:
    bounces: list[Bounce]
    standard: bool                       # an RFC 3464 delivery-status part was found
    verp: VerpTag | None = None
    message_id: str = ""                 # of the returned message, when it came back
    reporting_mta: str = ""
    notes: list[str] = field(default_factory=list)


def _value(field_value: str | None) -> str:
    """'rfc822; bob@example.org' -> 'bob@example.org'; 'dns; mx.example.org' -> 'mx.example.org'."""
    if not field_value:
        return ""
    v = " ".join(str(field_value).split())
    typ, sep, rest = v.partition(";")
    return (rest if sep else typ).strip().strip("<>").strip()


def _rfc822(field_value: str | None) -> str:
    """The address of a recipient field when it is an Internet address ('' for x400 and the like)."""
    v = _value(field_value)
    typ = (field_value or "").partition(";")[0].strip().lower()
    if ";" in (field_value or "") and typ not in ("rfc822", "rfc-822", "smtp"):
        return ""
    return v if "@" in v else ""


def normalise(address: str) -> str:
    """An address as the feedback path compares it: trimmed, brackets off, domain lower-cased."""
    address = address.strip().strip("<>'\"").strip().rstrip(".")
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def _addresses(text: str, pos: int = 0):
    """(address, start, end) of each address in ``text`` from ``pos``, as _ADDRESS.finditer finds them,
    found from their '@' outward: _ADDRESS, which starts with the local part's character set, is tried
    at nearly every position and walks every run of local characters again from each of its positions
    (quadratic: 500,000 letters before an '@' took 40 s); _AT_DOMAIN tries two characters a position."""
    floor, search = pos, _AT_DOMAIN.search
    m = search(text, pos)
    while m:
        i = m.start()
        while i > floor and text[i - 1] in _LOCAL_CHARS:   # '@' is not one, so each character is walked once
            i -= 1
        yield text[i:m.end()], i, m.end()
        floor = m.end()
        m = search(text, floor)


def addresses(text: str) -> list[str]:
    """Every address in ``text`` (a header value, a list), in order."""
    return [a for a, _, _ in _addresses(text)] if "@" in text else []


def first_address(text: str) -> str:
    """The first address in ``text``, or ''."""
    for a, _, _ in _addresses(text):
        return a
    return ""


def _lower(text: str) -> str:
    """Lower-cased with every index unchanged (str.lower() lengthens a few characters, such as 'İ')."""
    low = text.lower()
    return low if len(low) == len(text) else text.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _walk(msg: mime.Part) -> tuple[mime.Part | None, list[str], dict[str, str] | None]:
    """(the delivery-status part, the human-readable texts, the returned message's headers)."""
    status, texts, html, returned, unwrapped = None, [], [], None, False
    stack = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.content_type
        if ctype == "message/delivery-status" and status is None:
            status = part
        elif ctype == "message/rfc822" and not unwrapped and part.parts and part.parts[0].content_type == "multipart/report":
            # A forwarded bounce (a relay wrapped the report in a message of its own): read the report
            # inside, once (mime.parse reads a message/rfc822 only to its headers).
            unwrapped = True
            stack.insert(0, mime.parse(part.decoded()[:mime.MAX_BYTES], depth=mime.MAX_DEPTH // 2))
        elif ctype == "message/rfc822" and returned is None:
            returned = part.parts[0].headers if part.parts else {}
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers") and returned is None:
            returned = mime.headers(part.text())
        elif part.parts:
            stack[0:0] = part.parts
        elif ctype == "text/html":
            html.append(part.text()[:MAX_TEXT])
        elif ctype.startswith("text/"):
            texts.append(part.text()[:MAX_TEXT])
    # An HTML-only bounce (Exchange 5.5, some webmail MTAs): its text with the tags taken out.
    return status, texts or [_TAG.sub(" ", h).replace("&nbsp;", " ") for h in html], returned


def _standard(status: mime.Part) -> tuple[list[Bounce], str]:
    groups = mime.header_blocks(status.decoded())
    mta = _value(groups[0].get("reporting-mta")) if groups else ""
    out = []
    for g in groups:
        final, original = _rfc822(g.get("final-recipient")), _rfc822(g.get("original-recipient"))
        if not final and not original:
            continue
        action = (g.get("action") or "").strip().lower()
        if action and action not in ("failed", "delayed"):
            continue
        st = (g.get("status") or "").strip().split(" ")[0]
        diag = " ".join((g.get("diagnostic-code") or "").split())
        typ, sep, rest = diag.partition(";")
        diag_text = rest.strip() if sep and " " not in typ.strip() else diag
        code = code_in(diag_text)
        if action == "delayed" and st.startswith("5"):
            st = "4" + st[1:]
        # The Status comment ("5.0.0 (recipient reached disk quota)") and X.400 gateways' supplementary
        # info carry the reason when the Diagnostic-Code does not.
        words = " ".join(x for x in (diag_text, (g.get("status") or "").strip()[len(st):], g.get("x400-supplementary-info") or "") if x)
        v = classify(code if action != "delayed" or code < 500 else 0, st, words)
        # The original recipient is the address the sender used (and suppresses); the final one may be
        # an internal rewrite (userx@sims-ms-daemon, a mailbox alias) or an X.400 name.
        out.append(Bounce(recipient=normalise(original or final), kind=v.kind, reason=v.reason, status=st, diagnostic=diag_text,
                          action=action or "failed", original_recipient=normalise(original) if original else "",
                          remote=_value(g.get("remote-mta"))))
    return out, mta


# The bounce's own two ends (its sender and where it was sent), and where a local MTA delivered it.
_ENDS = ("from", "to", "sender", "return-path", "reply-to", "errors-to")
_DELIVERY = ("delivered-to", "x-original-to")


def _own_addresses(msg: mime.Part, names: tuple[str, ...] = _ENDS + _DELIVERY) -> set[str]:
    own = set()
    for h in names:
        value = msg.get(h)
        if "@" in value:
            own.update(a.lower() for a in addresses(value))
    return own


def _list_entry(text: str, mark_start: int) -> tuple[str, int] | None:
    """The first entry of the list a marker introduces ("... to the following recipients:" then one
    entry a line), as (entry line, its position); None when the marker ends no sentence with a colon."""
    colon = _LIST_COLON.search(text, mark_start, mark_start + 300)
    if colon is None or "\n\n" in text[mark_start:colon.start()]:
        return None
    m = _LIST_ENTRY.match(text, colon.end())
    return (m.group(1), m.start(1)) if m and m.group(1) else None


def _qualify(local: str, msg: mime.Part, returned: dict[str, str] | None) -> str:
    """A bare local part a report lists as failed -> an address, or '' when no domain can be inferred:
    the returned message's recipient of that local part (To, Cc, X-Original-To, Delivered-To: what was
    sent to), else the organisational domain of the system mailbox that sent the report (an MTA
    that names a bare local part names one of its own users: MAILER-DAEMON@mr2.its.yale.edu reports
    userx of yale.edu)."""
    want = local.lower()
    for h in ("to", "cc", "x-original-to", "delivered-to"):
        for a in addresses((returned or {}).get(h, "")):
            if a.rpartition("@")[0].lower() == want:
                return a
    sender = first_address(msg.get("from"))
    if not sender:
        return ""
    sender_local, _, domain = sender.rpartition("@")
    if sender_local.lower() not in _SYSTEM_LOCALS:
        return ""   # a person's or an application's report: its domain says nothing of the recipient's
    return f"{local}@{organizational_domain(domain)}"


def _reason_near(text: str, start: int) -> str:
    """The remote's words for the address found at ``start``: the first reply line after it (or before it,
    for MTAs that print the reason first), else the paragraph that follows it."""
    after = text[start:]
    m = _REPLY_LINE.search(after)
    if m and m.start() < 2000:
        line_start = after.rfind("\n", 0, m.start()) + 1
        end = after.find("\n\n", m.start())
        return " ".join(after[line_start:end if end != -1 else m.start() + 500][:600].split())
    m = _REPLY_LINE.search(text)
    if m:
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.start())
        return " ".join(text[line_start:line_end if line_end != -1 else None].split())
    para_end = after.find("\n\n", after.find("\n") + 1)
    return " ".join(after[:para_end if para_end != -1 else 600][:600].split())


def mime_subject(value: str) -> str:
    """A Subject with its RFC 2047 encoded words decoded (best effort: a broken one stays as it is)."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError, MessageError):   # HeaderParseError, CharsetError...
        return value


def _looks_like_bounce(msg: mime.Part, low: str) -> bool:
    sender = first_address(msg.get("from"))
    if sender and sender.partition("@")[0].lower() in _SYSTEM_LOCALS:
        return True
    if msg.get("x-failed-recipients"):
        return True
    subject = mime_subject(msg.get("subject"))
    return bool(_BOUNCE_SUBJECT.search(subject) or _BOUNCE_TEXT.search(low)) and not msg.get("x-autoreply") and \
        not subject.lower().startswith(("automatic reply", "auto:", "out of office", "autoreply", "auto reply"))


def _warning(msg: mime.Part, low: str) -> bool:
    return _WARNING.first(mime_subject(msg.get("subject")).lower()) is not None or _WARNING.first(low[:2000]) is not None


def _heuristic(msg: mime.Part, texts: list[str], returned: dict[str, str] | None = None) -> Bounce:
    text = "\n".join(t.replace("\r\n", "\n") for t in texts)
    low = _lower(text)
    cut = _CUT.search("\n" + low)
    if cut:
        text, low = text[:cut.start()], low[:cut.start()]
    if not _looks_like_bounce(msg, low):
        return Bounce(recipient="", kind=UNKNOWN, reason="not a bounce", diagnostic=" ".join(text.split())[:300])
    own = _own_addresses(msg)
    failed = addresses(msg.get("x-failed-recipients"))
    mark = _LIST_MARK.search(low)
    entry = _list_entry(text, mark.start()) if mark else None
    # Lazily: the first candidate that is not our own address usually ends the search. Each is
    # (address, where its reason is looked for, listed as failed, only a local part was named).
    candidates = chain(((a, text.find(a), True, False) for a in failed),
                       _entry_candidates(entry, msg, returned),
                       ((a, end, False, False) for a, _, end in (_addresses(text, mark.end()) if mark else ())),
                       ((a, end, False, False) for a, _, end in _addresses(text)))
    listed_own = None
    for address, at, listed, local_only in candidates:
        address = _SMTP_PREFIX.sub("", address.rstrip("."))
        if address.partition("@")[0].lower() in _SYSTEM_LOCALS:
            continue
        if listed:
            # An address the report lists as failed is taken even when it is also the bounce's
            # Delivered-To or X-Original-To: a local MTA adds those for the bounce mailbox, but some
            # reporters (Microsoft CDO) copy the original message's headers into the report instead.
            # The bounce's own sender and destination never are, nor a return path of ours (a VERP tag).
            listed_own = listed_own if listed_own is not None else _own_addresses(msg, _ENDS)
            if address.lower() in listed_own or verp_decode(address) is not None:
                continue
        elif address.lower() in own:
            continue
        reason = _reason_near(text, max(at, 0))
        v = classify(0, "", reason)
        if v.kind == UNKNOWN:
            v = classify(0, "", text[:MAX_REASON_TEXT])
        if v.kind in (HARD, UNKNOWN) and _warning(msg, low):
            v = Verdict(SOFT, f"delay warning ({v.reason})")
        return Bounce(recipient=normalise(address), kind=v.kind, reason=v.reason, status=status_in(reason), diagnostic=reason,
                      local_only=local_only)
    return Bounce(recipient="", kind=UNKNOWN, reason="no failed address found", diagnostic=" ".join(text.split())[:300])


def _entry_candidates(entry: tuple[str, int] | None, msg: mime.Part, returned: dict[str, str] | None):
    """The list's first entry as a candidate: its first address, or a bare local part qualified (_qualify)."""
    if entry is None:
        return
    line, at = entry
    if "@" in line:
        for address, _, end in _addresses(line):
            yield address, at + end, True, False
            return
        return
    bare = _BARE_ENTRY.match(line)
    if bare and bare.group(1).lower() not in _SYSTEM_LOCALS:
        address = _qualify(bare.group(1), msg, returned)
        if address:
            yield address, at + bare.end(1), True, True


def _verp(msg: mime.Part, returned: dict[str, str] | None, envelope_to: str) -> VerpTag | None:
    candidates = [envelope_to] + [msg.get(h) for h in ("delivered-to", "x-original-to", "to")]
    if returned is not None:
        candidates.append(returned.get("return-path", ""))
    for c in candidates:
        if not c or VERP_SEPARATOR not in c:
            continue   # no tag can be in it: skip the address search
        for a in addresses(c):
            tag = verp_decode(a)
            if tag is not None:
                return tag
    return None


def parse(raw: bytes, envelope_to: str = "") -> Report:
    """The recipients a bounce message reports as failed (or delayed), each classified."""
    msg = mime.parse(raw)
    status, texts, returned = _walk(msg)
    bounces, mta, standard = [], "", False
    if status is not None:
        bounces, mta = _standard(status)
        standard = bool(bounces)
        if len(bounces) == 1 and bounces[0].kind == UNKNOWN and texts:
            # One recipient and nothing in its group says why: the human-readable part often does.
            b = bounces[0]
            v = classify(0, b.status, " ".join(texts)[:MAX_REASON_TEXT])
            bounces = [replace(b, kind=v.kind, reason=f"{v.reason} (in the text)")]
    if not bounces:
        bounces = [_heuristic(msg, texts, returned)]
    message_id = (returned or {}).get("message-id", "").strip()
    return Report(bounces=bounces, standard=standard, verp=_verp(msg, returned, envelope_to), message_id=message_id,
                  reporting_mta=mta)
