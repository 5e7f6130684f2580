"""Header fields of a MIME entity, read the way ``email.policy.default`` reads them, at a fraction
of its cost.

Why not ``email`` for everything: its header objects are built anew on every access and cost
25-300 µs each (Content-Type ~150 µs, a To list ~300 µs, measured on this machine); a reply with two
attachments needs ~30 of them, several milliseconds, where the processor has 2 ms per message for
all its work. Almost every field is simple (``application/pdf; name="receipt.pdf"``,
``Carla <carla@example.com>``), so the simple ones are read here with one regular expression, and
anything else (RFC 2231 parameters, encoded words, comments, quoted display names, groups) goes to
``email.policy.default``'s own header parser: the rules are the standard library's, only the easy
cases are short-cut (tests/test_inbound_mime.py checks both paths agree).

Bounded: ``email``'s parser costs ~15-25 µs per character of a hard value here (a 20 KB To list of
quoted names took 1.2 s), so one message may hand it at most ``PARSE_BUDGET`` characters, none
longer than ``MAX_PARSED``; past that a value is read leniently (parameters split at the semicolons,
RFC 2231 joined by ``email.utils``; addresses by their addr-specs) with a defect.

Text in, text out: the block's bytes are decoded before (UTF-8, else Windows-1252 per line, see
mime.py), so no surrogate escape reaches a value.
"""

from __future__ import annotations

import re
from datetime import timezone
from email import policy, utils
from email.headerregistry import BaseHeader

PARSE_BUDGET = 64 * 1024  # characters of one message's values that email.policy.default may parse
MAX_PARSED = 4096         # characters of one value it may parse
LENIENT = "too long to parse fully, read leniently"

_FACTORY = policy.default.header_factory
_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
_FIELD_START = re.compile(r"\r?\n(?![ \t])")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SIMPLE_TYPE = re.compile(rf"\s*({_TOKEN})\s*(?:/\s*({_TOKEN}))?\s*(?:;|$)")
_SIMPLE_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s"]*)\s*(?:;|$)')
_HARD_PARAMS = re.compile(r"\*\s*=|\*\d|=\?|\(")   # RFC 2231, encoded words, comments: email reads those
_QUOTED_PAIR = re.compile(r"\\(.)")
_PIECE = re.compile(r'(?:"(?:[^"\\]|\\.)*(?:"|$)|[^;"])+')
_ADDR_DELIMITERS = re.compile(r"[\s<>\"(),:;\\]+")
# Display-name words separated by whitespace, so no two quantifiers compete for the same spaces
# (a lazy group followed by \s* took 2 s on a run of 20,000 spaces).
_WORD = r"[^\s\"(),.:;<>@\[\]\\=?]+"
# Neither side of an addr-spec holds a bare '@': with it allowed in both, 'a@a@a@...' tried every split
# before failing (40 KB of it took 53 s), and x@y@z passed as an address.
_SIMPLE_MAILBOX = re.compile(rf"\s*(?:({_WORD}(?:\s+{_WORD})*)?\s*<([^<>\s\"(),:;\\@]+@[^<>\s\"(),:;\\@]+)>|"
                             r"([^<>\s\"(),:;\\@]+@[^<>\s\"(),:;\\@]+))\s*(?:,|$)")


class Budget:
    """What is left of one message's allowance of ``email`` parsing."""

    __slots__ = ("left",)

    def __init__(self, chars: int = PARSE_BUDGET):
        self.left = chars

    def take(self, value: str) -> bool:
        if len(value) > MAX_PARSED or len(value) > self.left:
            return False
        self.left -= len(value)
        return True


class Fields:
    """The fields of one header block: (lower-case name, unfolded value) in order."""

    __slots__ = ("items", "_first")

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items
        self._first: dict[str, str] = {}
        for key, value in items:
            self._first.setdefault(key, value)

    def get(self, name: str, default: str = "") -> str:
        """The first field called ``name`` (lower case)."""
        return self._first.get(name, default)

    def __contains__(self, name: str) -> bool:
        return name in self._first


def fields(text: str) -> Fields:
    """Split a header block (as text, line ends kept) into fields; lines that are neither a field nor
    a continuation were already excluded by the caller (mime.py's ``split``)."""
    items: list[tuple[str, str]] = []
    for field in _FIELD_START.split(text):
        name, colon, value = field.partition(":")
        if colon and name.strip():
            items.append((name.strip().lower(), (_UNFOLD.sub("", value) if "\n" in value else value).strip()))
    return Fields(items)


def parsed(name: str, value: str) -> BaseHeader:
    """``email.policy.default``'s reading of one field (may raise on hostile input: callers catch)."""
    return _FACTORY(name, value)


def content_type(value: str, default: str = "text/plain", budget: Budget | None = None
                 ) -> tuple[str, dict[str, str], list[str]]:
    """(type/subtype lower-cased, parameters by lower-case name, defects) of a Content-Type value;
    ``default`` when it is absent or is not type/subtype (RFC 2045 5.2)."""
    if not value:
        return default, {}, []
    simple = _simple_params(value)
    if simple is not None:
        kind, params = simple
        if "/" not in kind:
            return default, params, [f"Content-Type {value[:60]!r} is not type/subtype"]
        return kind, params, []
    if not (budget or Budget()).take(value):
        kind, params = _lenient_params(value)
        return (kind if "/" in kind else default), params, [LENIENT]
    header = parsed("content-type", value)
    kind = header.content_type if "/" in str(header.content_type) else default
    return kind, dict(header.params), _defects(header)


def content_disposition(value: str, budget: Budget | None = None) -> tuple[str, dict[str, str], list[str]]:
    """('inline' | 'attachment' | other, lower case; '' when absent), parameters, defects."""
    if not value:
        return "", {}, []
    simple = _simple_params(value)
    if simple is not None:
        return simple[0], simple[1], []
    if not (budget or Budget()).take(value):
        kind, params = _lenient_params(value)
        return kind, params, [LENIENT]
    header = parsed("content-disposition", value)
    return (header.content_disposition or "").lower(), dict(header.params), _defects(header)


def _defects(header: BaseHeader) -> list[str]:
    """What email found wrong with a field, each once, as readable text."""
    return list(dict.fromkeys(str(d) or type(d).__name__ for d in header.defects))


def _simple_params(value: str) -> tuple[str, dict[str, str]] | None:
    if _HARD_PARAMS.search(value):
        return None
    m = _SIMPLE_TYPE.match(value)
    if m is None:
        return None
    kind = m.group(1).lower() + ("/" + m.group(2).lower() if m.group(2) else "")
    params: dict[str, str] = {}
    pos = m.end()
    while pos < len(value):
        p = _SIMPLE_PARAM.match(value, pos)
        if p is None or p.end() == pos:
            return None
        raw = p.group(2)
        params[p.group(1).lower()] = _QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        pos = p.end()
    return kind, params


def _lenient_params(value: str) -> tuple[str, dict[str, str]]:
    """Type and parameters of a value too long for email's parser: split at the semicolons outside
    quotes, RFC 2231 continuations and charsets joined by ``email.utils``."""
    pieces = _PIECE.findall(value)[:200]
    kind = (pieces[0] if pieces else "").strip().lower()
    pairs = [(n.strip().lower(), v.strip()) for n, eq, v in (p.partition("=") for p in pieces[1:]) if eq and n.strip()]
    params: dict[str, str] = {}
    try:
        decoded = utils.decode_params([("", "")] + pairs)[1:]
    except Exception:  # email.utils on input it did not foresee: keep the pairs as they are
        decoded = pairs
    for n, v in decoded:
        if isinstance(v, tuple):  # (charset, language, quoted text): decode_params quotes what it joined
            text = utils.collapse_rfc2231_value((v[0], v[1], utils.unquote(v[2])))
        else:
            text = utils.unquote(v)
        params.setdefault(n, str(text))
    return kind, params


def addresses(name: str, value: str, budget: Budget | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(addr-spec, display name) of each mailbox in an address list (groups flattened), and defects."""
    if not value:
        return [], []
    found: list[tuple[str, str]] = []
    pos = 0
    if "=?" not in value:
        while pos < len(value):
            m = _SIMPLE_MAILBOX.match(value, pos)
            if m is None or m.end() == pos:
                found = []
                break
            found.append((m.group(2), (m.group(1) or "").strip()) if m.group(2) else (m.group(3), ""))
            pos = m.end()
        else:
            return found, []
    if not (budget or Budget()).take(value):
        return [(a, "") for a in _ADDR_DELIMITERS.split(value) if "@" in a.strip("@")], [LENIENT]
    header = parsed(name, value)
    return [(a.addr_spec, a.display_name) for a in header.addresses], _defects(header)


def unstructured(name: str, value: str, budget: Budget | None = None) -> str:
    """A Subject-like value with its encoded words decoded (as sent when over the budget)."""
    if "=?" not in value or not (budget or Budget()).take(value):
        return value
    return str(parsed(name, value))


def timestamp(value: str) -> float | None:
    """The Date value as a POSIX time; None when it cannot be read."""
    if not value:
        return None
    try:
        when = utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": the zone is unknown (RFC 5322 3.3); UTC, not the host's zone
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
